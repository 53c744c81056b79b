"""forkpool.protect() for asyncpg pools and SQLAlchemy AsyncEngines under real Gunicorn (uvicorn workers) and Celery.

The app (tests/protect_apps/aio_pg/asgi.py) has an asyncpg pool opened at
import (``pool``), one made at import and first used in a worker (``lazy``),
or an AsyncEngine on asyncpg (``engine``) or psycopg (``engine_psycopg``).

preload_app imports the app in the master, which uses its pool or engine
there (an ``asyncio.run()`` at import). Unprotected: the master keeps its
sessions, every worker inherits the sockets, and requests fail (the pool's
loop is the master's, gone) or two workers answer through one backend;
doctor flags shared sockets and a master holding connections. Protected:
every request succeeds, the master holds none, no socket is shared, the
sessions by identity are exactly the workers' pools (2 each), also after
max_requests recycled some, and none is left when the server stops. The
same for an asyncpg pool under Celery prefork (tests/protect_apps/aio_pg/tasks.py:
one event loop per process, the pool opened at import in the main process).
"""

from __future__ import annotations

import os
import uuid

import pytest

pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install asyncpg")
pytest.importorskip("uvicorn_worker", reason="the ASGI apps run under Gunicorn's uvicorn worker (dev extra)")

from tests.protect_support import (
    APPS,
    doctor,
    errors,
    failures,
    held_by,
    http_load,
    masters,
    protected_run_ends_clean,
    recycled_http_load,
    shared,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)

APP = APPS / "aio_pg"
WORKERS, POOL, CONCURRENCY = 3, 2, 2


@pytest.mark.parametrize("variant", ["pool", "engine"])
def test_unprotected_asyncpg_under_gunicorn_preload_fails(variant, servers, database_url, tmp_path):
    if variant == "engine":
        pytest.importorskip("sqlalchemy.ext.asyncio", reason="SQLAlchemy is not installed")
    env = {**os.environ, "PROTECT": "0", "VARIANT": variant}
    server, url = start_gunicorn_app(
        servers, APP, "gunicorn_unprotected.conf.py", "asgi:app", env, tmp_path / "gunicorn.log", WORKERS
    )
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    answers = http_load(url, requests=12)
    assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
    assert shared(before, "postgresql") and all(held_by(before, "postgresql")[m] >= 1 for m in masters(before))
    assert failures(answers) or shared_backends(answers), answers  # what users see
    server.stop(timeout=5)  # workers stuck on a session another process used do not stop gracefully


@pytest.mark.parametrize("variant", ["pool", "lazy", "engine", "engine_psycopg"])
def test_protected_asyncpg_under_gunicorn_preload(variant, servers, database_url, sessions, suite_id, tmp_path):
    if variant.startswith("engine"):
        pytest.importorskip("sqlalchemy.ext.asyncio", reason="SQLAlchemy is not installed")
    env = {**os.environ, "PROTECT": "1", "VARIANT": variant}
    server, url = start_gunicorn_app(
        servers, APP, "gunicorn_protected.conf.py", "asgi:app", env, tmp_path / "gunicorn.log", WORKERS
    )
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert errors(before) == [] and held_by(before, "postgresql")[server.pid] == 0, before["findings"]
    # Before the load: /startup counts toward max_requests, and a worker leaving at its limit
    # resets a request now and then (uvicorn, see http_load). The replacements' lifespans are
    # checked by the exact session count at the end.
    first = http_load(url + "startup", requests=6, retry_reset=True)
    assert all(body == "open" for _, body in first), first
    answers = recycled_http_load(server, url)
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    protected_run_ends_clean(server, "asgi", sessions, suite_id, database_url, POOL)


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_asyncpg_under_celery_prefork(protected, servers, database_url, redis_url, sessions, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    before = doctor(worker.pid, database_url, "--pool-size", str(POOL))
    answers = task_load(redis_url, queue, "tasks.backend", count=16 if protected else 8, wait=45 if protected else 15)
    if not protected:
        assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
        assert failures(answers) or shared_backends(answers), answers
        worker.stop(timeout=5)
        return
    assert errors(before) == [] and held_by(before, "postgresql")[worker.pid] == 0, before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert len({pid for pid, _ in answers}) > CONCURRENCY  # max_tasks_per_child recycled some
    protected_run_ends_clean(worker, "worker", sessions, suite_id, database_url, POOL)
