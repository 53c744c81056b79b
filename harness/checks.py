"""The proof's assertions, as pure functions of what was sampled and observed.

Pure so that they can be tested against runs that must fail (a leak, a master
holding connections, a long overlap), not only against runs that pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .model import Check, Overlap, RoleSummary, Sample

WEB, WORKER, ASGI = "web", "worker", "asgi"

# A recycled process and its replacement may overlap: at most one pool's worth,
# for at most this long (seconds), is tolerated above the ceiling.
OVERLAP_BOUND_S = 5.0
# After load, recycling and kills stop, counts must be exact again within this.
SETTLE_BOUND_S = 20.0


def expected_by_role(
    web_workers: int, worker_concurrency: int, pool_size: int, asgi_workers: int = 0
) -> dict[str, int]:
    """processes x pool size per role; the async tier's role only when it runs."""
    expected = {WEB: web_workers * pool_size, WORKER: worker_concurrency * pool_size}
    if asgi_workers:
        expected[ASGI] = asgi_workers * pool_size
    return expected


def check_steady_state(
    sample: Sample | None, expected: dict[str, int], master_pids: Iterable[int], pool_size: int
) -> Check:
    """1: after start-up, exactly processes x P per role, P per process, nothing held by a master."""
    name = "steady state: exactly processes x pool size per role, masters hold none"
    if sample is None:
        return Check(1, name, False, "no sample was taken")
    by_role = {role: n for role, n in sample.by_role().items() if n}
    masters = sorted(pid for pid in master_pids if sample.by_pid().get(pid))
    odd = sorted(pid for pid, n in sample.by_pid().items() if n != pool_size)
    passed = by_role == expected and not masters and not odd
    detail = f"expected {expected}, observed {by_role}"
    if masters:
        detail += f"; masters holding connections: {masters}"
    if odd:
        detail += f"; processes not holding exactly {pool_size}: {odd}"
    return Check(1, name, passed, detail)


def find_overlaps(samples: list[Sample], ceiling: int) -> list[Overlap]:
    """Contiguous stretches of samples whose total is above the ceiling."""
    overlaps: list[Overlap] = []
    start: Sample | None = None
    worst = 0
    for _before, sample in zip([None, *samples], samples, strict=False):
        if sample.total > ceiling:
            if start is None:
                start, worst = sample, 0
            worst = max(worst, sample.total - ceiling)
        elif start is not None:
            overlaps.append(Overlap(start.t, sample.t - start.t, worst))
            start = None
    if start is not None:
        overlaps.append(Overlap(start.t, samples[-1].t - start.t, worst))
    return overlaps


def check_ceiling(
    samples: list[Sample], ceiling: int, pool_size: int, bound_s: float = OVERLAP_BOUND_S
) -> tuple[Check, list[Overlap]]:
    """2: never above the ceiling, but for overlaps of at most one pool, each shorter than the bound."""
    overlaps = find_overlaps(samples, ceiling)
    peak = max((s.total for s in samples), default=0)
    bad = [o for o in overlaps if o.excess > pool_size or o.duration > bound_s]
    longest = max((o.duration for o in overlaps), default=0.0)
    detail = (
        f"peak {peak} of ceiling {ceiling} over {len(samples)} samples; {len(overlaps)} overlap(s), "
        f"longest {longest:.2f} s, allowed: at most {pool_size} over for {bound_s:.0f} s"
    )
    passed = bool(samples) and not bad
    return Check(2, "under load: total never above the ceiling (overlaps bounded)", passed, detail), overlaps


