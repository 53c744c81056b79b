"""forkpool.protect(pool) for psycopg_pool, sync and async, under real Gunicorn (preload_app) and Celery prefork.

Each case runs twice, with recycling (max_requests / max_tasks_per_child).
Unprotected (a pool opened at import time, as users do): the master keeps its
sessions and every worker hands them out again (psycopg#544, #651): two
workers answer through one backend, or fail (timeouts, protocol errors), and
doctor flags shared sockets and a master holding connections. Protected:
exactly processes x pool size sessions by identity, none of a master, none
shared, none left when the server stops. The fork tests show the same pool
object working in a child and the parent's sessions surviving it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed: pip install 'forkpool[psycopg_pool]'")
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import forkpool
from forkpool import _protect as protection
from forkpool import identity
from forkpool._integrations.psycopg_pool import INTEGRATION
from tests.conftest import wait_for
from tests.protect_support import (
    APPS,
    doctor,
    errors,
    exact,
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

APP = APPS / "pgpool"
WORKERS, POOL, CONCURRENCY = 3, 2, 2
VARIANTS = ["sync", "asyncio"]


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


def _unprotected_failure(before: dict, answers: list, first: list) -> None:
    assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
    assert shared(before, "postgresql") and all(held_by(before, "postgresql")[m] >= 1 for m in masters(before))
    # What users report: one backend answering for two workers, or errors and timeouts.
    assert shared_backends(answers) or failures(answers), answers


def _protected(before: dict, answers: list, first: list) -> None:
    assert errors(before) == [], before["findings"]
    assert failures(first) == [] and failures(answers) == [] and shared_backends(answers) == {}, (first, answers)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_psycopg_pool_under_gunicorn_preload(variant, protected, servers, database_url, sessions, suite_id, tmp_path):
    if variant == "asyncio":
        pytest.importorskip("uvicorn_worker", reason="the asyncio app runs under Gunicorn's uvicorn worker (dev extra)")
    env = {**os.environ, "PROTECT": "1" if protected else "0", "VARIANT": variant}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    module = "asgi:app" if variant == "asyncio" else "web:app"
    server, url = start_gunicorn_app(servers, APP, conf, module, env, tmp_path / "gunicorn.log", WORKERS)
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    # /startup before the load: it counts toward max_requests, and a worker leaving at its limit
    # resets a request now and then (uvicorn, see http_load).
    first = http_load(url + "startup", requests=6, retry_reset=True) if variant == "asyncio" else []
    answers = recycled_http_load(server, url) if protected else http_load(url, requests=24)
    if not protected:
        _unprotected_failure(before, answers, first)
        server.stop(timeout=5)  # workers stuck on a session another process read from do not stop gracefully
        return
    _protected(before, answers, first)
    assert wait_for(lambda: exact(sessions, suite_id, "web", server.children(), POOL), timeout=15), (
        by_process(sessions, suite_id),
        server.children(),
    )
    after = settled_doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert errors(after) == [] and held_by(after, "postgresql")[server.pid] == 0, after["findings"]
    # Steady again (no replacement booting) before the stop: a worker spawned as the master
    # handles SIGTERM misses it (Gunicorn's own race) and the stop would not be graceful.
    assert wait_for(lambda: exact(sessions, suite_id, "web", server.children(), POOL), timeout=15), (
        by_process(sessions, suite_id),
        server.children(),
    )
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "protected",
    # The unprotected contrast under Celery runs on demand (-m slow): the Gunicorn contrast shows the same
    # failure in the default run, within its 15 minutes.
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["unprotected", "protected"],
)
def test_psycopg_pool_under_celery_prefork(
    variant, protected, servers, database_url, redis_url, sessions, suite_id, tmp_path
):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "VARIANT": variant, "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    before = doctor(worker.pid, database_url, "--pool-size", str(POOL))
    answers = task_load(redis_url, queue, "tasks.backend", count=16 if protected else 8, wait=45 if protected else 15)
    first = task_load(redis_url, queue, "tasks.first", count=4) if variant == "asyncio" else []
    if not protected:
        _unprotected_failure(before, answers, first)
        worker.stop(timeout=5)  # children stuck on a session another process read from do not stop gracefully
        return
    _protected(before, answers, first)
    assert len({pid for pid, _ in answers}) > CONCURRENCY  # max_tasks_per_child recycled some
    assert wait_for(lambda: exact(sessions, suite_id, "worker", worker.children(), POOL), timeout=15), (
        by_process(sessions, suite_id),
        worker.children(),
    )
    after = settled_doctor(worker.pid, database_url, "--pool-size", str(POOL))
    assert errors(after) == [] and held_by(after, "postgresql")[worker.pid] == 0, after["findings"]
    # Steady again (no replacement starting) before the stop, which must be graceful.
    assert wait_for(lambda: exact(sessions, suite_id, "worker", worker.children(), POOL), timeout=15), (
        by_process(sessions, suite_id),
        worker.children(),
    )
    assert worker.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def _backends(pool: ConnectionPool) -> set[int]:
    found = set()
    held = [pool.getconn() for _ in range(pool.max_size)]
    try:
        for conn in held:
            found.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            conn.rollback()
    finally:
        for conn in held:
            pool.putconn(conn)
    return found


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_the_same_pool_object_works_in_a_child_and_the_parent_keeps_its_sessions(
    protected, database_url, suite_id, sessions, forget_protected
):
    pool = ConnectionPool(
        database_url,
        min_size=2,
        max_size=2,
        timeout=3,
        open=False,
        configure=lambda conn: (conn.execute("SET statement_timeout = '1234ms'"), conn.commit()),
    )
    if protected:
        forkpool.protect(pool)
    pool.open(wait=True)
    parent = _backends(pool)

    def child() -> str:
        protection.warm_all(time.monotonic() + 10)  # what post_fork / worker_process_init do
        mine = _backends(pool)
        with pool.connection() as conn:
            name, timeout = conn.execute(
                "SELECT current_setting('application_name'), current_setting('statement_timeout')"
            ).fetchone()
        return f"{','.join(map(str, sorted(mine)))} {name} {timeout} {pool.get_stats()['pool_size']}"

    report = in_child(child)
    if not protected:  # the child talked through the parent's sessions, or failed
        assert report.startswith("error") or {int(b) for b in report.split()[0].split(",")} & parent, report
        pool.close()
        return
    backends, name, timeout, size = report.split()
    mine = {int(b) for b in backends.split(",")}
    assert len(mine) == 2 and not mine & parent, (report, parent)
    assert name.startswith(f"{suite_id}:") and name != identity.application_name() and timeout == "1234ms"
    assert size == "2"
    assert _backends(pool) == parent  # the parent's sessions survived the child's exit
    assert wait_for(lambda: sorted(b for _, b in sessions()) == sorted(parent), timeout=10), sessions()
    pool.close()


def test_a_pool_open_before_it_was_protected_is_named_again(database_url, sessions, forget_protected):
    """psycopg_pool opens in its constructor by default: connections made before protect() carry no name,
    so nothing counting sessions by name would see them; protect() has them made again."""
    pool = ConnectionPool(database_url, min_size=2, max_size=2, timeout=3, open=True)
    try:
        pool.wait()
        assert sessions() == []  # made before forkpool named anything
        forkpool.protect(pool)
        assert wait_for(lambda: len(sessions()) == 2, timeout=10), sessions()
        with pool.connection() as conn:
            assert (
                conn.execute("SELECT current_setting('application_name')").fetchone()[0] == identity.application_name()
            )
    finally:
        pool.close()


def test_release_closes_the_pool_properly_and_leaves_it_openable(database_url, sessions, forget_protected):
    # Protected before it opens (a pool open before protect() is the test above: a connection being made
    # at that moment keeps no name until it comes back).
    pool = forkpool.protect(ConnectionPool(database_url, min_size=2, max_size=2, timeout=3, open=False))
    pool.open()
    pool.wait()
    assert wait_for(lambda: len(sessions()) == 2, timeout=10), sessions()
    protection.release_all()  # a master before it forks
    assert pool.closed
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    assert INTEGRATION.warm(
        pool, time.monotonic() + 10, eager=False
    )  # a new worker's start: the same object, open again
    assert len(sessions()) == 2 and not pool.closed
    pool.close()


def test_an_async_pool_is_released_in_its_own_idle_loop_and_opens_again(database_url, sessions, forget_protected):
    loop = asyncio.new_event_loop()  # alive, not running: a Celery main process's per-process loop, say
    pool = forkpool.protect(AsyncConnectionPool(database_url, min_size=2, max_size=2, timeout=3, open=False))
    loop.run_until_complete(pool.open(wait=True))
    assert wait_for(lambda: len(sessions()) == 2, timeout=10), sessions()
    protection.release_all()  # pool.close() ran in its loop
    assert pool.closed
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    loop.run_until_complete(pool.open(wait=True))  # the same object, openable again
    assert len(sessions()) == 2
    loop.run_until_complete(pool.close())
    loop.close()
