"""forkpool.protect(engine) on MariaDB (PyMySQL, mysqlclient) and SQLite (file) under real Gunicorn and Celery.

The app of tests/test_protect_sqlalchemy.py (tests/protect_apps/sqla, engine
made at import, used there) with ``SQLA_URL`` naming the database. Unprotected:
the workers use the master's connection (MariaDB: its socket, in every process;
SQLite: its open file, which SQLite's docs forbid carrying across fork), and
answers come from one session in several workers, or fail. Protected: every
request and task answers from a connection of its own process, no socket or
file description is shared, the master holds none, MariaDB's sessions by
identity are exactly what the workers hold, and none is left after the stop.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

pytest.importorskip("sqlalchemy", reason="forkpool.protect(engine) needs SQLAlchemy (forkpool[sqlalchemy])")

from tests.conftest import wait_for
from tests.dialect_support import (
    file_handles,
    kcmp_available,
    local_ports,
    mariadb_client_ports,
    mariadb_sessions,
    shared_file_handles,
    sockets_to,
)
from tests.protect_support import (
    APPS,
    exact,
    failures,
    http_load,
    recycled_http_load,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)
from tests.server_support import Server, by_process

APP = APPS / "sqla"
WORKERS, POOL, CONCURRENCY = 3, 2, 2
WEDGED_STOP_S = 3  # as in test_protect_sqlalchemy: a worker wedged on a shared socket is SIGKILLed
BACKENDS = ["mariadb-pymysql", "mariadb-mysqlclient", "sqlite-file"]


@dataclass
class Backend:
    url: str
    mariadb: object | None
    server: tuple[str, int] | None  # MariaDB's address; None for SQLite
    path: str | None  # SQLite's database file
    sessions: Callable[[str], Callable[[], list[tuple[str, int]]]] | None  # role -> lister

    def sharing(self, pids: list[int]) -> list[set[int]]:
        """Sockets (MariaDB) or open file descriptions (SQLite) held by more than one of `pids`."""
        if self.server:
            return [p for p in sockets_to(pids, self.server).values() if len(p) > 1]
        return shared_file_handles(pids, self.path)

    def held_by(self, pid: int) -> int:
        if self.server:
            return sum(1 for p in sockets_to([pid], self.server).values() if pid in p)
        return len(file_handles(pid, self.path))


@pytest.fixture(params=BACKENDS)
def backend(request, suite_id, tmp_path) -> Backend:
    if request.param == "sqlite-file":
        if not kcmp_available():
            pytest.skip("kcmp(2) is not available: cannot tell a shared open file from two opens")
        path = str(tmp_path / "app.db")
        return Backend(f"sqlite:///{path}", None, None, path, None)
    if request.param == "mariadb-mysqlclient":
        pytest.importorskip(
            "MySQLdb", reason="mysqlclient is not installed (dev extra; needs libmariadb-dev, pkg-config)"
        )
    mariadb = request.getfixturevalue("mariadb")
    driver = "pymysql" if request.param == "mariadb-pymysql" else "mysqldb"
    by = "program_name" if driver == "pymysql" else "_pid"  # mysqlclient takes no program name
    return Backend(
        mariadb.url.replace("mysql://", f"mysql+{driver}://", 1),
        mariadb,
        (mariadb.host, mariadb.port),
        None,
        lambda role: mariadb_sessions(mariadb, suite_id, by, role),
    )


def ends_clean(server: Server, role: str, backend: Backend, suite_id: str) -> None:
    """Steady: each live child holds its whole pool (MariaDB, by identity), nothing shared, the master none;
    a graceful stop; no session left."""
    if backend.sessions is not None:
        sessions = backend.sessions(role)
        assert wait_for(lambda: exact(sessions, suite_id, role, server.children(), POOL), timeout=15), (
            by_process(sessions, suite_id),
            server.children(),
        )
    processes = [server.pid, *server.children()]
    assert backend.sharing(processes) == [] and backend.held_by(server.pid) == 0
    if backend.mariadb is not None:  # the server's sessions are exactly the sockets the workers hold
        assert wait_for(
            lambda: mariadb_client_ports(backend.mariadb) == set(local_ports(processes, backend.server)), timeout=10
        ), (mariadb_client_ports(backend.mariadb), local_ports(processes, backend.server))
    assert server.stop() == 0
    if backend.sessions is not None:
        assert wait_for(lambda: sessions() == [], timeout=10), sessions()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_engine_under_gunicorn_preload(protected, backend, servers, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "SQLA_URL": backend.url}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    server, url = start_gunicorn_app(servers, APP, conf, "web:app", env, tmp_path / "gunicorn.log", WORKERS)
    before, master = backend.sharing([server.pid, *server.children()]), backend.held_by(server.pid)
    if not protected:
        answers = http_load(url, requests=24)
        # The master's connection in every worker too, and what users see.
        assert before and master >= 1, before
        assert shared_backends(answers) or failures(answers), answers
        server.stop(timeout=WEDGED_STOP_S)
        return
    answers = recycled_http_load(server, url)
    assert before == [] and master == 0, before
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    ends_clean(server, "web", backend, suite_id)


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_engine_under_celery_prefork(protected, backend, servers, redis_url, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "SQLA_URL": backend.url, "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    before, master = backend.sharing([worker.pid, *worker.children()]), backend.held_by(worker.pid)
    answers = task_load(redis_url, queue, "tasks.backend", count=16 if protected else 8, wait=45 if protected else 10)
    if not protected:
        assert before and master >= 1, before
        assert shared_backends(answers) or failures(answers), answers
        worker.stop(timeout=WEDGED_STOP_S)
        return
    assert before == [] and master == 0, before
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert len({pid for pid, _ in answers}) > CONCURRENCY  # max_tasks_per_child recycled some
    ends_clean(worker, "worker", backend, suite_id)
