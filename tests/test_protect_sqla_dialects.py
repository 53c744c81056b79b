"""forkpool.protect(engine) for every dialect: identity only where the driver has a place, fork safety per database.

- The identity goes to PostgreSQL's application_name (psycopg2, psycopg 3,
  asyncpg's server_settings), PyMySQL's program_name connection attribute; never
  to SQLite or mysqlclient (which take none: protect() used to break both with
  an ``application_name`` keyword), and never over the app's own.
- A forked child of a busy parent (a thread mid-query through the fork) gets
  MariaDB sessions of its own; the parent's survive the child and its
  ``engine.dispose()``.
- SQLite: a child of a file database opens its own file handle (not the
  parent's open file); an in-memory database is the child's private copy.
- Flask-SQLAlchemy's app-factory shape (protect(db) before init_app): a child
  lets go of the master's socket by itself, no server hooks; under Gunicorn
  preload without forkpool's hooks, no socket is shared (the recipes of
  docs/protect-sqlalchemy.md, tried here).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time

import pytest

pytest.importorskip("sqlalchemy", reason="forkpool.protect(engine) needs SQLAlchemy (forkpool[sqlalchemy])")
from sqlalchemy import create_engine, text

import forkpool
from forkpool import _protect as protection
from forkpool import identity
from tests.conftest import wait_for
from tests.dialect_support import file_handles, kcmp_available, same_open_file, sockets_to
from tests.protect_support import (
    APPS,
    doctor,
    errors,
    failures,
    http_load,
    in_child,
    shared,
    shared_backends,
    start_gunicorn_app,
)

FACTORY = APPS / "flask_factory"


@pytest.fixture(autouse=True)
def forget_protected():
    yield
    protection.unprotect_all()


def mariadb_engine(mariadb, driver: str, **options):
    if driver == "mysqldb":
        pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (dev extra; needs libmariadb-dev)")
    return create_engine(mariadb.url.replace("mysql://", f"mysql+{driver}://", 1), **options)


def connect_attrs(mariadb, session: int) -> dict[str, str]:
    return dict(
        mariadb.execute_as_root(
            "SELECT ATTR_NAME, ATTR_VALUE FROM performance_schema.session_connect_attrs "
            f"WHERE PROCESSLIST_ID = {int(session)}"
        )
    )


# --- identity ---------------------------------------------------------------------------------------------------


def test_pymysql_sessions_carry_the_identity_as_program_name(mariadb, suite_id):
    engine = forkpool.protect(mariadb_engine(mariadb, "pymysql"))
    with engine.connect() as conn:
        session = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
    assert connect_attrs(mariadb, session)["program_name"] == identity.application_name()
    engine.dispose()


def test_an_apps_own_program_name_is_kept(mariadb, suite_id):
    engine = forkpool.protect(mariadb_engine(mariadb, "pymysql", connect_args={"program_name": "billing"}))
    for _ in range(2):  # the second connect too: a name forkpool put in would have been replaced
        with engine.connect() as conn:
            session = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
            assert connect_attrs(mariadb, session)["program_name"] == "billing"
            conn.invalidate()
    engine.dispose()


def test_mysqlclient_connects_and_gets_no_program_name(mariadb, suite_id):
    """mysqlclient (2.2, 2.3) has no connection-attribute argument: nothing is added; libmariadb's own _pid shows."""
    engine = forkpool.protect(mariadb_engine(mariadb, "mysqldb"))
    with engine.connect() as conn:
        session = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
    attrs = connect_attrs(mariadb, session)
    assert "program_name" not in attrs and attrs["_pid"] == str(os.getpid()), attrs
    engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///{tmp}/app.db"], ids=["memory", "file"])
def test_sqlite_engines_connect_when_protected(url, tmp_path):
    """The report: ``'application_name' is an invalid keyword argument for Connection()`` on every connect."""
    engine = forkpool.protect(create_engine(url.format(tmp=tmp_path)), eager=True)
    protection.warm_all(time.monotonic() + 5)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "pg8000"])