def check_settled(
    samples_after: list[Sample],
    expected: dict[str, int],
    pool_size: int,
    is_alive: Callable[[int], bool],
    bound_s: float = SETTLE_BOUND_S,
) -> Check:
    """3: after the churn, counts return to exactly the ceiling, with no session of a dead process."""
    name = f"after recycling and kills: exact ceiling again within {bound_s:.0f} s, no session of a dead pid"
    if not samples_after:
        return Check(3, name, False, "no sample after the load")
    t0 = samples_after[0].t
    for sample in samples_after:
        exact = {r: n for r, n in sample.by_role().items() if n} == expected
        per_process = all(n == pool_size for n in sample.by_pid().values())
        if exact and per_process and sample.t - t0 <= bound_s:
            dead = sorted(pid for pid in sample.by_pid() if not is_alive(pid))
            if not dead:
                return Check(3, name, True, f"exact after {sample.t - t0:.2f} s: {sample.by_role()}")
    last = samples_after[-1]
    dead = sorted(pid for pid in last.by_pid() if not is_alive(pid))
    return Check(3, name, False, f"last seen {last.by_role()} (expected {expected}); dead pids holding: {dead}")


def check_work_done(
    keys: list[str],
    rows_per_key: dict[str, int],
    status_counts: dict[str, int],
    killed_in_flight: int = 0,
    writers: dict[str, int] | None = None,
    dropped_by_tier: dict[str, int] | None = None,
    allowed_by_tier: dict[str, int] | None = None,
) -> Check:
    """4: every task wrote its row exactly once; no 5xx but 503 (pool timeout), which is counted.

    A web worker SIGKILLed by the harness drops the requests it was serving (at most
    its thread count; for an ASGI worker, at most one per load user it served):
    those connection errors, and only those, are allowed. `writers` (rows per
    writer role, from each row's ``written_by``: the server's application_name in
    the task's transaction) says which host ran the tasks; every row must name a
    task process, which behind PgBouncer proves the identity reached the server.
    With `dropped_by_tier` and `allowed_by_tier` each tier is held to its own
    kills: a drop on a tier whose workers were only recycled (gracefully) fails,
    whatever kills on the other tier allow.
    """
    missing = [k for k in keys if rows_per_key.get(k, 0) == 0]
    doubled = [k for k in keys if rows_per_key.get(k, 0) > 1]
    server_errors = {code: n for code, n in status_counts.items() if code.startswith("5") and code != "503"}
    dropped = status_counts.get("error", 0)
    passed = bool(keys) and not missing and not doubled and not server_errors and dropped <= killed_in_flight
    other = f"{sum(server_errors.values())} {server_errors}" if server_errors else "0"
    detail = (
        f"{len(keys)} tasks, {len(keys) - len(missing)} rows written, {len(missing)} missing, "
        f"{len(doubled)} written twice; HTTP 503 (pool timeout): {status_counts.get('503', 0)}, "
        f"other 5xx: {other}, dropped connections: {dropped} (allowed {killed_in_flight}: in flight on "
        "killed web and asgi workers)"
    )
    if dropped_by_tier is not None and allowed_by_tier is not None:
        over = {t: n for t, n in dropped_by_tier.items() if n > allowed_by_tier.get(t, 0)}
        passed = passed and not over
        detail += "; dropped per tier: " + (
            ", ".join(f"{t} {dropped_by_tier.get(t, 0)} (allowed {n})" for t, n in sorted(allowed_by_tier.items()))
            or "none"
        )
        if over:
            detail += f" (more than its kills allow: {over})"
    if writers is not None:
        strangers = {role: n for role, n in writers.items() if role.partition("@")[0] != WORKER}
        passed = passed and not strangers
        detail += "; written by " + (", ".join(f"{role} {n}" for role, n in sorted(writers.items())) or "nobody")
        if strangers:
            detail += f" (not a task process: {strangers})"
    return Check(4, "every task done exactly once; no 5xx but counted 503s", passed, detail)


