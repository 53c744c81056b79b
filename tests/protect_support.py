"""Runs for the protection tests: a real Gunicorn or Celery with an app, load, and what is seen from outside.

Every app under tests/protect_apps/ answers "<worker pid> <backend pid>" (or
"<worker pid> error <kind>") for each request or task, so a run tells whether
two processes ever talked through one server session. Doctor looks at the
sockets; the server's sessions are counted by identity.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness._procs import free_port
from tests.server_support import Server, get, gunicorn_argv

APPS = Path(__file__).with_name("protect_apps")


def doctor(master: int, database_url: str, *extra: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "forkpool", "doctor", "--json", "--pid", str(master),
                             "--dsn", database_url, *extra], capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def start_gunicorn_app(servers: list[Server], app_dir: Path, conf: str, app: str, env: dict[str, str],
                       log: Path, workers: int = 3) -> tuple[Server, str]:
    port = free_port()
    server = Server(gunicorn_argv(app, port, workers, "--config", conf), app_dir, env, log)
    servers.append(server)
    url = f"http://127.0.0.1:{port}/"
    server.wait_until(lambda: len(server.children()) == workers and get(url)[0] in (200, 500), "gunicorn ready")
    return server, url


def http_load(url: str, requests: int = 60, threads: int = 6) -> list[tuple[int, str]]:
    def one(_: int) -> tuple[int, str]:
        status, body = get(url)
        worker, _, rest = body.decode().partition(" ")
        return int(worker or 0), rest if status in (200, 500) else f"error HTTP {status}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(requests)))


def start_celery_app(servers: list[Server], app_dir: Path, module: str, queue: str, env: dict[str, str], log: Path,
                     concurrency: int = 2, max_tasks_per_child: int = 3) -> Server:
    argv = [sys.executable, "-m", "celery", "--app", module, "worker", "--pool", "prefork",
            "--concurrency", str(concurrency), "--max-tasks-per-child", str(max_tasks_per_child),
            "--queues", queue, "--hostname", f"{queue}@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker = Server(argv, app_dir, {**env, "CELERY_QUEUE": queue}, log)
    servers.append(worker)
    worker.wait_until(lambda: " ready." in worker.log() and len(worker.children()) == concurrency, "celery ready")
    return worker


def task_load(redis_url: str, queue: str, task: str, count: int = 16, wait: float = 45.0) -> list[tuple[int, str]]:
    """Send `count` tasks; a task not done within `wait` seconds in all counts as "error timeout" (a hung child)."""
    import time

    from celery import Celery
    from celery.exceptions import TimeoutError as CeleryTimeout

    producer = Celery("producer", broker=redis_url, backend=redis_url, set_as_current=False)
    deadline = time.monotonic() + wait
    answers: list[tuple[int, str]] = []
    try:
        for result in [producer.send_task(task, queue=queue) for _ in range(count)]:
            try:
                worker, backend = result.get(timeout=max(deadline - time.monotonic(), 0.1))
                answers.append((int(worker), str(backend)))
            except CeleryTimeout:
                answers.append((0, "error timeout"))
    finally:
        producer.close()
    return answers
