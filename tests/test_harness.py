"""The harness end to end: `forkpool` commands on real processes, runs that pass and runs that must fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
FORKPOOL = [sys.executable, "-m", "forkpool"]


def forkpool(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FORKPOOL, *args], cwd=ROOT, env=env or dict(os.environ), capture_output=True, text=True, timeout=timeout
    )


def embedded_env() -> dict[str, str]:
    """The environment of a fresh machine: no DATABASE_URL / REDIS_URL, so the harness starts its own."""
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "FORKPOOL_NAME", "SUITE_ID")}


def processes_marked(mark: str) -> list[int]:
    """Processes whose environment carries `mark`: this run's own, whatever other sessions run beside it."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get("FORKPOOL_TEST_MARK") == mark:
                found.append(proc.pid)
        except psutil.Error:
            continue  # gone, or not ours to read
    return found


def test_budget_prints_the_arithmetic_and_refuses_what_does_not_fit():
    fits = forkpool(
        "budget", "--web-workers", "3", "--worker-concurrency", "2", "--pool-size", "4", "--max-connections", "100"
    )
    assert fits.returncode == 0, fits.stdout + fits.stderr
    assert "ceiling: 12 + 8 = 20" in fits.stdout and "fits" in fits.stdout
    tight = forkpool(
        "budget", "--web-workers", "3", "--worker-concurrency", "2", "--pool-size", "8", "--max-connections", "40"
    )
    assert tight.returncode == 3 and "DOES NOT FIT" in tight.stdout


def test_budget_knows_a_fleet_and_pgbouncers_two_tiers():
    plan = [
        "budget",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "5",
        "--hosts",
        "4",
        "--max-connections",
        "30",
    ]
    direct = forkpool(*plan)
    assert direct.returncode == 3, direct.stdout + direct.stderr
    assert "fleet:   4 hosts x ceiling 20 = 80" in direct.stdout
    assert "verdict: 80 of 27 -> DOES NOT FIT (headroom -53)" in direct.stdout
    pooled = forkpool(*plan, "--pgbouncer-pool-size", "10", "--pgbouncer-reserve", "2", "--max-client-conn", "200")
    assert pooled.returncode == 0, pooled.stdout + pooled.stderr
    assert "verdict: clients 80 of 200, servers 12 of 27 -> fits (headroom 15)" in pooled.stdout
    crowded = forkpool(*plan, "--pgbouncer-pool-size", "10", "--max-client-conn", "60")
    assert crowded.returncode == 3  # the server would have room; PgBouncer's clients would not
    assert "clients: fleet 80 of PgBouncer's max_client_conn 60 -> DOES NOT FIT (headroom -20)" in crowded.stdout
    assert crowded.stdout.rstrip().endswith("-> DOES NOT FIT (headroom -20)")


def test_budget_reads_the_server(database_url):
    result = forkpool("budget", "--pool-size", "4")
    assert result.returncode == 0, result.stderr
    assert "max_connections 300" in result.stdout  # the session server's setting, read live


def test_bad_option_is_one_clear_line_not_a_traceback():
    result = forkpool("loadtest", "--pool-size", "zero")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--pool-size" in result.stderr


