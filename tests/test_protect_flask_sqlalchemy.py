"""forkpool.protect(db) for Flask-SQLAlchemy under real Gunicorn (preload_app) and Celery prefork, with recycling.

The app (tests/protect_apps/flask_sqla) makes its ``db`` at import, with two
engines in Flask-SQLAlchemy's engine map (the default, pool 2, and a bind,
pool 1), and uses both there: in the master (Gunicorn's arbiter under
preload_app, Celery's main process, which imports it through tasks.py, Flask's
"Background Tasks with Celery" pattern). Unprotected, the workers inherit the
master's sessions, and doctor flags shared sockets and a master holding
connections. Protected (``forkpool.protect(db)``, forkpool's Gunicorn hooks or
``wire_celery``): every worker holds exactly both pools' sessions, the master
none, none shared, none left when a worker is recycled or the server stops.
"""

from __future__ import annotations

import os
import uuid

import pytest

pytest.importorskip("flask_sqlalchemy", reason="the app needs Flask-SQLAlchemy (dev extra)")

from tests.conftest import wait_for
from tests.protect_support import (
    APPS,
    backends_by_worker,
    doctor,
    errors,
    exact,
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
from tests.server_support import by_process

APP = APPS / "flask_sqla"
WORKERS, CONCURRENCY = 3, 2
POOL = 2  # the default engine's pool_size: the sessions a worker's answers come from
PER_PROCESS = POOL + 1  # and the "reports" bind's
# Unprotected, a worker stays blocked in libpq for a reply a sibling read off their shared socket
# (a task that never ends, a request never answered) and never stops gracefully: a healthy one
# stops within this, the rest is SIGKILLed (as in test_protect_sqlalchemy).
WEDGED_STOP_S = 3


def assert_unprotected_shares(before: dict, answers: list[tuple[int, str]]) -> None:
    """Both engines' sessions of the master (one each, used at import) in every worker too, and what users see."""
    assert {"shared-socket", "master-connection"} <= {f["code"] for f in errors(before)}, before["findings"]
    assert len(shared(before, "postgresql")) >= 2, before["connections"]
    assert masters(before) and all(held_by(before, "postgresql")[m] >= 2 for m in masters(before)), before[
        "connections"
    ]
    assert shared_backends(answers) or failures(answers), answers  # what users report


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_flask_sqlalchemy_under_gunicorn_preload(protected, servers, database_url, sessions, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0"}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    server, url = start_gunicorn_app(servers, APP, conf, "web:app", env, tmp_path / "gunicorn.log", WORKERS)
    before = doctor(server.pid, database_url, "--pool-size", str(PER_PROCESS))
    answers = recycled_http_load(server, url) if protected else http_load(url, requests=24)
    if not protected:
        assert_unprotected_shares(before, answers)
        server.stop(timeout=WEDGED_STOP_S)
        return
    assert errors(before) == [], before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    protected_run_ends_clean(server, "web", sessions, suite_id, database_url, PER_PROCESS)


@pytest.mark.parametrize(
    "protected",
    # The unprotected contrast under Celery runs on demand (-m slow): the Gunicorn contrast shows the same
    # failure in the default run, within its 15 minutes.
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["unprotected", "protected"],
)
def test_flask_sqlalchemy_under_celery_prefork(
    protected, servers, database_url, redis_url, sessions, suite_id, tmp_path
):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks:celery_app", queue, env, tmp_path / "celery.log", CONCURRENCY)
    if protected:  # each child opened both engines' pools at start (worker_process_init); the main process none
        assert wait_for(lambda: exact(sessions, suite_id, "worker", worker.children(), PER_PROCESS), timeout=15), (
            worker.children(),
            by_process(sessions, suite_id),
        )
    at_start = by_process(sessions, suite_id)
    before = doctor(worker.pid, database_url, "--pool-size", str(PER_PROCESS))
    answers = task_load(redis_url, queue, "tasks.backend", count=16 if protected else 8, wait=45 if protected else 10)
    if not protected:
        assert_unprotected_shares(before, answers)
        worker.stop(timeout=WEDGED_STOP_S)
        return
    assert errors(before) == [], before["findings"]
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    # Each child's tasks ran on the default engine's sessions its pool opened at start, kept across tasks.
    per_child = backends_by_worker(answers)
    for (_, pid), backends in at_start.items():
        assert per_child.get(pid, set()) <= {str(b) for b in backends}, (pid, per_child.get(pid), backends)
    assert all(len(b) <= POOL for b in per_child.values()), per_child
    assert len(per_child) > CONCURRENCY  # max_tasks_per_child recycled some
    protected_run_ends_clean(worker, "worker", sessions, suite_id, database_url, PER_PROCESS)
