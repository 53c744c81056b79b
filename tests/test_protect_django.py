""" "forkpool.django" in INSTALLED_APPS, under real Gunicorn (preload_app) and Celery prefork, with recycling.

The project is tests/protect_apps/django_site: one table, a view and a task
answering "<worker pid> <backend pid>", work at import (Gunicorn master) and in
a worker_init receiver (Celery main process). Each case runs twice, the only
difference being the app in INSTALLED_APPS (and forkpool's hooks wired).
Unprotected, the failure users report: workers share the master's sessions
(errors, timeouts), Celery's fixup closes the pool at every task. Protected:
exactly processes x pool size sessions by identity, none held by a master,
none shared, each process's tasks on its own pool's sessions only, none left
when a child exits or the server stops.

Classic connections under Celery: its fixup os.close()s the descriptor each
child inherits, so no socket stays shared; what remains unprotected is the
main process's session, held for its life (doctor: master-connection).
Celery closes classic connections around every task unless the project sets
CELERY_DB_REUSE_MAX: protected, a child then holds none between tasks
("classic"), or one, opened at start and kept ("classic-reused").
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

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
    protected_run_ends_clean,
    recycled_http_load,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)
from tests.server_support import by_process

pytest.importorskip("django", reason="forkpool.django needs Django (pip install 'forkpool[django]')")
NEEDS_POOL = pytest.mark.skipif(
    importlib.util.find_spec("psycopg_pool") is None or importlib.util.find_spec("psycopg") is None,
    reason="Django's native pool needs psycopg 3 and psycopg_pool (psycopg[pool])",
)
DATABASES = [pytest.param("pool", marks=NEEDS_POOL), "classic"]

SITE = APPS / "django_site"
WORKERS, POOL, CONCURRENCY = 3, 2, 2
SIZE = {"pool": POOL, "classic": 1}  # server sessions per process: the pool's, or one persistent connection
# Under Celery, its Django fixup closes every connection around each task unless the project sets
# CELERY_DB_REUSE_MAX (forkpool sets the fixup's for pooled aliases: the pool stays, only its connections go
# back). So a child holds its pool's sessions, and a classic connection only with the project's setting.
CELERY_DATABASES = [pytest.param("pool", marks=NEEDS_POOL), "classic", "classic-reused"]
CELERY_SIZE = {"pool": POOL, "classic": 0, "classic-reused": 1}
REUSE_MAX = "100"  # the project's CELERY_DB_REUSE_MAX: more tasks than a child runs (max_tasks_per_child)
SETTINGS = "probe_site.settings"
FORK_PROGRAM = Path(__file__).with_name("django_fork_program.py")
FORKS = 20


@pytest.fixture
def probe_table(admin) -> None:
    admin(
        "CREATE TABLE IF NOT EXISTS probe_hit (id bigserial PRIMARY KEY, worker int NOT NULL, "
        "backend int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
    )


def site_env(protected: bool, db: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PROTECT": "1" if protected else "0",
        "DJANGO_DB": db,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        **extra,
    }


@pytest.mark.parametrize("db", DATABASES)
@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_django_under_gunicorn_preload(protected, db, probe_table, servers, database_url, sessions, suite_id, tmp_path):
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    server, url = start_gunicorn_app(
        servers, SITE, conf, "probe_site.wsgi:application", site_env(protected, db), tmp_path / "gunicorn.log", WORKERS
    )
    if protected:  # every worker opened its own at start; the master holds none
        assert wait_for(lambda: exact(sessions, suite_id, "web", server.children(), SIZE[db]), timeout=15), (
            server.children(),
            by_process(sessions, suite_id),
        )
    before = doctor(server.pid, database_url, "--pool-size", str(SIZE[db]))
    answers = recycled_http_load(server, url) if protected else http_load(url)
    if not protected:
        assert {"shared-socket", "master-connection"} <= {f["code"] for f in before["findings"]}, before["findings"]
        assert shared_backends(answers) or failures(answers), answers  # what users report
        server.stop(timeout=5)  # a worker may wait forever for an answer another process read: no graceful wait
        return
    assert errors(before) == []
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    # No churn: every worker answered from its own pool's sessions (or its one connection).
    assert all(len(b) <= SIZE[db] for b in backends_by_worker(answers).values()), backends_by_worker(answers)
    protected_run_ends_clean(server, "web", sessions, suite_id, database_url, SIZE[db])


@pytest.mark.parametrize("db", CELERY_DATABASES)
@pytest.mark.parametrize(
    "protected",
    # The unprotected contrast under Celery runs on demand (-m slow): the Gunicorn contrast shows the same
    # failure in the default run, within its 15 minutes.
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["unprotected", "protected"],
)
def test_django_under_celery_prefork(
    protected, db, probe_table, servers, database_url, redis_url, sessions, suite_id, tmp_path
):
    size = CELERY_SIZE[db]
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    env = site_env(
        protected,
        db.partition("-")[0],
        REDIS_URL=redis_url,
        CELERY_DB_REUSE_MAX=REUSE_MAX if db == "classic-reused" else "",
    )
    worker = start_celery_app(servers, SITE, "probe_site", queue, env, tmp_path / "celery.log", CONCURRENCY)
    if protected:  # each child's pool (connection) opened at start, after the fixup's receiver (which would close it)
        assert wait_for(lambda: exact(sessions, suite_id, "worker", worker.children(), size), timeout=15), (
            worker.children(),
            by_process(sessions, suite_id),
        )
    at_start = by_process(sessions, suite_id)
    before = doctor(worker.pid, database_url, "--pool-size", str(size))
    answers = task_load(redis_url, queue, "probe.tasks.backend", wait=45 if protected else 20)
    found = fixup_findings(worker.log())
    per_child = backends_by_worker(answers)
    if not protected:
        # The main process holds what its worker_init receiver opened, for its whole life, and forks with it.
        assert "master-connection" in {f["code"] for f in before["findings"]}, before["findings"]
        assert held_by(before, "postgresql")[worker.pid] >= 1, before["connections"]
        assert any(f["connections"] or f["pools"] for f in found), found  # the fixup os.close()s and closes those
        if db == "pool":  # celery#10554: the fixup closes the pool around every task: new sessions for each task
            assert failures(answers) or any(len(b) > POOL for b in per_child.values()), per_child
        return
    assert errors(before) == [] and held_by(before, "postgresql")[worker.pid] == 0, before["findings"]
    assert found and all(f == {"connections": [], "pools": []} for f in found), found
    assert failures(answers) == [] and shared_backends(answers) == {}, answers
    # One pool (connection) per child, kept across tasks: the first children's tasks ran on the sessions opened
    # at start. "classic": Celery closes the connection around every task, so a child holds none between tasks.
    if size:
        assert all(len(b) <= size for b in per_child.values()), per_child
        for (_, pid), backends in at_start.items():
            assert per_child.get(pid, set()) <= {str(b) for b in backends}, (pid, per_child.get(pid), backends)
    else:  # none between tasks counts only if the tasks' sessions carry the identity the count goes by
        names = task_load(redis_url, queue, "probe.tasks.identity", count=2)
        assert names and all(name == f"{suite_id}:worker:{pid}" for pid, name in names), names
    assert len(per_child) > CONCURRENCY  # max_tasks_per_child recycled some
    protected_run_ends_clean(worker, "worker", sessions, suite_id, database_url, size)


def fixup_findings(log: str) -> list[dict]:
    """What each child's receiver saw just before the fixup's worker_process_init receiver (see probe_site/celery.py)."""
    return [
        {"connections": ast.literal_eval(conns), "pools": ast.literal_eval(pools)}
        for conns, pools in re.findall(r"fixup-will-find pid=\d+ connections=(\[.*?\]) pools=(\[.*?\])", log)
    ]


@pytest.mark.parametrize("db", DATABASES)
def test_forks_of_a_busy_django_process_keep_the_parents_sessions(db, probe_table, database_url, sessions, suite_id):
    """Forks while a thread queries (and, pooled, checks out and returns): children inherit nothing usable, never
    hang on a lock, open their own; the parent's sessions stay the same and alive; none outlives its child."""
    env = site_env(True, db, PYTHONPATH=os.pathsep.join([str(SITE), str(Path(__file__).resolve().parents[1])]))
    result = subprocess.run(
        [sys.executable, str(FORK_PROGRAM), str(FORKS)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert "error" not in report, (report, result.stderr[-2000:])
    assert report["statuses"] == [0] * FORKS, report["statuses"]  # none hung ("hung"), none failed
    assert report["trouble"] == [] and report["busy_ops"] > 0
    assert len(report["before"]) == 2 and report["after"] == report["before"] and report["main_backend_alive"]
    inherited = 2 if db == "pool" else 1  # the pool and the main thread's connection / the connection
    # and the busy thread's connection, held through the fork (pooled: when it had one checked out)
    busy = {0, 1} if db == "pool" else {1}
    for child in report["children"]:
        assert (child["pools"], child["connection"]) == ([], False), child
        assert child["graveyard"] - inherited in busy, child
        assert child["backend"] not in report["before"], child
        assert child["name"] == f"{suite_id}:app:{child['pid']}", child  # identity made in the child
    assert len(report["children"]) == FORKS
    assert report["children_sessions"] == []  # each child closed its own at exit, the parent still running
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


WORKER_INIT_PROGRAM = """
import json
from celery import signals
from celery.fixups.django import DjangoFixup
from probe_site.celery import app
from forkpool.django import celery_fixup

fixup = next(f for f in app._fixups if isinstance(f, DjangoFixup))
fixup.on_import_modules()  # what a worker does first: django.setup(), so forkpool.django's ready()


class Worker:  # what the receivers read of a WorkController
    app, pool_cls, concurrency = app, "prefork", 1


signals.worker_init.send(sender=Worker())
print(json.dumps({"db_reuse_max": fixup.worker_fixup.db_reuse_max, "boundaries": celery_fixup._state["boundaries"]}))
"""


@NEEDS_POOL
@pytest.mark.parametrize("reuse_max", [None, "5"], ids=["celery-default", "project-setting"])
def test_celery_task_boundaries_leave_a_project_db_reuse_max_alone(reuse_max, probe_table, redis_url, suite_id):
    """Celery's default closes pools at every task: forkpool turns that off through the fixup's db_reuse_max and
    closes connections itself (never the pool). A project's own CELERY_DB_REUSE_MAX is kept as it is."""
    env = site_env(True, "pool", REDIS_URL=redis_url, PYTHONPATH=str(SITE), CELERY_DB_REUSE_MAX=reuse_max or "")
    result = subprocess.run(
        [sys.executable, "-c", WORKER_INIT_PROGRAM], cwd=SITE, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    if reuse_max is None:
        assert report == {"db_reuse_max": sys.maxsize, "boundaries": True}
    else:
        assert report == {"db_reuse_max": 5, "boundaries": False}


REFUSED_PROGRAM = """
import copy, json

import django
from django.conf import settings

settings.configure(DATABASES={
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "HOST": "127.0.0.1", "PORT": "5"},
    "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "bad": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "HOST": "127.0.0.1", "PORT": "abc"},
})
django.setup()
from django.db import connections

before = copy.deepcopy({alias: connections[alias].settings_dict for alias in connections})
try:
    import forkpool
    from forkpool.django.databases import DATABASES, INTEGRATION

    forkpool.protect(DATABASES, INTEGRATION)
    outcome = "protected"
except forkpool.ConfigError as exc:
    outcome = str(exc)
after = {alias: connections[alias].settings_dict for alias in connections}
print(json.dumps({"outcome": outcome, "unchanged": before == after, "keys": sorted(DATABASES.name_keys)}))
"""


def test_a_refused_protect_leaves_databases_as_they_were():
    """A PORT that is not a number refuses protect() in one line, before any alias's OPTIONS is written."""
    pytest.importorskip("django")
    result = subprocess.run(
        [sys.executable, "-c", REFUSED_PROGRAM], capture_output=True, text=True, timeout=60, env={**os.environ}
    )
    assert result.returncode == 0 and result.stdout, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["outcome"] != "protected" and "\n" not in report["outcome"], report
    assert report["unchanged"] and report["keys"] == [], report
