"""forkpool.protect(redis client), sync and asyncio, under real Gunicorn (preload_app) and Celery prefork.

Each case runs twice. Unprotected (a client made at import time, as users do):
the master keeps its connection and the workers hold the same socket (doctor
flags it); the asyncio client, which has no pid check, hands the master's
connection to every worker and the requests fail or share it. Protected:
exactly one CLIENT LIST entry per live worker by identity, none of a master,
none shared, none left when the server stops. The sync client's own fork
reset takes a lock a parent thread may hold: the fork tests show it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import pytest
import redis
import redis.asyncio

import forkpool
from forkpool import _protect as protection
from forkpool import identity
from harness.services import EmbeddedRedis
from tests.conftest import wait_for
from tests.protect_support import (
    APPS,
    doctor,
    endpoint_of,
    errors,
    exact,
    failures,
    held_by,
    http_load,
    in_child,
    recycled_http_load,
    redis_sessions,
    settled_doctor,
    shared,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)
from tests.server_support import by_process

APP = APPS / "redispy"
WORKERS, CONCURRENCY = 3, 2
VARIANTS = ["sync", "asyncio"]


@pytest.fixture(scope="module")
def broker_url():
    """Celery's broker on a Redis of its own: the app's client is then the only one talking to `redis_url`."""
    server = EmbeddedRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_redis_under_gunicorn_preload(variant, protected, servers, database_url, redis_url, suite_id, tmp_path):
    if variant == "asyncio":
        pytest.importorskip("uvicorn_worker", reason="the asyncio app runs under Gunicorn's uvicorn worker (dev extra)")
    env = {**os.environ, "PROTECT": "1" if protected else "0", "VARIANT": variant}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    module = "asgi:app" if variant == "asyncio" else "web:app"
    server, url = start_gunicorn_app(servers, APP, conf, module, env, tmp_path / "gunicorn.log", WORKERS)
    clients, at = redis_sessions(redis_url, suite_id), endpoint_of(redis_url)
    before = doctor(server.pid, database_url, redis_url=redis_url)
    answers = recycled_http_load(server, url) if protected else http_load(url)
    # asyncio: each worker's first command (lifespan startup), which reconnects when it fails
    first = http_load(url + "startup", requests=12) if variant == "asyncio" else []
    if not protected:
        # The master kept its connection; workers that have not used the client yet hold the same socket.
        assert held_by(before, "redis", at)[server.pid] == 1, before["connections"]
        assert shared(before, "redis", at) and "shared-socket" in {f["code"] for f in errors(before)}
        if variant == "asyncio":  # no pid check: the workers talk through the master's connection
            assert first and failures(first) == first, first
        return
    assert failures(first) == [], first
    assert errors(before) == [], before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert wait_for(lambda: exact(clients, suite_id, "web", server.children(), 1), timeout=15), (
        by_process(clients, suite_id),
        server.children(),
    )
    after = settled_doctor(server.pid, database_url, redis_url=redis_url)
    assert errors(after) == [] and held_by(after, "redis", at)[server.pid] == 0, after["findings"]
    # Steady again (no replacement booting) before the stop: a worker spawned as the master
    # handles SIGTERM misses it (Gunicorn's own race) and the stop would not be graceful.
    assert wait_for(lambda: exact(clients, suite_id, "web", server.children(), 1), timeout=15), (
        by_process(clients, suite_id),
        server.children(),
    )
    assert server.stop() == 0
    assert wait_for(lambda: clients() == [], timeout=10), clients()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_redis_under_celery_prefork(
    variant, protected, servers, database_url, redis_url, broker_url, suite_id, tmp_path
):
    env = {
        **os.environ,
        "PROTECT": "1" if protected else "0",
        "VARIANT": variant,
        "REDIS_URL": redis_url,
        "BROKER_URL": broker_url,
    }
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    clients, at = redis_sessions(redis_url, suite_id), endpoint_of(redis_url)
    before = doctor(worker.pid, database_url, redis_url=redis_url)
    answers = task_load(broker_url, queue, "tasks.backend", wait=45 if protected else 20)
    # asyncio: each child's first command (worker_process_init), which reconnects when it fails
    first = task_load(broker_url, queue, "tasks.first", count=6) if variant == "asyncio" else []
    if not protected:
        assert held_by(before, "redis", at)[worker.pid] == 1, before["connections"]
        assert shared(before, "redis", at) and "shared-socket" in {f["code"] for f in errors(before)}
        if variant == "asyncio":
            assert first and failures(first) == first, first
        return
    assert failures(first) == [], first
    assert errors(before) == [], before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert len({pid for pid, _ in answers}) > CONCURRENCY  # max_tasks_per_child recycled some
    assert wait_for(lambda: exact(clients, suite_id, "worker", worker.children(), 1), timeout=15), (
        by_process(clients, suite_id),
        worker.children(),
    )
    after = settled_doctor(worker.pid, database_url, redis_url=redis_url)
    assert errors(after) == [] and held_by(after, "redis", at)[worker.pid] == 0, after["findings"]
    # Steady again (no replacement starting) before the stop, which must be graceful.
    assert wait_for(lambda: exact(clients, suite_id, "worker", worker.children(), 1), timeout=15), (
        by_process(clients, suite_id),
        worker.children(),
    )
    assert worker.stop() == 0
    assert wait_for(lambda: clients() == [], timeout=10), clients()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_a_sync_child_never_waits_for_the_pool_lock_a_parent_thread_held(
    protected, redis_url, suite_id, forget_protected
):
    if not protected and int(redis.__version__.split(".")[0]) < 6:
        pytest.skip(f"redis-py {redis.__version__} makes a new pool lock in its own fork reset (before 6)")
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    if protected:
        forkpool.protect(client)
    parent_id = client.client_id()
    held, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with client.connection_pool._lock:  # a parent thread inside the pool at fork time
            held.set()
            done.wait()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait()
    try:

        def child() -> str:
            # redis-py's fork reset takes this lock on the first command: no thread here will release it.
            if not client.connection_pool._lock.acquire(blocking=False):
                return "lock held"
            client.connection_pool._lock.release()
            return f"{client.client_id()} {client.client_getname()}"

        report = in_child(child)
    finally:
        done.set()
        holder.join()
    if not protected:
        assert report == "lock held"  # the child's first command would wait forever (reset, get_connection)
    else:
        child_id, name = report.split()
        assert int(child_id) != parent_id and name.startswith(f"{suite_id}:") and not name.endswith(f":{os.getpid()}")
        assert client.client_getname() == identity.application_name()
    assert client.client_id() == parent_id  # the parent's connection survived the child
    client.close()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_an_asyncio_child_gets_its_own_connection_and_the_parent_keeps_its(
    protected, redis_url, suite_id, forget_protected
):
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    if protected:
        forkpool.protect(client)
    loop = asyncio.new_event_loop()
    parent_id = loop.run_until_complete(client.client_id())

    def child() -> str:
        return str(asyncio.new_event_loop().run_until_complete(asyncio.wait_for(client.client_id(), 5)))

    report = in_child(child)
    if not protected:
        assert report == str(parent_id) or report.startswith("error"), report  # the parent's connection
    else:
        assert report.isdigit() and int(report) != parent_id, report
        assert loop.run_until_complete(client.client_id()) == parent_id
    loop.run_until_complete(client.aclose())
    loop.close()


def test_a_released_client_ends_its_sessions_and_reconnects_on_use(redis_url, suite_id, forget_protected):
    clients = redis_sessions(redis_url, suite_id)
    sync_client = forkpool.protect(redis.Redis.from_url(redis_url))
    async_client = forkpool.protect(redis.asyncio.Redis.from_url(redis_url))
    loop = asyncio.new_event_loop()
    sync_client.ping()
    loop.run_until_complete(async_client.ping())
    assert [name for name, _ in clients()] == [identity.application_name()] * 2
    protection.release_all()  # what a master does before it forks
    assert wait_for(lambda: clients() == [], timeout=10), clients()
    assert sync_client.ping() and loop.run_until_complete(async_client.ping())
    assert len(clients()) == 2
    sync_client.close()
    loop.run_until_complete(async_client.aclose())
    loop.close()
