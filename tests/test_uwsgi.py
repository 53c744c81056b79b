"""forkpool.uwsgi under a real uWSGI: master + 3 workers, apps that open their pools at import.

uWSGI forks in C, so Python's at-fork hooks never run. Without wiring, the
master keeps what the app opened at import and its sockets stay open in every
worker (doctor flags it). With ``--import forkpool.uwsgi`` (or the import in
the app): doctor clean, the master holds nothing, exactly workers x pool size
sessions by role, every request answered, workers recycled by
``max-requests`` closing theirs and their replacements opening their own, a
``harakiri`` kill leaving nothing behind, and no session after shutdown. The
same with ``lazy-apps``.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from harness._procs import free_port
from tests.conftest import wait_for
from tests.protect_support import (
    by_process,
    doctor,
    errors,
    exact,
    failures,
    held_by,
    http_load,
    settled_doctor,
    shared_backends,
)
from tests.runner_support import logged_backends, logged_pg, session_lister, without_goodbye  # noqa: F401
from tests.server_support import Server, get

UWSGI = Path(sys.executable).with_name("uwsgi")
APPS = Path(__file__).with_name("runner_apps")
WORKERS, POOL = 3, 2
MAX_REQUESTS = 10

pytestmark = pytest.mark.skipif(
    not UWSGI.exists(),
    reason=f"uWSGI is not installed ({UWSGI}): `pip install uwsgi` builds it, which needs gcc and Python's headers",
)


def start_uwsgi(
    servers: list[Server], module: str, env: dict[str, str], log: Path, *options: str
) -> tuple[Server, str]:
    port = free_port()
    argv = [
        str(UWSGI),
        "--master",
        "--processes",
        str(WORKERS),
        "--http-socket",
        f"127.0.0.1:{port}",
        "--chdir",
        str(APPS),
        "--module",
        module,
        "--need-app",
        "--die-on-term",
        "--max-requests",
        str(MAX_REQUESTS),
        "--min-worker-lifetime",
        "1",  # its default 60 s would hold recycling
        "--disable-logging",
        *options,
    ]
    server = Server(argv, APPS, env, log)
    servers.append(server)
    url = f"http://127.0.0.1:{port}/"
    server.wait_until(lambda: len(server.children()) == WORKERS and get(url)[0] in (200, 500), "uwsgi ready")
    return server, url


def app_env(database_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "DB_POOL_SIZE": str(POOL), **extra}


def recycled_load(server: Server, url: str) -> tuple[list[tuple[int, str]], int]:
    """Load until max-requests has replaced every first worker (a worker leaves only after 1 s of life),
    then load the replacements: (answers, workers replaced)."""
    first = set(server.children())
    answers: list[tuple[int, str]] = []

    def replaced() -> bool:
        answers.extend(http_load(url, requests=15, threads=3))
        live = set(server.children())
        # Every first worker gone and every replacement up: one may still be in uWSGI's respawn.
        return not first & live and len(live) == WORKERS

    assert wait_for(replaced, timeout=40, interval=0.2), "max-requests recycled no worker"
    answers += http_load(url, requests=30, threads=3)
    seen = {pid for pid, _ in answers} | set(server.children())
    return answers, len(seen - first)


def steady(server: Server, sessions, suite_id: str) -> bool:
    """Every worker up (none in uWSGI's respawn back-off) with exactly its pool, and no other session."""
    live = server.children()
    return len(live) == WORKERS and exact(sessions, suite_id, "web", live, POOL)


def run_ends_clean(server: Server, sessions, suite_id: str, database_url: str) -> None:
    assert wait_for(lambda: steady(server, sessions, suite_id), timeout=20), (
        by_process(sessions, suite_id),
        server.children(),
    )
    report = settled_doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert errors(report) == [] and held_by(report, "postgresql")[server.pid] == 0, report["findings"]
    # Stopped while steady: a SIGTERM during uWSGI's respawn back-off ("worker respawning too fast")
    # leaves the late worker running and the master waiting for it (uWSGI's race, not ours).
    assert wait_for(lambda: steady(server, sessions, suite_id), timeout=20), by_process(sessions, suite_id)
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=15), sessions()


def test_without_wiring_the_master_keeps_its_connections_and_every_worker_shares_them(servers, database_url, tmp_path):
    server, _ = start_uwsgi(servers, "pool_app:application", app_env(database_url), tmp_path / "uwsgi.log")
    report = doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(report)}, report["findings"]
    assert held_by(report, "postgresql")[server.pid] == POOL
    server.stop(timeout=5)  # what is left after 5 s is SIGKILLed: this run proves nothing about stopping