def check_server_pool(samples: list[Sample], pool_size: int, reserve: int) -> Check:
    """8 (behind PgBouncer): PostgreSQL never sees more than PgBouncer's pool + reserve, whatever the clients."""
    servers = [s.servers for s in samples if s.servers is not None]
    bound = pool_size + reserve
    peak = max(servers, default=0)
    clients = max((s.total for s in samples), default=0)
    detail = (
        f"server connections at PostgreSQL peaked at {peak} of PgBouncer's pool {pool_size} + reserve "
        f"{reserve} = {bound} over {len(servers)} samples, while client connections at PgBouncer "
        f"peaked at {clients}"
    )
    return Check(
        8,
        "behind PgBouncer: server connections never above its pool (+ reserve)",
        bool(servers) and peak <= bound,
        detail,
    )


def check_stats_agree(
    web_reports: dict[int, dict],
    worker_reports: dict[int, dict],
    server_by_pid: dict[int, int],
    is_alive: Callable[[int], bool],
    asgi_reports: dict[int, dict] | None = None,
) -> Check:
    """5: each live process's own pool stats agree with what the server saw for its pid.

    Reports come from GET /pool (web, and asgi when it runs) and a stats task
    (workers); a process that answered and was recycled before the server was
    asked is left out, and said so. Every role that runs must have a live report.
    """
    by_role = {WEB: web_reports, WORKER: worker_reports, **({ASGI: asgi_reports} if asgi_reports is not None else {})}
    return check_reports_agree(by_role, server_by_pid, is_alive)


def check_reports_agree(
    by_role: dict[str, dict[int, dict]], server_by_pid: dict[int, int], is_alive: Callable[[int], bool]
) -> Check:
    """5, for any roles (``web@h1``, ``worker@h2`` on a fleet): every role needs a live report, and each agrees."""
    reports = {pid: r for role_reports in by_role.values() for pid, r in role_reports.items()}
    # A report with "server_sessions" was checked where it was made: an RQ work-horse, gone before anyone could ask
    # the server about its pid, reports the server's count of its sessions beside its pool's own.
    live = {pid: r for pid, r in reports.items() if is_alive(pid) or "server_sessions" in r}
    seen = {pid: r.get("server_sessions", server_by_pid.get(pid, 0)) for pid, r in live.items()}
    disagree = {pid: (r.get("size"), seen[pid]) for pid, r in live.items() if r.get("size") != seen[pid]}
    role_of = {pid: role for role, role_reports in by_role.items() for pid in role_reports}
    unheard = [role for role, role_reports in by_role.items() if not set(role_reports) & set(live)]
    passed = not unheard and not disagree
    heard = ", ".join(f"{len(r)} {_reporter(role)}" for role, r in by_role.items())
    in_job = sum(1 for pid, r in live.items() if "server_sessions" in r and not is_alive(pid))
    checked = f"{len(live) - in_job} still alive" + (f", {in_job} checked in the job that reported" if in_job else "")
    detail = f"{heard} processes reported, {checked}; disagreeing (pool size, server): {disagree or 'none'}"
    if disagree:
        detail += " (" + ", ".join(f"{role_of[pid]} {pid}" for pid in disagree) + ")"
    if len(live) < len(reports):
        detail += f"; recycled since reporting: {sorted(set(reports) - set(live))}"
    if unheard:
        detail += f"; no live report from {', '.join(unheard)}"
    return Check(5, "each process's pool stats agree with the server", passed, detail)


def _reporter(role: str) -> str:
    """How a role's reporters are named: task processes for the worker role, on any host."""
    base, at, host = role.partition("@")
    return ("task" if base == WORKER else base) + at + host


def role_summaries(
    samples: list[Sample], steady: Sample | None, processes: dict[str, int], pool_size: int
) -> list[RoleSummary]:
    found = []
    for role, count in processes.items():
        expected = count * pool_size
        observed = steady.by_role().get(role, 0) if steady else 0
        peak = max((s.by_role().get(role, 0) for s in samples), default=0)
        found.append(
            RoleSummary(
                role, count, pool_size, expected, observed, peak, observed == expected and peak <= expected + pool_size
            )
        )
    return found
