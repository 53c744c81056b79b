"""forkpool.protect(engine) for SQLAlchemy, under real Gunicorn (preload_app) and Celery prefork, with recycling.

Each case runs twice. Unprotected (an engine made at import time, as users
do): the workers share the master's session, and doctor flags it. Protected:
exactly processes x pool size sessions by identity, none held by a master,
none shared, none left when a child exits. The fork test shows a child of a
busy protected process on sessions of its own, and the parent's surviving it
(and the child's `engine.dispose()`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

pytest.importorskip("sqlalchemy", reason="forkpool.protect(engine) needs SQLAlchemy (forkpool[sqlalchemy])")
from sqlalchemy import create_engine, text

import forkpool
from forkpool import _protect as protection
from forkpool import identity
from tests.conftest import wait_for
from tests.protect_support import (
    APPS,
    doctor,
    errors,
    failures,
    http_load,
    in_child,
    protected_run_ends_clean,
    recycled_http_load,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)

APP = APPS / "sqla"
WORKERS, POOL = 3, 2
CONCURRENCY = 2
# Unprotected runs leave a worker blocked for good in libpq's poll(), waiting for a reply a sibling
# read off their shared socket (seen in /proc/<pid>/wchan: poll_schedule_timeout). A graceful stop
# would wait for it (Gunicorn's graceful_timeout, Celery's warm shutdown) until Server.stop's
# 20 s ran out; a healthy worker stops within this, and the rest is SIGKILLed.
WEDGED_STOP_S = 3


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_sqlalchemy_under_gunicorn_preload(protected, servers, database_url, sessions, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0"}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    server, url = start_gunicorn_app(servers, APP, conf, "web:app", env, tmp_path / "gunicorn.log", WORKERS)
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    answers = recycled_http_load(server, url) if protected else http_load(url, requests=24)
    if not protected:
        assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
        assert shared_backends(answers) or failures(answers), answers  # what users report
        server.stop(timeout=WEDGED_STOP_S)
        return
    assert errors(before) == [], before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    protected_run_ends_clean(server, "web", sessions, suite_id, database_url, POOL)


@pytest.mark.parametrize(
    "protected",
    # The unprotected contrast under Celery runs on demand (-m slow): the Gunicorn contrast shows the same
    # failure in the default run, within its 15 minutes.
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["unprotected", "protected"],
)
def test_sqlalchemy_under_celery_prefork(protected, servers, database_url, redis_url, sessions, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    before = doctor(worker.pid, database_url, "--pool-size", str(POOL))
    answers = task_load(redis_url, queue, "tasks.backend", count=16 if protected else 8, wait=45 if protected else 10)
    if not protected:
        assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
        assert shared_backends(answers) or failures(answers), answers
        worker.stop(timeout=WEDGED_STOP_S)
        return
    assert errors(before) == [], before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    assert len({pid for pid, _ in answers}) > CONCURRENCY  # max_tasks_per_child recycled some
    protected_run_ends_clean(worker, "worker", sessions, suite_id, database_url, POOL)


def _backends(engine) -> set[int]:
    """Every pooled connection's backend pid: all of them checked out at once, so each is a different one."""
    held = [engine.connect() for _ in range(engine.pool.size())]
    try:
        return {conn.execute(text("SELECT pg_backend_pid()")).scalar() for conn in held}
    finally:
        for conn in held:
            conn.close()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_a_child_that_disposes_the_engine_leaves_a_busy_parents_sessions_alive(
    protected, admin, database_url, sessions, suite_id, forget_protected
):
    """A fork while a parent thread is mid-query; the child uses the engine, then calls `engine.dispose()`,
    the cleanup users reach for (without close=False). Unprotected, that ends the parent's idle session."""
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg2://", 1), pool_size=2, max_overflow=0, pool_timeout=3
    )
    if protected:
        forkpool.protect(engine, eager=True)
    parent = _backends(engine)
    busy, forked = threading.Event(), threading.Event()
    found: list[int] = []

    def query() -> None:  # holds one pooled session through the fork; the other stays idle in the pool
        with engine.connect() as conn:
            busy.set()
            found.append(conn.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.3)")).scalar())
            forked.wait(10)

    thread = threading.Thread(target=query)
    thread.start()
    busy.wait(10)
    time.sleep(0.05)  # the thread is inside libpq now, the GIL released

    def child() -> str:
        protection.warm_all(time.monotonic() + 10)  # what post_fork / worker_process_init do
        with engine.connect() as conn:
            backend, name = conn.execute(text("SELECT pg_backend_pid(), current_setting('application_name')")).one()
        idle = engine.pool.checkedin()
        engine.dispose()
        return f"{backend} {name} {os.getpid()} {idle}"

    try:
        report = in_child(child)
    finally:
        forked.set()
        thread.join()
    assert not report.startswith("error"), report
    backend, name, child_pid, idle = report.split(" ")  # unprotected, the name is ""
    assert found and found[0] in parent  # the parent's query finished on its own session
    if not protected:  # the child talked through the parent's idle session, and its dispose() ended it
        assert int(backend) in parent - set(found), (report, parent)
        assert wait_for(
            lambda: admin("SELECT pid FROM pg_stat_activity WHERE pid = %s", int(backend)) == [], timeout=10
        )
        with pytest.raises(DBAPIError):  # what the parent's next request meets
            _backends(engine)
        engine.dispose()
        return
    assert int(backend) not in parent, (report, parent)
    assert name.startswith(f"{suite_id}:") and name == identity.application_name(int(child_pid)), report
    assert idle == "2"  # its own pool, opened whole at start
    assert _backends(engine) == parent  # the parent's sessions survived the child and its dispose()
    assert wait_for(lambda: sorted(b for _, b in sessions()) == sorted(parent), timeout=10), sessions()
    engine.dispose()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
