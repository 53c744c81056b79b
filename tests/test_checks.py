"""The proof's assertions fail when they should: fed runs that leak, overshoot or lose work."""

from __future__ import annotations

from forkpool.budget import Budget, DeploymentPlan, ServerLimits
from harness import checks
from harness.model import Sample
from harness.rss import check_handles_flat

P = 4
EXPECTED = {"web": 12, "worker": 8}


def steady_sample(t: float = 0.0, extra: dict | None = None) -> Sample:
    sessions = {("web", 101): P, ("web", 102): P, ("web", 103): P, ("worker", 201): P, ("worker", 202): P}
    sessions.update(extra or {})
    return Sample(t, sessions)


def series(totals_extra: list[tuple[float, dict]]) -> list[Sample]:
    return [steady_sample(t, extra) for t, extra in totals_extra]


def test_steady_state_passes_only_for_the_exact_plan():
    assert checks.check_steady_state(steady_sample(), EXPECTED, [100, 200], P).passed
    master = checks.check_steady_state(steady_sample(extra={("web", 100): P}), EXPECTED, [100, 200], P)
    assert not master.passed and "masters holding connections: [100]" in master.detail
    short = Sample(0, {("web", 101): P, ("web", 102): P, ("web", 103): 3, ("worker", 201): P, ("worker", 202): P})
    assert not checks.check_steady_state(short, EXPECTED, [], P).passed
    assert not checks.check_steady_state(None, EXPECTED, [], P).passed


def test_ceiling_allows_one_short_overlap_and_nothing_more():
    ceiling = 20
    clean = series([(t / 10, {}) for t in range(50)])
    assert checks.check_ceiling(clean, ceiling, P)[0].passed
    brief = series([(0.0, {}), (0.1, {("web", 104): P}), (0.2, {("web", 104): P}), (0.3, {})])
    check, overlaps = checks.check_ceiling(brief, ceiling, P)
    assert check.passed and len(overlaps) == 1 and overlaps[0].excess == P
    assert abs(overlaps[0].duration - 0.2) < 1e-9
    too_long = series([(0.0, {})] + [(t, {("web", 104): P}) for t in (0.5, 3.0, 6.0)] + [(6.5, {})])
    assert not checks.check_ceiling(too_long, ceiling, P)[0].passed
    too_much = series([(0.0, {}), (0.1, {("web", 104): P, ("web", 105): 1}), (0.2, {})])
    assert not checks.check_ceiling(too_much, ceiling, P)[0].passed
    never_back = series([(0.0, {}), (0.1, {("web", 104): 2}), (9.0, {("web", 104): 2})])
    assert not checks.check_ceiling(never_back, ceiling, P)[0].passed
    assert not checks.check_ceiling([], ceiling, P)[0].passed


def test_settled_needs_the_exact_count_and_no_dead_pids():
    alive = lambda pid: pid != 999  # noqa: E731
    after = series([(10.0, {("web", 104): P}), (11.0, {})])
    assert checks.check_settled(after, EXPECTED, P, alive).passed
    leak = series([(10.0, {("worker", 999): P})])
    leaked = checks.check_settled(leak, EXPECTED, P, alive)
    assert not leaked.passed
    swapped = [
        Sample(10.0, {("web", 101): P, ("web", 102): P, ("web", 999): P, ("worker", 201): P, ("worker", 202): P})
    ]
    dead = checks.check_settled(swapped, EXPECTED, P, alive)
    assert not dead.passed and "999" in dead.detail
    late = series([(10.0, {("web", 104): P}), (40.0, {})])
    assert not checks.check_settled(late, EXPECTED, P, alive, bound_s=20).passed


