"""`forkpool doctor` against real deployments: each finding is shown when it is there and only then.

Every case runs the real command (`python -m forkpool doctor --json`) against
real processes: the suite, its naive contrast, a small Flask app with a
SQLAlchemy engine made at import time (and a warm-up request served there) under
Gunicorn's preload_app with 3 workers, a Celery worker whose task module
connects at import time, and single processes holding sessions. Pool sizes,
discovery without --pid, --watch and the table are in tests/test_doctor_cli.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness._procs import free_port
from harness.processes import SuitePlan, start_suite
from tests.conftest import wait_for
from tests.test_suite import suite_database  # noqa: F401 - fixture: a database with the suite's schema

APPS = Path(__file__).with_name("doctor_apps")


def doctor(*args: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "forkpool", "doctor", "--json", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def codes(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"] if f["severity"] == "error"}


def counts(report: dict) -> dict[int, int]:
    return {p["pid"]: p["postgresql"] for p in report["processes"]}


def start(argv: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def children_of(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


# -- the suite -----------------------------------------------------------------------------


@pytest.mark.parametrize("naive", [False, True], ids=["hooks", "naive"])
def test_the_suite_is_clean_and_its_naive_contrast_is_not(naive, suite_database, redis_url, tmp_path):
    database_url = suite_database
    plan = SuitePlan(
        database_url=database_url,
        redis_url=redis_url,
        suite_id=f"doc{uuid.uuid4().hex[:6]}",
        web_workers=2,
        worker_concurrency=2,
        pool_size=2,
        naive=naive,
    )
    suite = start_suite(plan, tmp_path / "logs")
    try:
        for _ in range(10):  # the naive workers use the inherited pool on the master's sockets
            get(f"{suite.web.url}/items?limit=1")
        web, worker = suite.web.pid, suite.worker.pid
        code, report = doctor("--pid", str(web), "--pid", str(worker), "--pool-size", "2", "--dsn", database_url)
        by_pid = counts(report)
        if not naive:
            assert code == 0 and codes(report) == set(), report["findings"]
            assert by_pid[web] == by_pid[worker] == 0
            workers = children_of(web) + children_of(worker)
            assert len(workers) == 4 and all(by_pid[pid] == 2 for pid in workers), by_pid
            mine = [s for s in report["sessions"] if s["name"].startswith(plan.suite_id)]
            assert len(mine) == 8 and all(s["where"] == "tree" and s["client_pid"] in workers for s in mine)
        else:
            assert code == 1 and codes(report) == {"shared-socket", "master-connection"}, report["findings"]
            shared = [f for f in report["findings"] if f["code"] == "shared-socket"]
            assert all(web in f["pids"] and len(f["pids"]) == 3 for f in shared)  # the master and both workers
            assert [f["pids"] for f in report["findings"] if f["code"] == "master-connection"] == [[web]]
    finally:
        suite.stop()


# -- SQLAlchemy under preload_app ------------------------------------------------------------


@pytest.mark.parametrize(
    "conf, expected",
    [("sqla_inherited.conf.py", {"shared-socket", "master-connection"}), ("sqla_disposed.conf.py", set())],
)
def test_a_sqlalchemy_engine_made_at_import_under_preload(conf, expected, database_url, tmp_path):
    port = free_port()
    proc = start(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(APPS / conf),
            "--no-control-socket",
            "-b",
            f"127.0.0.1:{port}",
            "sqla_app:app",
        ],
        {"DATABASE_URL": database_url, "PYTHONPATH": str(APPS)},
        cwd=APPS,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        for _ in range(6):
            get(f"http://127.0.0.1:{port}/")
        code, report = doctor("--pid", str(proc.pid), "--pool-size", "2", "--dsn", database_url)
        assert codes(report) == expected, report["findings"]
        assert code == (1 if expected else 0)
        if expected:
            assert counts(report)[proc.pid] == 1  # the master's connection from the import
    finally:
        stop(proc)


# -- Celery: a task module connecting at import ----------------------------------------------


def test_a_celery_task_module_that_connects_at_import(database_url, redis_url, tmp_path):
    queue = f"doc{uuid.uuid4().hex[:6]}"
    proc = start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_import_conn",
            "worker",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "--loglevel",
            "INFO",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
        ],
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CELERY_QUEUE": queue, "PYTHONPATH": str(APPS)},
        cwd=APPS,
    )
    try:
        assert wait_for(lambda: len(children_of(proc.pid)) >= 2, timeout=30), "no prefork children"
        code, report = doctor("--pid", str(proc.pid), "--dsn", database_url)
        children = children_of(proc.pid)
        shared = [f for f in report["findings"] if f["code"] == "shared-socket"]
        assert code == 1 and codes(report) == {"shared-socket", "master-connection"}, report["findings"]
        assert len(shared) == 1 and set(shared[0]["pids"]) == {proc.pid, *children}
    finally:
        stop(proc)


# -- sessions and their client processes -----------------------------------------------------


def start_app(
    script: str, args: list[str], env: dict, expected: tuple[str, ...] = ("ready",)
) -> tuple[subprocess.Popen, str]:
    """Start doctor_apps/`script` and wait for its first line: "ready" once it holds its sessions."""
    proc = start([sys.executable, str(APPS / script), *args], env)
    line = proc.stdout.readline().strip()
    if line not in expected:
        stop(proc)
        raise AssertionError(line + proc.stdout.read())
    return proc, line


def hold(mode: str, database_url: str, name: str) -> subprocess.Popen:
    proc, line = start_app(
        "holder.py", [mode], {"DATABASE_URL": database_url, "APP_NAME": name}, ("ready", "no-permission")
    )
    if line == "no-permission":
        pytest.skip(
            "missing CAP_NET_ADMIN: the holder cannot set TCP_REPAIR on its socket, which makes a client "
            "vanish without FIN or RST (run the test as root, or grant the capability)"
        )
    return proc


@pytest.fixture
def bystander():
    """A process with no connection, to give doctor a tree when the one that matters is gone."""
    proc = subprocess.Popen(["sleep", "300"])
    yield str(proc.pid)
    proc.kill()
    proc.wait()


def sessions_named(report: dict, name: str) -> list[dict]:
    return [s for s in report["sessions"] if s["name"] == name]


def test_a_process_that_exits_without_closing_leaves_the_report_once_its_session_is_gone(
    database_url, admin, bystander
):
    name = f"holder-{uuid.uuid4().hex[:6]}"
    proc = hold("plain", database_url, name)
    try:
        code, report = doctor("--pid", str(proc.pid), "--dsn", database_url)
        [session] = sessions_named(report, name)
        assert session["where"] == "tree" and session["client_pid"] == proc.pid and code == 0
        os.killpg(proc.pid, signal.SIGKILL)  # no close: the kernel's FIN ends the session
        proc.wait()
        wait_for(lambda: not admin("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", name))
        code, report = doctor("--dsn", database_url, "--pid", bystander)
        assert sessions_named(report, name) == [] and codes(report) == set()
    finally:
        stop(proc)


def test_a_session_whose_client_vanished_without_a_goodbye_is_an_orphan(database_url, admin, bystander):
    name = f"vanish-{uuid.uuid4().hex[:6]}"
    proc = hold("vanish", database_url, name)
    proc.wait(10)
    try:
        assert admin("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", name), "session not kept"
        code, report = doctor("--dsn", database_url, "--pid", bystander)
        [session] = sessions_named(report, name)
        assert session["where"] == "gone" and session["client_pid"] is None
        orphans = [f for f in report["findings"] if f["code"] == "orphan-session"]
        assert code == 1 and len(orphans) == 1 and name in orphans[0]["message"]
    finally:
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", name)


def test_idle_in_transaction_past_the_threshold_is_flagged_with_its_process(database_url):
    name = f"idletx-{uuid.uuid4().hex[:6]}"
    proc = hold("idle-in-transaction", database_url, name)
    try:
        code, report = doctor("--pid", str(proc.pid), "--dsn", database_url, "--idle-in-transaction", "600")
        assert code == 0 and sessions_named(report, name)[0]["where"] == "tree"
        time.sleep(1.2)
        code, report = doctor("--pid", str(proc.pid), "--dsn", database_url, "--idle-in-transaction", "1")
        flagged = [f for f in report["findings"] if f["code"] == "idle-in-transaction"]
        assert code == 1 and len(flagged) == 1 and flagged[0]["pids"] == [proc.pid]
    finally:
        stop(proc)


@pytest.mark.parametrize("mode", ["close-wait", "reset"])
def test_a_master_holding_a_connection_the_server_closed_is_not_clean(mode, database_url, admin):
    """The descriptor of a connection that is gone (closed by the server; or reset, and in no kernel table any
    more) is still a finding: the master's pool would hand it to the next worker it forks."""
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "dead_master.py"), mode],
        env={**os.environ, "DATABASE_URL": database_url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        backend = int(proc.stdout.readline())
        code, report = doctor("--pid", str(proc.pid))
        assert "dead-socket" not in codes(report)  # alive: held, not dead
        admin("SELECT pg_terminate_backend(%s)", backend)
        assert wait_for(lambda: not admin("SELECT 1 FROM pg_stat_activity WHERE pid = %s", backend), timeout=10)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready"
        code, report = doctor("--pid", str(proc.pid))
        dead = [f for f in report["findings"] if f["code"] == "dead-socket" and f["severity"] == "error"]
        assert code == 1 and dead and all(proc.pid in f["pids"] for f in dead), report["findings"]
        assert "inherits them" in dead[0]["message"] or "closed by the server" in dead[0]["message"]
    finally:
        stop(proc)


def test_usage_errors_are_one_line_with_exit_2(database_url):
    for args in (["--pool-size", "four"], ["--pid", "999999999"], ["--dsn", "not a dsn"]):
        result = subprocess.run(
            [sys.executable, "-m", "forkpool", "doctor", *args], capture_output=True, text=True, timeout=60
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
