"""One source of truth for what a process holds (budget.held_pools), read by the start-up check, the CLI and doctor.

Real PostgreSQL (the session server: max_connections 300, 297 available), real
SQLAlchemy engines handed to forkpool.protect(), real Gunicorn (gthread, with and
without preload_app) and the real ``forkpool budget`` / ``forkpool doctor``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the protected pools here are SQLAlchemy engines (forkpool[sqlalchemy])")
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

import forkpool
from forkpool import _protect as protection
from forkpool import _registry as registry
from forkpool.budget import ServerLimits, held_pools, limits_or_reason, server_of, startup_check
from harness._procs import free_port
from tests.conftest import wait_for
from tests.server_support import Server, get, gunicorn_argv

APP = Path(__file__).with_name("budget_apps")
WORKERS, THREADS = 3, 8
REFUSED_TAIL = ": does not fit (DB_BUDGET_CHECK=warn or off to start anyway)"


@pytest.fixture
def forget_protected():
    yield
    protection.release_all()
    protection.unprotect_all()


def sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def engine_label(database_url: str) -> str:
    """How the SQLAlchemy integration names an engine (its report's label): the URL, password hidden."""
    return f"engine {make_url(sqlalchemy_url(database_url)).render_as_string(hide_password=True)}"


def protected_engine(database_url: str, size: int, overflow: int):
    """A protected engine: the caller keeps it. forkpool holds protected objects weakly (an engine nobody
    keeps is not a pool the process holds), so one left unreferenced goes at the next garbage collection."""
    return forkpool.protect(create_engine(sqlalchemy_url(database_url), pool_size=size, max_overflow=overflow))


# --- the source of truth, in this process ------------------------------------------------------


def test_a_protected_engine_is_held_at_its_maximum_and_the_unused_default_pool_is_not(database_url, forget_protected):
    engine = protected_engine(database_url, 5, 10)
    pools = held_pools()  # DATABASE_URL is set (conftest), DB_POOL_* is not: forkpool's pool is not in use
    assert [(p.label, p.backend, p.max_size, p.source, p.server) for p in pools] == [
        (engine_label(database_url), "postgresql", 15, "pool_size 5 + max_overflow 10", server_of(database_url))
    ]
    # The check reads that engine's own server, with the engine's own DSN.
    limits = limits_or_reason(pools[0].dsn)
    assert isinstance(limits, ServerLimits) and limits.max_connections == 300
    engine.dispose()


def test_gthread_8_threads_fit_an_engine_of_8_and_are_refused_on_4_naming_the_engine(
    database_url, forget_protected, capsys
):
    engine = protected_engine(database_url, 5, 3)
    [line] = startup_check("web", WORKERS, THREADS)
    assert line == (
        f"web: 3 processes x pool 8 = 24 connections (+ 0 for other clients) of 297 available "
        f"(max_connections 300 - reserved 3) on {server_of(database_url)} "
        f"[pool 8: {engine_label(database_url)} 8 (pool_size 5 + max_overflow 3)]: fits"
    )
    assert capsys.readouterr().err == f"forkpool: {line}\n"  # the verdict is seen, whatever the logging
    protection.unprotect_all()
    engine.dispose()
    smaller = protected_engine(database_url, 4, 0)
    with pytest.raises(forkpool.ConfigError) as refused:
        startup_check("web", WORKERS, THREADS)
    assert str(refused.value) == (
        f"web: 8 threads per worker, but {engine_label(database_url)} holds at most 4 "
        f"(pool_size 4 + max_overflow 0){REFUSED_TAIL}"
    )
    smaller.dispose()


def test_pools_configured_in_code_are_counted_with_where_their_size_comes_from(database_url, monkeypatch):
    forkpool.configure("reports", dsn=database_url, min_size=1, max_size=3)
    by_dsn = forkpool.pool_for(database_url, min_size=1, max_size=2)
    pools = {p.label: p for p in held_pools()}
    assert set(pools) == {"forkpool pool 'reports'", f"forkpool pool {by_dsn.name!r}"}  # not 'default'
    assert (pools["forkpool pool 'reports'"].max_size, pools["forkpool pool 'reports'"].source) == (
        3,
        "configure(max_size=3)",
    )
    assert pools[f"forkpool pool {by_dsn.name!r}"].source == "pool_for(max_size=2)"
    [line] = startup_check("worker", 10, 1)
    assert "10 processes x pool 5 = 50 connections" in line and line.endswith(": fits")
    assert "forkpool pool 'reports' 3 (configure(max_size=3))" in line
    with pytest.raises(forkpool.ConfigError) as refused:
        startup_check("web", 2, 4)
    assert str(refused.value) == (
        f"web: 4 threads per worker, but forkpool pool {by_dsn.name!r} holds at most 2 "
        "(pool_for(max_size=2)); 4 threads per worker, but forkpool pool 'reports' holds "
        f"at most 3 (configure(max_size=3)){REFUSED_TAIL}"
    )
    # Sized by the environment as before: DB_POOL_MAX names itself, and a DB_POOL_SIZE pool joins the others.
    monkeypatch.setenv("DB_POOL_MIN", "1")
    monkeypatch.setenv("DB_POOL_MAX", "6")
    assert [p.source for p in held_pools() if p.label == "forkpool pool 'default'"] == ["DB_POOL_MAX=6"]


def test_without_database_url_the_check_connects_to_no_default_socket(monkeypatch):
    """DB_POOL_SIZE set, DATABASE_URL not: the default pool is listed, and no connection is tried anywhere."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:  # short: a socket path has ~100 bytes
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(directory, ".s.PGSQL.5432"))
        listener.listen(8)
        listener.setblocking(False)
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("PGHOST", directory)  # where libpq's default would go
        monkeypatch.setenv("PGPORT", "5432")
        monkeypatch.setenv("DB_POOL_SIZE", "4")
        try:
            assert startup_check("web", WORKERS, 1) == [
                "web: budget not checked: forkpool pool 'default' 4 (DB_POOL_SIZE=4): no DSN (DATABASE_URL unset), "
                "not checked against a server"
            ]
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody knocked
        finally:
            listener.close()


def test_warn_starts_anyway_and_an_unreachable_server_is_listed_not_refused(database_url, monkeypatch, capsys):
    forkpool.configure("small", dsn=database_url, min_size=1, max_size=2)
    monkeypatch.setenv("DB_BUDGET_CHECK", "warn")
    [line] = startup_check("web", WORKERS, 4)
    assert line.startswith(
        "web: 4 threads per worker, but forkpool pool 'small' holds at most 2 (configure(max_size=2))"
    ) and line.endswith(REFUSED_TAIL)
    assert capsys.readouterr().err == f"forkpool: {line}\n"
    monkeypatch.delenv("DB_BUDGET_CHECK")
    registry.configured().clear()
    forkpool.configure("elsewhere", dsn="postgresql://nobody:s3cret@127.0.0.1:1/nothing", min_size=1, max_size=2)
    [line] = startup_check("web", WORKERS, 1)
    assert (
        line.startswith(
            "web: budget not checked: forkpool pool 'elsewhere' 2 (configure(max_size=2)) on "
            "127.0.0.1:1: not checked, the server is unreachable: "
        )
        and "s3cret" not in line
    )


# --- real Gunicorn ------------------------------------------------------------------------------


def start_gunicorn(servers: list[Server], env: dict[str, str], log: Path, *options: str) -> tuple[Server, str]:
    port = free_port()
    argv = gunicorn_argv(
        "engine_app:app", port, WORKERS, "--config", "gunicorn.conf.py", "--threads", str(THREADS), *options
    )
    server = Server(argv, APP, env, log)
    servers.append(server)
    return server, f"http://127.0.0.1:{port}/"


def run_doctor(master: int, database_url: str, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forkpool",
            "doctor",
            "--json",
            "--pid",
            str(master),
            "--dsn",
            database_url,
            "--app",
            "engine_app",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=APP,
        env=env,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_gthread_app_on_a_protected_engine_of_8_starts_serves_and_doctor_expects_8(servers, database_url, tmp_path):
    env = {**os.environ, "ENGINE_POOL_SIZE": "5", "ENGINE_MAX_OVERFLOW": "3", "ENGINE_EAGER": "1"}
    server, url = start_gunicorn(servers, env, tmp_path / "gunicorn.log")
    server.wait_until(lambda: len(server.children()) == WORKERS and get(url)[0] == 200, "gunicorn serving")
    verdicts = [line for line in server.log().splitlines() if line.startswith("forkpool: web:")]
    assert verdicts == [
        f"forkpool: web: 3 processes x pool 8 = 24 connections (+ 0 for other clients) of 297 "
        f"available (max_connections 300 - reserved 3) on {server_of(database_url)} "
        f"[pool 8: {engine_label(database_url)} 8 (pool_size 5 + max_overflow 3)]: fits"
    ]
    # Doctor reads the same source: each worker may hold 8 (it holds its 5 eager ones).
    report = run_doctor(server.pid, database_url, env)
    assert report["expected_per_worker"] == {"*": 8}
    assert [f for f in report["findings"] if f["severity"] == "error"] == [], report["findings"]
    # Imported with a smaller engine, doctor expects 1 and flags workers holding their 5.
    small = {**env, "ENGINE_POOL_SIZE": "1", "ENGINE_MAX_OVERFLOW": "0"}
    assert wait_for(
        lambda: "above-pool-size" in {f["code"] for f in run_doctor(server.pid, database_url, small)["findings"]},
        timeout=30,
    )


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gthread_app_on_a_protected_engine_of_4_is_refused_in_one_line(preload, servers, database_url, tmp_path):
    """preload_app: the master refuses (status 1). Without it the master cannot know the engine: the
    first worker refuses, and Gunicorn halts on its WORKER_BOOT_ERROR (status 3)."""
    env = {**os.environ, "ENGINE_POOL_SIZE": "4", "ENGINE_MAX_OVERFLOW": "0", "PRELOAD": "1" if preload else "0"}
    server, _ = start_gunicorn(servers, env, tmp_path / "gunicorn.log")
    status = server.proc.wait(60)
    log = server.log()
    refusals = [line for line in log.splitlines() if "does not fit" in line]
    assert refusals == [
        f"forkpool: web: 8 threads per worker, but {engine_label(database_url)} holds at most 4 "
        f"(pool_size 4 + max_overflow 0){REFUSED_TAIL}"
    ], log[-3000:]
    assert status == (1 if preload else 3), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    if not preload:
        assert (
            "forkpool: web: budget not checked: the app is not imported in the master (preload_app off): "
            "the pools it makes are checked by the first worker (forkpool.gunicorn.post_worker_init)"
        ) in log


# --- forkpool budget --app ----------------------------------------------------------------------


def forkpool_budget(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forkpool", "budget", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=APP,
        env=env,
    )


def test_forkpool_budget_refuses_a_fleet_of_protected_pools_above_max_connections(database_url):
    env = {**os.environ, "ENGINE_POOL_SIZE": "50", "ENGINE_MAX_OVERFLOW": "50"}
    server = server_of(database_url)
    refused = forkpool_budget("--app", "engine_app", "--web-workers", "3", "--worker-concurrency", "0", env=env)
    assert refused.returncode == 3 and refused.stderr == "", refused.stdout + refused.stderr
    assert refused.stdout.splitlines() == [
        "pools per process (engine_app):",
        f"  {engine_label(database_url)} 100 (pool_size 50 + max_overflow 50) -> PostgreSQL {server}",
        f"PostgreSQL {server}: pool 100 per process = {engine_label(database_url)} 100 "
        "(pool_size 50 + max_overflow 50)",
        "web:     3 workers x pool 100 = 300",
        "workers: 0 processes x pool 100 = 0",
        "ceiling: 300 + 0 = 300",
        "needed:  ceiling 300 + other clients 0 = 300",
        "server:  max_connections 300 - superuser_reserved 3 - reserved 0 = 297 available",
        "verdict: 300 of 297 -> DOES NOT FIT (headroom -3)",
    ]
    fits = forkpool_budget("--app", "engine_app", "--web-workers", "2", "--worker-concurrency", "0", env=env)
    assert fits.returncode == 0 and fits.stdout.splitlines()[-1] == "verdict: 200 of 297 -> fits (headroom 97)"
    # A pool configured in code joins the engine on the same server; threads above a pool are refused.
    both = forkpool_budget(
        "--app",
        "engine_app",
        "--app",
        "configured_app",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "0",
        "--web-threads",
        "4",
        env=env,
    )
    assert both.returncode == 3, both.stdout + both.stderr
    assert "web:     2 workers x pool 103 = 206" in both.stdout
    assert both.stdout.splitlines()[-1] == (
        "threads: 4 threads per web worker, but forkpool pool 'reports' holds "
        "at most 3 (configure(max_size=3)) -> DOES NOT FIT"
    )
    clash = forkpool_budget("--app", "engine_app", "--pool-size", "4", env=env)
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1 and "--pool-size" in clash.stderr
    missing = forkpool_budget("--app", "no_such_module", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no_such_module" in missing.stderr


# --- real Celery --------------------------------------------------------------------------------


def test_celery_refuses_a_fleet_of_protected_engines_above_max_connections(servers, database_url, redis_url, tmp_path):
    """worker_init (main process, app imported): 2 processes x engine 150 = 300 of 297: refused in one line."""
    pytest.importorskip("celery", reason="the Celery check needs Celery (forkpool[celery])")
    env = {**os.environ, "REDIS_URL": redis_url, "ENGINE_POOL_SIZE": "100", "ENGINE_MAX_OVERFLOW": "50"}
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    worker = Server(argv, APP, env, tmp_path / "celery.log")
    servers.append(worker)
    status = worker.proc.wait(60)
    log = worker.log()
    refusals = [line for line in log.splitlines() if "does not fit" in line]
    assert status != 0 and len(refusals) == 1, log[-3000:]
    assert refusals[0].endswith(
        f"worker: 2 processes x pool 150 = 300 connections (+ 0 for other clients) of 297 available "
        f"(max_connections 300 - reserved 3) on {server_of(database_url)} [pool 150: {engine_label(database_url)} "
        f"150 (pool_size 100 + max_overflow 50)]{REFUSED_TAIL}"
    ), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