def test_work_done_fails_on_lost_tasks_and_real_server_errors():
    keys = ["a", "b", "c"]
    ok = checks.check_work_done(keys, {"a": 1, "b": 1, "c": 1}, {"200": 50, "503": 2})
    assert ok.passed and "503 (pool timeout): 2" in ok.detail
    assert not checks.check_work_done(keys, {"a": 1, "b": 1}, {"200": 50}).passed
    assert not checks.check_work_done(keys, {"a": 1, "b": 1, "c": 1}, {"200": 50, "500": 1}).passed
    assert not checks.check_work_done(keys, {"a": 1, "b": 1, "c": 1}, {"200": 50, "error": 3}).passed
    killed = checks.check_work_done(keys, {"a": 1, "b": 1, "c": 1}, {"200": 50, "error": 2}, killed_in_flight=2)
    assert killed.passed and "dropped connections: 2 (allowed 2" in killed.detail
    assert not checks.check_work_done(keys, {"a": 1, "b": 1, "c": 1}, {"200": 50, "error": 3}, 2).passed
    assert not checks.check_work_done([], {}, {"200": 50}).passed


def test_stats_must_agree_with_the_server_for_live_processes():
    alive = lambda pid: pid != 7  # noqa: E731
    web, worker = {1: {"size": 4}}, {2: {"size": 4}, 7: {"size": 4}}
    assert checks.check_stats_agree(web, worker, {1: 4, 2: 4}, alive).passed
    wrong = checks.check_stats_agree(web, worker, {1: 0, 2: 4}, alive)
    assert not wrong.passed and "1: (4, 0)" in wrong.detail and "(web 1)" in wrong.detail
    assert not checks.check_stats_agree({}, worker, {2: 4}, alive).passed


def test_budget_arithmetic_and_verdict():
    plan = DeploymentPlan(web_workers=3, web_threads=1, worker_concurrency=2, pool_size=4, other_clients=2)
    fits = Budget(plan, ServerLimits(100, 3, 0))
    assert fits.fits and plan.ceiling == 20 and fits.needed == 22
    assert "max_connections 100 - superuser_reserved 3 - reserved 0 = 97 available" in fits.explain()[4]
    tight = Budget(plan, ServerLimits(25, 3, 1))
    assert not tight.fits and "DOES NOT FIT" in tight.explain()[-1]
    threads = Budget(DeploymentPlan(2, 8, 1, 4), ServerLimits(100, 3))
    assert not threads.fits and any("threads" in line for line in threads.explain())


def test_the_async_tier_is_a_third_role_in_every_count():
    assert checks.expected_by_role(3, 2, P) == EXPECTED  # off: no asgi role expected
    with_asgi = checks.expected_by_role(3, 2, P, asgi_workers=2)
    assert with_asgi == {**EXPECTED, "asgi": 2 * P}
    steady = steady_sample(extra={("asgi", 301): P, ("asgi", 302): P})
    assert checks.check_steady_state(steady, with_asgi, [100, 200, 300], P).passed
    assert not checks.check_steady_state(steady_sample(), with_asgi, [100, 200, 300], P).passed  # asgi missing
    asgi_master = checks.check_steady_state(
        steady_sample(extra={("asgi", 301): P, ("asgi", 302): P, ("asgi", 300): P}), with_asgi, [100, 200, 300], P
    )
    assert not asgi_master.passed and "masters holding connections: [300]" in asgi_master.detail
    alive = lambda pid: True  # noqa: E731
    web, worker, asgi = {1: {"size": P}}, {2: {"size": P}}, {3: {"size": P}}
    assert checks.check_stats_agree(web, worker, {1: P, 2: P, 3: P}, alive, asgi).passed
    unheard = checks.check_stats_agree(web, worker, {1: P, 2: P}, alive, {})
    assert not unheard.passed and "no live report from asgi" in unheard.detail
    plan = DeploymentPlan(3, 1, 2, P, other_clients=2, asgi_workers=2)
    lines = Budget(plan, ServerLimits(100, 3, 0)).explain()
    assert plan.ceiling == 28 and "asgi:    2 workers x pool 4 = 8" in lines and "ceiling: 12 + 8 + 8 = 28" in lines


