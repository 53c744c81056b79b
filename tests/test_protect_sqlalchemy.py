"""forkpool.protect(engine) for SQLAlchemy, under real Gunicorn (preload_app) and Celery prefork, with recycling.

Each case runs twice. Unprotected (an engine made at import time, as users
do): the workers share the master's session, and doctor flags it. Protected:
exactly processes x pool size sessions by identity, none held by a master,
none shared, none left when a child exits.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.conftest import wait_for
from tests.protect_support import APPS, doctor, http_load, start_celery_app, start_gunicorn_app, task_load
from tests.server_support import by_process

APP = APPS / "sqla"
WORKERS, POOL = 3, 2
CONCURRENCY = 2


def exact(sessions, suite_id, role: str, live: list[int], per_process: int) -> bool:
    held = by_process(sessions, suite_id)
    return held.keys() == {(role, pid) for pid in live} and all(len(b) == per_process for b in held.values())


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_sqlalchemy_under_gunicorn_preload(protected, servers, database_url, sessions, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0"}
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    server, url = start_gunicorn_app(servers, APP, conf, "web:app", env, tmp_path / "gunicorn.log", WORKERS)
    before = doctor(server.pid, database_url, "--pool-size", str(POOL))
    answers = http_load(url)
    if not protected:
        assert {"shared-socket", "master-connection"} <= {f["code"] for f in before["findings"]}
        assert _shared(answers) or [a for a in answers if a[1].startswith("error")], answers  # what users report
        return
    assert [f for f in before["findings"] if f["severity"] == "error"] == []
    assert [a for a in answers if a[1].startswith("error")] == [] and _shared(answers) == {}
    # Recycled workers (max_requests) closed their sessions; the replacements opened theirs.
    assert wait_for(lambda: exact(sessions, suite_id, "web", server.children(), POOL), timeout=15), \
        by_process(sessions, suite_id)
    after = doctor(server.pid, database_url, "--pool-size", str(POOL))
    assert [f for f in after["findings"] if f["severity"] == "error"] == []
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_sqlalchemy_under_celery_prefork(protected, servers, database_url, redis_url, sessions, suite_id, tmp_path):
    env = {**os.environ, "PROTECT": "1" if protected else "0", "REDIS_URL": redis_url}
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    worker = start_celery_app(servers, APP, "tasks", queue, env, tmp_path / "celery.log", CONCURRENCY)
    before = doctor(worker.pid, database_url, "--pool-size", str(POOL))
    answers = task_load(redis_url, queue, "tasks.backend", wait=45 if protected else 15)
    if not protected:
        assert {"shared-socket", "master-connection"} <= {f["code"] for f in before["findings"]}
        assert _shared(answers) or [a for a in answers if a[1].startswith("error")], answers
        return
    assert [f for f in before["findings"] if f["severity"] == "error"] == []
    assert [a for a in answers if a[1].startswith("error")] == [] and _shared(answers) == {}
    assert len({pid for pid, _ in answers}) > CONCURRENCY  # max_tasks_per_child recycled some
    assert wait_for(lambda: exact(sessions, suite_id, "worker", worker.children(), POOL), timeout=15), \
        by_process(sessions, suite_id)
    after = doctor(worker.pid, database_url, "--pool-size", str(POOL))
    assert [f for f in after["findings"] if f["severity"] == "error"] == []
    assert worker.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def _shared(answers: list[tuple[int, str]]) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = {}
    for pid, backend in answers:
        if not backend.startswith("error"):
            seen.setdefault(backend, set()).add(pid)
    return {b: pids for b, pids in seen.items() if len(pids) > 1}