@pytest.mark.slow  # on demand (-m slow): the ASGI-tier loadtest recycles and kills the web and task tiers too
def test_loadtest_with_recycling_and_kills_passes(tmp_path):
    report = tmp_path / "report"
    result = forkpool(
        "loadtest",
        "--duration",
        "6",
        "--users",
        "6",
        "--task-rate",
        "4",
        "--kill-workers",
        "2",
        "--max-requests",
        "60",
        "--max-tasks-per-child",
        "6",
        "--web-workers",
        "3",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "3",
        "--json",
        str(tmp_path / "run.json"),
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    body = json.loads((tmp_path / "run.json").read_text())
    assert body["passed"] is True and [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6]
    assert all(c["passed"] for c in body["checks"])
    assert body["ceiling"] == 15 and len(body["samples"]) > 50
    assert [e for e in body["events"] if e["kind"] == "kill"]
    assert body["load"]["requests"] > 0 and body["load"]["tasks_enqueued"] > 0
    assert (report / "connections.png").stat().st_size > 5000 and (report / "report.json").exists()
    assert "PASS: every ceiling held" in result.stdout


def test_loadtest_with_an_asgi_tier_recycling_and_kills_passes(tmp_path):
    """The async tier as a third role: counted exactly, recycled by max_requests, killed, loaded, probed."""
    report = tmp_path / "report"
    result = forkpool(
        "loadtest",
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
        "2",
        "--pool-size",
        "3",
        "--json",
        str(tmp_path / "asgi.json"),
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    body = json.loads((tmp_path / "asgi.json").read_text())
    assert [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6] and all(c["passed"] for c in body["checks"])
    assert body["ceiling"] == 18 and "ceiling: 6 + 6 + 6 = 18" in body["budget"]["arithmetic"]
    assert "'asgi': 6" in body["checks"][0]["detail"]  # check 1 counted the third role exactly
    assert "2 asgi processes reported" in body["checks"][4]["detail"]  # check 5 asked every asgi worker
    assert {r["role"]: r["expected"] for r in body["roles"]} == {"web": 6, "worker": 6, "asgi": 6}
    assert [e for e in body["events"] if e["detail"].startswith("SIGKILL asgi worker")]
    assert {e["detail"].split()[1] for e in body["events"] if e["kind"] == "kill"} == {"web", "task", "asgi"}
    assert (report / "connections.png").stat().st_size > 5000 and (report / "report.json").exists()
    assert "PASS: every ceiling held" in result.stdout
    asgi_requests = sum(e["requests"] for e in body["load"]["endpoints"] if e["name"].startswith("asgi "))
    assert asgi_requests > 0 and body["load"]["requests"] > asgi_requests  # both tiers were loaded
    [asgi_log] = (report / "logs").glob("asgi-*.log")
    assert "Maximum request limit" in asgi_log.read_text()  # max_requests recycled asgi workers too


def test_asgi_workers_need_forkpools_own_stack():
    result = forkpool("loadtest", "--asgi-workers", "2", "--naive")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--asgi-workers" in result.stderr


def test_loadtest_on_the_flask_sqlalchemy_stack_holds_the_ceiling(tmp_path):
    """The same load and checks, with Flask-SQLAlchemy (web) and a SQLAlchemy engine (workers) protected."""
    result = forkpool(
        "loadtest",
        "--stack",
        "flask-sqlalchemy",
        "--duration",
        "5",
        "--users",
        "4",
        "--max-requests",
        "40",
        "--max-tasks-per-child",
        "5",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "2",
        "--json",
        str(tmp_path / "stack.json"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    body = json.loads((tmp_path / "stack.json").read_text())
    assert body["plan"]["stack"] == "flask-sqlalchemy" and body["ceiling"] == 8
    assert [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6] and all(c["passed"] for c in body["checks"])


def test_loadtest_on_the_django_stack_holds_the_ceiling(tmp_path):
    """The same load and checks on a Django project and its Celery worker (django_stack/): Django's native pool,
    "forkpool.django", Celery's Django fixup on; with recycling and kills."""
    report = tmp_path / "report"
    result = forkpool(
        "loadtest",
        "--stack",
        "django",
        "--duration",
        "5",
        "--users",
        "4",
        "--kill-workers",
        "2",
        "--max-requests",
        "40",
        "--max-tasks-per-child",
        "5",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "2",
        "--json",
        str(tmp_path / "django.json"),
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    body = json.loads((tmp_path / "django.json").read_text())
    assert body["plan"]["stack"] == "django" and body["ceiling"] == 8
    assert [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6] and all(c["passed"] for c in body["checks"])
    assert [e for e in body["events"] if e["kind"] == "kill"] and body["load"]["tasks_completed"] > 0
    # The django stack served it: Django's pool answered GET /pool, the Django project's Celery app ran the tasks.
    assert {r["pool"]["name"] for r in body["load"]["pool_reports"].values()} == {"django:default"}
    [worker_log] = (report / "logs").glob("worker-*.log")
    assert ".> app:         django_stack:" in worker_log.read_text()


@pytest.mark.parametrize("stack", ["django", "flask-sqlalchemy"])
def test_naive_contrast_is_the_suites_own_app_only(stack):
    result = forkpool("loadtest", "--stack", stack, "--naive")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--naive" in result.stderr
    assert stack in result.stderr


@pytest.mark.slow  # on demand (-m slow): the demo test runs the same naive contrast
def test_naive_run_fails_its_checks_and_says_so(tmp_path):
    result = forkpool(
        "loadtest",
        "--naive",
        "--duration",
        "5",
        "--users",
        "6",
        "--pool-size",
        "3",
        "--json",
        str(tmp_path / "naive.json"),
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    body = json.loads((tmp_path / "naive.json").read_text())
    assert body["naive"] is True and body["passed"] is False
    steady = body["checks"][0]
    assert steady["number"] == 1 and not steady["passed"] and "masters holding connections" in steady["detail"]
    [outside] = [c for c in body["checks"] if c["number"] == 6]  # the same failure, seen in the sockets
    assert not outside["passed"] and "master-connection, shared-socket" in outside["detail"]
    assert "as expected" in result.stdout


def test_plan_that_does_not_fit_starts_nothing(tmp_path):
    mark = uuid.uuid4().hex
    result = forkpool(
        "loadtest",
        "--pool-size",
        "90",
        "--json",
        str(tmp_path / "big.json"),
        env={**os.environ, "FORKPOOL_TEST_MARK": mark},
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "DOES NOT FIT" in result.stdout
    body = json.loads((tmp_path / "big.json").read_text())
    assert body["checks"][0]["number"] == 0 and not body["passed"] and not body["samples"]
    assert processes_marked(mark) == []  # nothing the run started outlived it


def test_demo_runs_end_to_end_on_embedded_servers(tmp_path):
    result = forkpool("demo", "--report", str(tmp_path / "demo"), env=embedded_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "PASS: every ceiling held" in result.stdout
    assert "as expected" in result.stdout  # the naive contrast ran and failed, plainly
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["passed"] is True
    # The contrast failed for the reason it exists: masters holding connections, seen in the counts
    # and in the sockets (what test_naive_run_fails_its_checks_and_says_so checks, on demand).
    naive = json.loads((tmp_path / "demo" / "naive" / "report.json").read_text())
    assert naive["naive"] is True and naive["passed"] is False
    steady = naive["checks"][0]
    assert steady["number"] == 1 and not steady["passed"] and "masters holding connections" in steady["detail"]
    [outside] = [c for c in naive["checks"] if c["number"] == 6]
    assert not outside["passed"] and "master-connection, shared-socket" in outside["detail"]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_until_interrupted_and_leaves_nothing(stop_signal, tmp_path):
    from harness._procs import free_port
    from tests.suite_helpers import http

    port = free_port()
    env = {**embedded_env(), "WEB_CONCURRENCY": "2", "WORKER_CONCURRENCY": "1", "DB_POOL_SIZE": "2"}
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - the server writes to it until the test stops it
    proc = subprocess.Popen(
        [*FORKPOOL, "up", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), 60, 0.2), (tmp_path / "up.log").read_text()
        status, body, _ = http(f"http://127.0.0.1:{port}", "GET", "/pool")
        assert status == 200 and body["pool"]["size"] == 2
        children = _descendants(proc.pid)
        assert len(children) >= 6  # gunicorn + 2 workers, celery + 1 child, postgres, redis
        proc.send_signal(stop_signal)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert wait_for(lambda: not [p for p in children if _alive(p)], 20), "processes left behind"


def _answers(url: str) -> bool:
    from tests.suite_helpers import http

    try:
        return http(url, "GET", "/readyz", timeout=2)[0] == 200
    except OSError:
        return False


def _descendants(root: int) -> list[int]:
    from harness.processes import child_pids

    found, todo = [], [root]
    while todo:
        for child in child_pids(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
