"""forkpool.protect(conn), a bare psycopg2 / psycopg connection, under real Gunicorn (preload_app) and Celery prefork.

A connection made at import time, with recycling (max_requests /
max_tasks_per_child), each case twice. Unprotected: the workers talk through
the master's session (one backend answering for several workers, or
protocol errors) and doctor flags it. Protected: the master closed it before
forking, so in a worker it fails cleanly, with the driver's own "closed"
error and no byte on any socket; each worker's own connection
(``forkpool.per_process``) is the way to query: exactly one session per live
worker that used it, none of a master, none shared, none left after the stop.
The fork tests show a child failing cleanly on the protected connection
while the parent's session survives.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import psycopg2
import pytest

try:
    import psycopg
except ImportError:  # the psycopg (3) cases skip, saying so
    psycopg = None

import forkpool
import forkpool.identity
from forkpool import _protect as protection
from forkpool._integrations.dbapi import drop_without_io
from tests.conftest import wait_for
from tests.protect_support import (
    APPS,
    doctor,
    errors,
    failures,
    held_by,
    http_load,
    in_child,
    masters,
    recycled_http_load,
    settled_doctor,
    shared,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)
from tests.server_support import by_process

APP = APPS / "dbapi"
WORKERS, CONCURRENCY = 3, 2
VARIANTS = ["psycopg2", "psycopg"]
# What using the master's connection in a worker says once the master closed it: the driver's own words.
CLOSED = {"psycopg2": "error InterfaceError", "psycopg": "error OperationalError"}
# ... and using a connection a protected parent still holds, in a child: its socket is /dev/null there.
DEVNULL = {
    "psycopg2": "error DatabaseError: could not receive data from server: Socket operation on non-socket",
    "psycopg": "error OperationalError: consuming input failed: could not receive data from server: "
    "Socket operation on non-socket",
}


def _needs(driver: str) -> None:
    if driver == "psycopg" and psycopg is None:
        pytest.skip("psycopg (3) is not installed: pip install 'psycopg[binary]'")


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


def _unprotected_failure(before: dict, answers: list) -> None:
    assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
    assert shared(before, "postgresql") and all(held_by(before, "postgresql")[m] == 1 for m in masters(before))
    assert shared_backends(answers) or failures(answers), answers  # what users report


def _one_each(sessions, suite_id: str, role: str, live: list[int], answered: set[int]) -> bool:
    held = by_process(sessions, suite_id)
    expected = {(role, pid) for pid in set(live) & answered}
    return held.keys() == expected and all(len(b) == 1 for b in held.values())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_bare_connection_under_gunicorn_preload(
    variant, protected, servers, database_url, sessions, suite_id, tmp_path
):
    _needs(variant)
    env = {**os.environ, "PROTECT": "1" if protected else "0", "VARIANT": variant}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    server, url = start_gunicorn_app(servers, APP, conf, "web:app", env, tmp_path / "gunicorn.log", WORKERS)
    before = doctor(server.pid, database_url, "--pool-size", "1")
    inherited = http_load(url, requests=24)
    if not protected:
        _unprotected_failure(before, inherited)
        server.stop(timeout=5)  # workers stuck on a session another process read from do not stop gracefully
        return
    assert errors(before) == [], before["findings"]
    assert {answer for _, answer in inherited} == {CLOSED[variant]}, inherited  # fails cleanly, every time
    own = recycled_http_load(server, url + "own")
    assert failures(own) == [] and shared_backends(own) == {}, own
    answered = {pid for pid, _ in own}
    steady = lambda: _one_each(sessions, suite_id, "web", server.children(), answered)  # noqa: E731
    assert wait_for(steady, timeout=15), (by_process(sessions, suite_id), server.children(), answered)
    after = settled_doctor(server.pid, database_url, "--pool-size", "1")
    assert errors(after) == [] and held_by(after, "postgresql")[server.pid] == 0, after["findings"]
    assert wait_for(steady, timeout=15), (by_process(sessions, suite_id), server.children(), answered)
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_bare_connection_under_celery_prefork(
    variant, protected, servers, database_url, redis_url, sessions, suite_id, tmp_path
):
    _needs(variant)
    env = {**os.environ, "PROTECT": "1" if protected else "0", "VARIANT": variant, "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    before = doctor(worker.pid, database_url, "--pool-size", "1")
    inherited = task_load(redis_url, queue, "tasks.backend", count=8, wait=45 if protected else 15)
    if not protected:
        _unprotected_failure(before, inherited)
        worker.stop(timeout=5)  # children stuck on a session another process read from do not stop gracefully
        return
    assert errors(before) == [], before["findings"]
    assert {answer for _, answer in inherited} == {CLOSED[variant]}, inherited
    own = task_load(redis_url, queue, "tasks.own")
    assert failures(own) == [] and shared_backends(own) == {}, own
    answered = {pid for pid, _ in own}
    assert len(answered | {pid for pid, _ in inherited}) > CONCURRENCY  # max_tasks_per_child recycled some
    steady = lambda: _one_each(sessions, suite_id, "worker", worker.children(), answered)  # noqa: E731
    assert wait_for(steady, timeout=15), (by_process(sessions, suite_id), worker.children(), answered)
    after = settled_doctor(worker.pid, database_url, "--pool-size", "1")
    assert errors(after) == [] and held_by(after, "postgresql")[worker.pid] == 0, after["findings"]
    assert worker.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def _connect(driver: str, database_url: str):
    if driver == "psycopg2":
        conn = psycopg2.connect(database_url, application_name=forkpool.identity.application_name())
    else:
        conn = psycopg.connect(database_url, application_name=forkpool.identity.application_name())
    conn.autocommit = True
    return conn


def _backend(conn) -> int:
    cur = conn.cursor()
    try:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]
    finally:
        cur.close()


@pytest.mark.parametrize("driver", VARIANTS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_a_child_fails_cleanly_on_a_protected_connection_and_the_parent_keeps_its_session(
    driver, protected, database_url, sessions, forget_protected
):
    _needs(driver)
    conn = _connect(driver, database_url)
    if protected:
        forkpool.protect(conn)
    parent = _backend(conn)
    report = in_child(lambda: _backend(conn))
    if not protected:
        assert report == str(parent)  # the child queried through the parent's session
    else:
        assert report.startswith(DEVNULL[driver]), report  # its socket leads to /dev/null: not a byte sent
    assert _backend(conn) == parent  # the parent's session survived the child
    assert [backend for _, backend in sessions()] == [parent]
    conn.close()


@pytest.mark.parametrize("driver", VARIANTS)
def test_per_process_gives_each_child_its_own_connection(driver, database_url, sessions, forget_protected):
    _needs(driver)
    own = forkpool.per_process(
        lambda: _connect(driver, database_url),
        detach=drop_without_io,
        close=lambda mine: mine.close(),
        key=f"test.own.{driver}",
    )
    parent = _backend(own())
    child = in_child(lambda: (_backend(own()), own.close())[0])
    assert child.isdigit() and int(child) != parent, child
    assert _backend(own()) == parent
    own.close()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def test_an_async_connection_is_released_from_sync_hooks_and_fails_cleanly_in_a_child(
    database_url, sessions, forget_protected
):
    _needs("psycopg")
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(
        psycopg.AsyncConnection.connect(
            database_url, application_name=forkpool.identity.application_name(), autocommit=True
        )
    )
    forkpool.protect(conn)

    async def backend(c) -> int:
        cur = await c.execute("SELECT pg_backend_pid()")
        return (await cur.fetchone())[0]

    parent = loop.run_until_complete(backend(conn))
    report = in_child(lambda: asyncio.new_event_loop().run_until_complete(backend(conn)))
    assert report.startswith("error OperationalError: connection socket closed"), report  # /dev/null: no poll
    assert loop.run_until_complete(backend(conn)) == parent
    protection.release_all()  # a master before it forks: no event loop needed
    assert conn.closed
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    loop.close()