@pytest.mark.parametrize("wiring", ["--import", "import-in-app", "--import+py-call-uwsgi-fork-hooks"])
def test_get_pool_app_under_uwsgi(wiring, servers, logged_pg, suite_id, tmp_path):
    """On a server that logs how each session ended: every one of the run, the master's import-time ones
    and the recycled workers' included, ended with libpq's goodbye."""
    database_url, sessions = logged_pg.url, session_lister(logged_pg, suite_id)
    # The third: uWSGI calls CPython's fork hooks too (they need its threads on): both paths meet, once each.
    options = {
        "--import": ["--import", "forkpool.uwsgi"],
        "import-in-app": [],
        "--import+py-call-uwsgi-fork-hooks": [
            "--import",
            "forkpool.uwsgi",
            "--py-call-uwsgi-fork-hooks",
            "--enable-threads",
        ],
    }[wiring]
    env = app_env(database_url, WIRE_IN_APP="1" if wiring == "import-in-app" else "0")
    server, url = start_uwsgi(servers, "pool_app:application", env, tmp_path / "uwsgi.log", *options)
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert errors(before) == [] and held_by(before, "postgresql")[server.pid] == 0, before["findings"]
    assert wait_for(lambda: steady(server, sessions, suite_id), timeout=15), by_process(sessions, suite_id)
    answers, recycled = recycled_load(server, url)
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert recycled >= WORKERS
    run_ends_clean(server, sessions, suite_id, database_url)
    backends = logged_backends(logged_pg, suite_id)
    roles = sorted({name.split(":")[1] for name in backends.values()})
    assert without_goodbye(logged_pg, set(backends)) == {}
    print(
        f"uwsgi get_pool ({wiring}): {len(answers)} requests, {recycled} workers recycled, {WORKERS} x {POOL} "
        f"sessions by role web when steady; {len(backends)} sessions over the run (roles {roles}), "
        "all ended with a goodbye"
    )


def test_protected_sqlalchemy_engine_under_uwsgi(servers, logged_pg, suite_id, tmp_path):
    pytest.importorskip("sqlalchemy", reason="forkpool.protect(engine) needs SQLAlchemy")
    database_url, sessions = logged_pg.url, session_lister(logged_pg, suite_id)
    env = {**os.environ, "DATABASE_URL": database_url}  # no DB_POOL_SIZE: forkpool's own pool stays unused
    server, url = start_uwsgi(
        servers, "sqla_app:application", env, tmp_path / "uwsgi.log", "--import", "forkpool.uwsgi"
    )
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert errors(before) == [] and held_by(before, "postgresql")[server.pid] == 0, before["findings"]
    answers, recycled = recycled_load(server, url)
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert recycled >= WORKERS
    run_ends_clean(server, sessions, suite_id, database_url)
    backends = logged_backends(logged_pg, suite_id)
    assert without_goodbye(logged_pg, set(backends)) == {}
    print(
        f"uwsgi sqlalchemy: {len(answers)} requests, {recycled} workers recycled, {len(backends)} sessions "
        "over the run, all ended with a goodbye"
    )


def test_lazy_apps(servers, logged_pg, suite_id, tmp_path):
    database_url, sessions = logged_pg.url, session_lister(logged_pg, suite_id)
    server, url = start_uwsgi(
        servers,
        "pool_app:application",
        app_env(database_url),
        tmp_path / "uwsgi.log",
        "--import",
        "forkpool.uwsgi",
        "--lazy-apps",
    )
    assert wait_for(lambda: steady(server, sessions, suite_id), timeout=15), by_process(sessions, suite_id)
    answers, recycled = recycled_load(server, url)
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert recycled >= WORKERS
    run_ends_clean(server, sessions, suite_id, database_url)
    backends = logged_backends(logged_pg, suite_id)
    assert without_goodbye(logged_pg, set(backends)) == {}
    print(
        f"uwsgi lazy-apps: {len(answers)} requests, {recycled} workers recycled, {len(backends)} sessions "
        "over the run, all ended with a goodbye"
    )


def test_harakiri_kills_a_stuck_worker_and_its_replacement_is_clean(servers, logged_pg, suite_id, tmp_path):
    database_url, sessions = logged_pg.url, session_lister(logged_pg, suite_id)
    server, url = start_uwsgi(
        servers,
        "pool_app:application",
        app_env(database_url),
        tmp_path / "uwsgi.log",
        "--import",
        "forkpool.uwsgi",
        "--harakiri",
        "2",
    )
    assert wait_for(lambda: steady(server, sessions, suite_id), timeout=15), by_process(sessions, suite_id)
    first = set(server.children())
    stuck = threading.Thread(target=get, args=(url + "stuck",), daemon=True)
    stuck.start()
    assert wait_for(lambda: len(first - set(server.children())) == 1, timeout=30), "harakiri killed no worker"
    killed = (first - set(server.children())).pop()
    assert "HARAKIRI" in server.log(), server.log()[-2000:]
    # The killed worker's sessions end when the kernel closes its sockets; its replacement opens its own.
    assert wait_for(lambda: not any(pid == killed for _, pid in by_process(sessions, suite_id)), timeout=15)
    assert wait_for(lambda: len(server.children()) == WORKERS, timeout=15), server.children()
    answers = http_load(url, requests=9, threads=3)
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    replaced = set(server.children()) - first
    run_ends_clean(server, sessions, suite_id, database_url)
    backends = logged_backends(logged_pg, suite_id)
    abrupt = without_goodbye(logged_pg, set(backends))
    # Only the killed worker's sessions ended without a goodbye (SIGKILL runs nothing): the kernel closed them.
    assert {backends[b] for b in abrupt} <= {name for name in backends.values() if name.endswith(f":{killed}")}
    print(
        f"uwsgi harakiri: worker {killed} killed ({len(abrupt)} sessions ended by the kernel), "
        f"replaced by {replaced}; the other {len(backends) - len(abrupt)} sessions ended with a goodbye"
    )