def test_psycopg3_and_pg8000_sessions_carry_application_name(driver, database_url, suite_id):
    pytest.importorskip(driver)
    engine = forkpool.protect(create_engine(database_url.replace("postgresql://", f"postgresql+{driver}://", 1)))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_setting('application_name')")).scalar() == identity.application_name()
    engine.dispose()


def test_asyncpg_sessions_carry_application_name_beside_the_apps_settings(database_url, suite_id):
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    from forkpool._integrations.sqlalchemy import attach_engine

    async def name(settings: dict | None) -> str:
        args = {"server_settings": settings} if settings else {}
        async_engine = create_async_engine(
            database_url.replace("postgresql://", "postgresql+asyncpg://", 1), connect_args=args
        )
        attach_engine(async_engine.sync_engine)  # the do_connect hook AsyncEngine support builds on
        try:
            async with async_engine.connect() as conn:
                return (await conn.execute(text("SELECT current_setting('application_name')"))).scalar()
        finally:
            await async_engine.dispose()

    assert asyncio.run(name({"search_path": "public"})) == identity.application_name()
    assert asyncio.run(name({"application_name": "reports"})) == "reports"


# --- a forked child of a busy parent, on MariaDB ----------------------------------------------------------------


def _sessions(engine) -> set[int]:
    held = [engine.connect() for _ in range(engine.pool.size())]
    try:
        return {conn.execute(text("SELECT CONNECTION_ID()")).scalar() for conn in held}
    finally:
        for conn in held:
            conn.close()


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_a_child_of_a_busy_parent_gets_mariadb_sessions_of_its_own(protected, driver, mariadb, suite_id):
    engine = mariadb_engine(mariadb, driver, pool_size=2, max_overflow=0, pool_timeout=3)
    if protected:
        forkpool.protect(engine, eager=True)
    parent = _sessions(engine)
    busy, forked = threading.Event(), threading.Event()
    found: list[int] = []

    def query() -> None:  # one pooled session busy through the fork; the other idle in the pool
        with engine.connect() as conn:
            busy.set()
            found.append(conn.execute(text("SELECT CONNECTION_ID() FROM (SELECT SLEEP(0.3)) AS pause")).scalar())
            forked.wait(10)

    thread = threading.Thread(target=query)
    thread.start()
    assert busy.wait(10)
    time.sleep(0.05)  # the thread is inside the driver's read now

    def child() -> str:
        inherited = sum(1 for p in sockets_to([os.getpid()], (mariadb.host, mariadb.port)).values())
        protection.warm_all(time.monotonic() + 10)
        with engine.connect() as conn:
            session = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
        engine.dispose()
        return f"{session} {os.getpid()} {inherited}"

    try:
        report = in_child(child)
    finally:
        forked.set()
        thread.join()
    assert not report.startswith("error"), report
    session, _child_pid, inherited = (int(x) for x in report.split(" "))
    assert found and found[0] in parent
    if not protected:  # the child talked through the parent's idle session
        assert session in parent - set(found) and inherited == 2, (report, parent)
        engine.dispose()
        return
    assert session not in parent and inherited == 0, (report, parent)  # the parent's sockets: at /dev/null
    assert wait_for(lambda: connect_attrs(mariadb, session) == {}, timeout=10)  # ended by the child's dispose()
    assert _sessions(engine) == parent  # the parent's sessions survived the child and its dispose()
    engine.dispose()


# --- SQLite -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not kcmp_available(), reason="kcmp(2) is not available: cannot tell a shared open file")
def test_a_child_opens_its_own_sqlite_file_handle(tmp_path):
    path = str(tmp_path / "app.db")
    engine = forkpool.protect(create_engine(f"sqlite:///{path}", pool_size=1, max_overflow=0))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    parent_fd = file_handles(os.getpid(), path)[0]  # the pooled connection's handle, idle in the pool

    def child() -> str:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            fds = file_handles(os.getpid(), path)
            # the inherited handle (still open, untouched) and one the child opened itself
            own = [fd for fd in fds if not same_open_file(os.getppid(), parent_fd, os.getpid(), fd)]
            return f"{len(fds)} {len(own)}"

    assert in_child(child) == "2 1"
    with engine.connect() as conn:  # the parent's handle still works, and sees the child's row (one file)
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    engine.dispose()


