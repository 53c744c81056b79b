"""Past one machine, end to end: `forkpool loadtest --hosts N` and `--pgbouncer` on real processes.

Small pools and a few seconds of load: each run proves exact counts per host
and role, the ceilings, recycling and kills on several hosts at once, and
every task done exactly once whichever host ran it.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from tests.test_harness import embedded_env, forkpool


def run_json(tmp_path, name: str, *args: str, env: dict | None = None, expect: int = 0) -> dict:
    out = tmp_path / f"{name}.json"
    result = forkpool("loadtest", *args, "--json", str(out), env=env, timeout=280)
    assert result.returncode == expect, result.stdout[-4000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def kills_by_kind(body: dict) -> dict[str, set[str]]:
    """{"web worker": {"h1", "h2", ...}, "task process": {...}}: which hosts lost a process of each kind."""
    found: dict[str, set[str]] = defaultdict(set)
    for event in body["events"]:
        if event["kind"] == "kill":  # "SIGKILL web worker on h2 12345"
            words = event["detail"].split()
            found[" ".join(words[1:3])].add(words[words.index("on") + 1])
    return found


@pytest.mark.slow  # on demand (-m slow): the budget of 15 minutes; a fleet runs through PgBouncer in the default set
@pytest.mark.timeout(300)
def test_a_fleet_of_three_hosts_with_recycling_and_kills_passes(tmp_path):
    report = tmp_path / "report"
    body = run_json(
        tmp_path,
        "fleet",
        "--hosts",
        "3",
        "--duration",
        "6",
        "--users",
        "6",
        "--task-rate",
        "4",
        "--kill-workers",
        "2",
        "--max-requests",
        "30",
        "--max-tasks-per-child",
        "8",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "1",
        "--pool-size",
        "2",
        "--report",
        str(report),
    )
    assert [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6] and all(c["passed"] for c in body["checks"])
    assert body["ceiling"] == 18 and "fleet:   3 hosts x ceiling 6 = 18" in body["budget"]["arithmetic"]
    hosts = ("h1", "h2", "h3")
    expected = {f"{role}@{h}": n for h in hosts for role, n in (("web", 4), ("worker", 2))}
    assert {r["role"]: r["expected"] for r in body["roles"]} == expected
    assert all(r["observed_steady"] == r["expected"] for r in body["roles"])  # check 1, per host and role
    assert "peak per host of ceiling 6: h1 6, h2 6, h3 6" in body["checks"][1]["detail"]
    for h in hosts:  # every host's task processes ran tasks from the one queue, each exactly once (check 4)
        assert f"worker@{h} " in body["checks"][3]["detail"]
    assert kills_by_kind(body) == {"web worker": set(hosts), "task process": set(hosts)}  # kills on every host
    recycled = [log for log in (report / "logs").glob("web-*.log") if "Autorestarting worker" in log.read_text()]
    assert len(recycled) >= 2  # max_requests recycled workers on several hosts
    assert "5 web@h1" not in body["checks"][4]["detail"] and "task@h3" in body["checks"][4]["detail"]


@pytest.mark.timeout(300)
def test_the_suite_through_pgbouncer_holds_both_ceilings(tmp_path, pgbouncer_binary):
    body = run_json(
        tmp_path,
        "bouncer",
        "--pgbouncer",
        "--pgbouncer-pool-size",
        "3",
        "--duration",
        "5",
        "--users",
        "6",
        "--task-rate",
        "4",
        "--kill-workers",
        "3",
        "--max-requests",
        "40",
        "--max-tasks-per-child",
        "6",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--asgi-workers",
        "1",
        "--pool-size",
        "3",
    )
    assert [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6, 8], body["checks"]
    assert all(c["passed"] for c in body["checks"]), [c for c in body["checks"] if not c["passed"]]
    bouncer = body["pgbouncer"]
    assert bouncer["client_peak"] == body["ceiling"] == 15  # clients at PgBouncer: exactly processes x pool
    servers = [s["servers"] for s in body["samples"]]
    assert 0 < max(servers) == bouncer["server_peak"] <= 3 + 2  # servers at PostgreSQL: its pool + reserve
    assert bouncer["prepare"] == ("on" if tuple(map(int, bouncer["version"].split(".")))[:2] >= (1, 21) else "off")
    assert "written by worker " in body["checks"][3]["detail"]  # the identity reached the server per transaction
    assert not [code for code in body["load"]["status_counts"] if code.startswith("5")]


@pytest.mark.slow  # on demand (-m slow): 60 s; PgBouncer and a fleet each run in the default set
@pytest.mark.timeout(300)
def test_a_fleet_above_max_connections_runs_only_through_pgbouncer(tmp_path, pgbouncer_binary):
    """4 hosts x (2 web + 2 task processes) x pool 5 = 80 client connections; the server has 30 slots."""
    fleet = [
        "--hosts",
        "4",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "5",
        "--max-connections",
        "30",
        "--duration",
        "5",
        "--users",
        "12",
        "--task-rate",
        "6",
        "--max-requests",
        "60",
        "--max-tasks-per-child",
        "10",
    ]
    direct = run_json(tmp_path, "direct", *fleet, env=embedded_env(), expect=3)
    assert not direct["passed"] and not direct["samples"]  # refused before anything started
    assert "fleet:   4 hosts x ceiling 20 = 80" in direct["budget"]["arithmetic"]
    assert direct["budget"]["arithmetic"][-1] == "verdict: 82 of 27 -> DOES NOT FIT (headroom -55)"
    body = run_json(tmp_path, "through", *fleet, "--pgbouncer", "--pgbouncer-pool-size", "10", env=embedded_env())
    assert all(c["passed"] for c in body["checks"]), [c for c in body["checks"] if not c["passed"]]
    assert body["ceiling"] == 80 and body["pgbouncer"]["client_peak"] == 80  # every host's pools full, at PgBouncer
    assert body["pgbouncer"]["server_peak"] <= 12 < 27  # what the server saw: PgBouncer's pool + reserve
    assert body["load"]["requests"] > 0 and not [c for c in body["load"]["status_counts"] if c[0] in "5e"]


@pytest.mark.timeout(120)
def test_up_behind_pgbouncer_serves_and_stats_counts_its_clients(tmp_path, pgbouncer_binary):
    """`forkpool up --pgbouncer`: the suite's connections are PgBouncer's clients, and `forkpool stats` counts them."""
    import os
    import signal
    import subprocess

    from harness._procs import free_port
    from tests.conftest import wait_for
    from tests.test_harness import FORKPOOL, ROOT, _alive, _answers, _descendants

    port = free_port()
    env = {
        **embedded_env(),
        "WEB_CONCURRENCY": "2",
        "WORKER_CONCURRENCY": "1",
        "DB_POOL_SIZE": "2",
        "XDG_RUNTIME_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }  # where up leaves its state for stats
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - the server writes to it until the test stops it
    proc = subprocess.Popen(
        [*FORKPOOL, "up", "--port", str(port), "--pgbouncer"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), 60, 0.2), (tmp_path / "up.log").read_text()
        # up prints its servers once they all serve, which may be just after the first /readyz answered.
        assert wait_for(lambda: "PgBouncer  postgresql://" in (tmp_path / "up.log").read_text(), 20, 0.1), (
            tmp_path / "up.log"
        ).read_text()

        def per_role() -> dict:  # (pool sizes, clients PgBouncer counts) per role
            stats = subprocess.run(
                [*FORKPOOL, "stats", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
            )
            assert stats.returncode == 0, stats.stderr
            return {role: (t["size"], t["server"]) for role, t in json.loads(stats.stdout)["roles"].items()}

        want = {"web": (4, 4), "worker": (2, 2)}
        wait_for(lambda: per_role() == want, 20, 0.5)  # every worker up, not only the one that answered
        assert per_role() == want
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert wait_for(lambda: not [p for p in children if _alive(p)], 20), "processes left behind"
