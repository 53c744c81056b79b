"""Gevent: Gunicorn's gevent worker and Celery's gevent pool, monkey-patched, on forkpool's pool (and Celery's
threads and solo pools, which share the one-process shape).

Real servers (tests/gevent_app/): each check runs inside the serving process
(probe.py) and answers facts, no timing. In every case the server holds exactly
processes x DB_POOL_SIZE sessions, a greenlet (or thread) queued for a connection
is woken by a return, a checkout past its timeout raises PoolTimeout, a broken
connection is replaced by the maintainer with nobody asking, and the stop ends
every session.

Gunicorn's gevent worker patches in the worker after ``post_fork``, which opened
the pool: the pool's own locks and its maintainer thread are real ones there,
and a waiter's lock (made at checkout) is gevent's. Celery patches before
anything is imported (``-P gevent``): there everything is gevent's, the
maintainer a greenlet. Celery's solo pool sends ``worker_process_init`` in the
main process; its threads and gevent pools send neither it nor
``worker_process_shutdown`` (docs fork-facts): their pools open on first use.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.protect_support import exact, failures, http_load, start_gunicorn_app
from tests.server_support import Server, by_process, get

pytest.importorskip("gevent", reason="gevent is not installed")

APP = Path(__file__).with_name("gevent_app")
WORKERS = 2
POOL = 2


@pytest.fixture
def app_env(suite_id: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "WORKER_", "PROMETHEUS_"))}
    env.update(DB_POOL_SIZE=str(POOL), PYTHONUNBUFFERED="1")
    return env


def answer_of(body: bytes) -> dict:
    _, _, rest = body.decode().partition(" ")
    return json.loads(rest)


def assert_probes(exhausted: dict, refilled: dict, patched: bool) -> None:
    assert exhausted["timed_out"] == "timeout", exhausted
    assert exhausted["queued"] == 1 and exhausted["woken"] == "served", exhausted
    assert exhausted["patched"] is patched, exhausted
    assert refilled["size"] == refilled["min_size"] == POOL and refilled["reopened"] >= 1, refilled


def test_gunicorn_gevent_worker(servers, app_env, tmp_path, sessions, suite_id):
    server, url = start_gunicorn_app(
        servers, APP, "gunicorn.conf.py", "web:app", app_env, tmp_path / "gunicorn.log", WORKERS
    )

    def ceiling() -> bool:
        return exact(sessions, suite_id, "web", server.children(), POOL)

    assert wait_for(ceiling, timeout=15), (by_process(sessions, suite_id), server.children())

    answers = http_load(url + "hold", requests=40, threads=8)
    assert failures(answers) == [] and {pid for pid, _ in answers} <= set(server.children()), answers

    status, body = get(url + "exhaust")
    assert status == 200, body
    exhausted = answer_of(body)
    status, body = get(url + "refill")
    assert status == 200, body
    refilled = answer_of(body)
    assert_probes(exhausted, refilled, patched=True)
    # Patched after post_fork opened the pool: its maintainer is a real thread there.
    assert refilled["maintainers"] == ["forkpool-maintainer[default]"], refilled

    assert wait_for(ceiling, timeout=15), (by_process(sessions, suite_id), server.children())
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


@pytest.mark.parametrize(("pool", "concurrency"), [("gevent", 8), ("threads", 4), ("solo", 1)])
def test_celery_one_process_pools(pool, concurrency, servers, app_env, redis_url, tmp_path, sessions, suite_id):
    queue = f"{suite_id}-{pool}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "tasks",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        queue,
        "--hostname",
        f"{queue}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    env = {**app_env, "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url}
    if pool == "threads":  # more threads than connections, on purpose (a thread queues): the check warns
        env["DB_BUDGET_CHECK"] = "warn"
    worker = Server(argv, APP, env, tmp_path / "celery.log")
    servers.append(worker)
    worker.wait_until(lambda: " ready." in worker.log(), "celery ready")

    held = run_tasks(redis_url, queue, "tasks.hold", 16)
    assert {answer["pid"] for answer in held} == {worker.pid}, held
    (exhausted,) = run_tasks(redis_url, queue, "tasks.exhaust", 1)
    (refilled,) = run_tasks(redis_url, queue, "tasks.refill", 1)
    assert_probes(exhausted, refilled, patched=pool == "gevent")

    # One process serves every task: the ceiling is 1 x DB_POOL_SIZE, all of it in the worker.
    def ceiling() -> bool:
        found = by_process(sessions, suite_id)
        return set(found) == {("worker", worker.pid)} and sum(map(len, found.values())) == POOL

    # Named as the worker it is (the tasks run in this process), not a prefork parent's "worker-main".
    assert wait_for(ceiling, timeout=15), by_process(sessions, suite_id)
    # The start-up check counted one process, whose threads share its pool (greenlets queue on it).
    if pool == "threads":
        assert f"forkpool: worker: {concurrency} threads per worker, but forkpool pool 'default'" in worker.log()
    else:
        assert "forkpool: worker: 1 processes x pool 2" in worker.log(), worker.log()[-3000:]
    assert worker.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def run_tasks(redis_url: str, queue: str, task: str, count: int, wait: float = 45.0) -> list[dict]:
    """Send `count` tasks and return their answers; a task not done within `wait` fails the test."""
    from celery import Celery

    producer = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    deadline = time.monotonic() + wait
    try:
        results = [producer.send_task(task, queue=queue) for _ in range(count)]
        return [result.get(timeout=max(deadline - time.monotonic(), 0.1)) for result in results]
    finally:
        producer.close()