@pytest.mark.parametrize("poolclass", ["default", "StaticPool"])
def test_an_in_memory_sqlite_database_is_the_childs_private_copy(poolclass):
    from sqlalchemy.pool import StaticPool

    options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}} if poolclass != "default" else {}
    engine = forkpool.protect(create_engine("sqlite://", **options))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))

    def child() -> str:
        protection.release_all()  # what a worker's exit does: the copy is left alone, not disposed
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            return str(conn.execute(text("SELECT count(*) FROM t")).scalar())

    assert in_child(child) == "2"  # the parent's table and row, as at fork, plus its own
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1  # the child's row stayed in the child
    engine.dispose()
    assert sqlite3.sqlite_version  # the library the copies ran on


# --- Flask-SQLAlchemy's app factory ---------------------------------------------------------------------------


def test_protect_before_init_app_lets_a_child_release_the_masters_socket(mariadb, suite_id):
    """No server hooks: the engine init_app makes is known to the at-fork hook, and learned where it connects."""
    pytest.importorskip("flask_sqlalchemy")
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    forkpool.protect(db)
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=mariadb.url.replace("mysql://", "mysql+pymysql://", 1))
    db.init_app(app)
    with app.app_context():
        parent = db.session.execute(text("SELECT CONNECTION_ID()")).scalar()
        db.session.remove()

        def child() -> str:
            inherited = len(sockets_to([os.getpid()], (mariadb.host, mariadb.port)))
            session = db.session.execute(text("SELECT CONNECTION_ID()")).scalar()
            db.session.remove()
            return f"{inherited} {session}"

        inherited, session = in_child(child).split(" ")
        assert inherited == "0" and int(session) != parent
        assert db.session.execute(text("SELECT CONNECTION_ID()")).scalar() == parent  # the parent's survived
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_flask_app_factory_under_gunicorn_preload_without_hooks(
    protected, servers, database_url, sessions, suite_id, tmp_path
):
    pytest.importorskip("flask_sqlalchemy")
    env = {
        **os.environ,
        "PROTECT": "1" if protected else "0",
        "APP_DATABASE_URL": database_url.replace("postgresql://", "postgresql+psycopg2://", 1),
    }
    server, url = start_gunicorn_app(servers, FACTORY, "gunicorn.conf.py", "web:app", env, tmp_path / "gunicorn.log", 3)
    before = doctor(server.pid, database_url)
    if not protected:  # what users reported: the master's socket in all 4 processes, doctor exit 1
        assert len(shared(before, "postgresql")) >= 1 and "shared-socket" in {f["code"] for f in errors(before)}
        server.stop(timeout=3)
        return
    # Each worker let go of the master's socket by itself. The master keeps its own (idle) session:
    # without the server hooks nothing tells it that it is a master (see docs/protect-sqlalchemy.md).
    assert shared(before, "postgresql") == [], before["connections"]
    assert {f["code"] for f in errors(before)} <= {"master-connection"}, before["findings"]
    answers = http_load(url, requests=24)
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    after = doctor(server.pid, database_url)
    assert shared(after, "postgresql") == [], after["connections"]
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def test_flask_app_factory_with_a_sqlite_test_config_under_gunicorn_preload(servers, database_url, tmp_path):
    """``SQLALCHEMY_DATABASE_URI="sqlite://"``: each worker answers from its copy of the master's database."""
    pytest.importorskip("flask_sqlalchemy")
    env = {**os.environ, "PROTECT": "1", "TEST_CONFIG": "1"}
    server, url = start_gunicorn_app(servers, FACTORY, "gunicorn.conf.py", "web:app", env, tmp_path / "gunicorn.log", 3)
    report = doctor(server.pid, database_url)
    answers = http_load(url, requests=24)
    assert errors(report) == [], report["findings"]
    assert failures(answers) == [] and {b for _, b in answers} == {"rows=1"}, answers
    assert server.stop() == 0