def test_work_done_holds_each_tier_to_its_own_kills():
    keys, rows = ["a"], {"a": 1}
    # One web kill allows one web drop; an asgi drop, where workers were only recycled, fails though the total fits.
    recycled = checks.check_work_done(keys, rows, {"200": 9, "error": 1}, 1, None, {"asgi": 1}, {"web": 1, "asgi": 0})
    assert not recycled.passed and "more than its kills allow" in recycled.detail
    killed = checks.check_work_done(keys, rows, {"200": 9, "error": 1}, 1, None, {"web": 1}, {"web": 1, "asgi": 0})
    assert killed.passed and "dropped per tier: asgi 0 (allowed 0), web 1 (allowed 1)" in killed.detail


def test_a_report_checked_in_its_job_counts_when_its_process_is_gone():
    """An RQ work-horse reports the server's count of its sessions itself: it has exited before anyone asks."""
    gone = lambda pid: False  # noqa: E731
    ok = checks.check_reports_agree({"worker": {7: {"size": 2, "server_sessions": 2}}}, {}, gone)
    assert ok.passed and "1 checked in the job that reported" in ok.detail
    bad = checks.check_reports_agree({"worker": {7: {"size": 2, "server_sessions": 3}}}, {}, gone)
    assert not bad.passed and "7: (2, 3)" in bad.detail
    unheard = checks.check_reports_agree({"worker": {7: {"size": 2}}}, {}, gone)  # no count of its own: unheard
    assert not unheard.passed and "no live report from worker" in unheard.detail


def _handles_run(seconds: int = 600, life: int = 30, leak_per_request: int = 0, master_leak_every: int = 0):
    """A synthetic soak: 3 web workers recycled every `life` s (10 requests/s each), a master that never
    recycles; open fds and TCP connections noisy around their levels, sessions exact."""
    import random

    rng = random.Random(7)
    handles, samples = [], []
    for t in range(seconds):
        master_tcp = 2 + (t // master_leak_every if master_leak_every else 0)
        handles.append((float(t), "web-master", 100, 14 + rng.randint(-1, 1), master_tcp))
        sessions = {}
        for slot in range(3):
            born = (t + slot * 7) // life * life - slot * 7  # staggered recycling
            pid = 1000 + slot * 1000 + born
            served = (t - born) * 10
            handles.append((float(t), "web", pid, 30 + rng.randint(-2, 2) + leak_per_request * served, 6))
            sessions[("web", pid)] = 4
        samples.append(Sample(float(t), sessions))
    return handles, samples


def test_handles_flat_passes_a_noisy_flat_run():
    check = check_handles_flat(*_handles_run())
    assert check.passed, check.detail
    assert "open fds per process" in check.detail and "web 30->30" in check.detail


def test_handles_flat_fails_one_fd_leaked_per_request_even_with_recycling():
    check = check_handles_flat(*_handles_run(leak_per_request=1))
    assert not check.passed
    assert "fds of 61 web processes in their life" in check.detail, check.detail


def test_handles_flat_fails_a_connection_never_closed_per_recycle():
    check = check_handles_flat(*_handles_run(master_leak_every=30))
    assert not check.passed
    assert "TCP connections per process of web-master" in check.detail, check.detail


def test_handles_flat_fails_sessions_that_pile_up():
    handles, samples = _handles_run()
    samples = [Sample(s.t, {**s.sessions, ("web", 1): 1 + int(s.t) // 60}) for s in samples]
    check = check_handles_flat(handles, samples)
    assert not check.passed
    assert "PostgreSQL sessions per role of web" in check.detail, check.detail


def test_handles_flat_judges_from_the_load_start_not_the_pools_filling():
    """An 8 s soak's first third is mostly start-up: pools filling there are not sessions piling up."""
    handles, samples = _handles_run(seconds=30)
    filling = [Sample(s.t, {k: (v if s.t >= 10 else v // 2) for k, v in s.sessions.items()}) for s in samples]
    assert not check_handles_flat(handles, filling).passed  # judged over the whole run: "grew"
    check = check_handles_flat(handles, filling, since=10.0)
    assert check.passed, check.detail
