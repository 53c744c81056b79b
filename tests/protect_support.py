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
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness._procs import free_port
from tests.server_support import Server, by_process, get, gunicorn_argv

APPS = Path(__file__).with_name("protect_apps")


def doctor(master: int, database_url: str, *extra: str, redis_url: str | None = None) -> dict:
    redis = ["--redis-url", redis_url] if redis_url else []
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forkpool",
            "doctor",
            "--json",
            "--pid",
            str(master),
            "--dsn",
            database_url,
            *redis,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def settled_doctor(
    master: int, database_url: str, *extra: str, redis_url: str | None = None, timeout: float = 20.0
) -> dict:
    """Doctor until it finds no error, or `timeout`: the last report.

    After a load with recycling a child may have just exited, and the server
    not yet noticed its session (an orphan for a moment): a steady
    deployment is clean, a broken one stays flagged.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        report = doctor(master, database_url, *extra, redis_url=redis_url)
        if not errors(report) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def errors(report: dict) -> list[dict]:
    """Doctor's error findings (what makes it exit 1)."""
    return [f for f in report["findings"] if f["severity"] == "error"]


def connections(report: dict, kind: str, server: str | None = None) -> list[dict]:
    """Doctor's sockets of `kind` ("postgresql" / "redis"), to `server` ("ip:port") when given."""
    return [c for c in report["connections"] if c["kind"] == kind and (server is None or c["server"] == server)]


def shared(report: dict, kind: str, server: str | None = None) -> list[dict]:
    """Sockets held by more than one process: inherited, never detached."""
    return [c for c in connections(report, kind, server) if len(c["pids"]) > 1]


def held_by(report: dict, kind: str, server: str | None = None) -> dict[int, int]:
    """{pid: sockets it holds} over every examined process (0 for none), a shared socket in each holder."""
    counts = {p["pid"]: 0 for p in report["processes"]}
    for conn in connections(report, kind, server):
        for pid in conn["pids"]:
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def masters(report: dict) -> list[int]:
    return [p["pid"] for p in report["processes"] if p["role"] == "master"]


def shared_backends(answers: list[tuple[int, str]]) -> dict[str, set[int]]:
    """Server sessions (backend pid, Redis client id) that answered for more than one worker pid."""
    seen: dict[str, set[int]] = {}
    for pid, backend in answers:
        if not backend.startswith("error"):
            seen.setdefault(backend, set()).add(pid)
    return {b: pids for b, pids in seen.items() if len(pids) > 1}


def backends_by_worker(answers: list[tuple[int, str]]) -> dict[int, set[str]]:
    """{worker pid: the sessions it answered from}: more than its pool holds means a pool closed and reopened."""
    found: dict[int, set[str]] = {}
    for pid, backend in answers:
        if not backend.startswith("error"):
            found.setdefault(pid, set()).add(backend)
    return found


def failures(answers: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [a for a in answers if a[1].startswith("error")]


def exact(sessions: Callable[[], list], suite_id: str, role: str, live: Iterable[int], per_process: int) -> bool:
    """The sessions by identity are exactly `per_process` for each of `live` in `role`, and nothing else.

    `per_process` 0: no session at all (processes that hold none between units of work).
    """
    held = by_process(sessions, suite_id)
    expected = {(role, pid) for pid in live} if per_process else set()
    return held.keys() == expected and all(len(b) == per_process for b in held.values())


def protected_run_ends_clean(
    server: Server, role: str, sessions: Callable[[], list], suite_id: str, database_url: str, per_process: int
) -> None:
    """The end of a protected run, after a load with recycling, then a graceful stop.

    Exactly `per_process` sessions by identity for each live child of `server`
    in `role` (the recycled ones closed theirs, the replacements opened theirs
    at start); doctor clean, the master holding none; steady again before the
    stop (a worker spawned as the Gunicorn master handles SIGTERM misses it: its
    own race), which must be graceful; and no session left after it.
    """
    from tests.conftest import wait_for

    def steady() -> bool:
        return exact(sessions, suite_id, role, server.children(), per_process)

    assert wait_for(steady, timeout=15), (by_process(sessions, suite_id), server.children())
    after = settled_doctor(server.pid, database_url, "--pool-size", str(per_process))
    assert errors(after) == [] and held_by(after, "postgresql")[server.pid] == 0, after["findings"]
    assert wait_for(steady, timeout=15), (by_process(sessions, suite_id), server.children())
    assert server.stop() == 0
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def redis_sessions(redis_url: str, suite_id: str) -> Callable[[], list[tuple[str, int]]]:
    """A lister of this test's Redis clients (CLIENT LIST) as (client name, client id), like `sessions`."""
    import redis

    def listing() -> list[tuple[str, int]]:
        with redis.Redis.from_url(redis_url, client_name="pytest-admin") as admin:
            return [
                (c["name"], int(c["id"])) for c in admin.client_list() if c.get("name", "").startswith(f"{suite_id}:")
            ]

    return listing


def start_gunicorn_app(
    servers: list[Server], app_dir: Path, conf: str, app: str, env: dict[str, str], log: Path, workers: int = 3
) -> tuple[Server, str]:
    port = free_port()
    server = Server(gunicorn_argv(app, port, workers, "--config", conf), app_dir, env, log)
    servers.append(server)
    url = f"http://127.0.0.1:{port}/"
    server.wait_until(lambda: len(server.children()) == workers and get(url)[0] in (200, 500), "gunicorn ready")
    return server, url


def http_load(url: str, requests: int = 60, threads: int = 6, retry_reset: bool = False) -> list[tuple[int, str]]:
    """`requests` GETs of `url` from `threads` threads: (worker pid, backend or "error <kind>") each.

    `retry_reset`: a GET whose connection closed before any byte of a response
    is sent once more (what a browser or proxy does with an idempotent
    request). Under recycling that happens without any fault of the app:
    uvicorn's shutdown closes the connections it has accepted but whose
    request it has not read yet (Kludex/uvicorn discussion #2315, PR #3124
    not merged; uvicorn 0.55), so a worker leaving at max_requests resets a
    request now and then. A second failure counts as a failure.
    """

    def one(_: int) -> tuple[int, str]:
        status, body = get(url)
        if status == 0 and retry_reset:
            status, body = get(url)
        worker, _, rest = body.decode().partition(" ")
        return int(worker or 0), rest if status in (200, 500) else f"error HTTP {status}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(requests)))


def recycled_http_load(server: Server, url: str, requests: int = 60) -> list[tuple[int, str]]:
    """Load until max_requests has replaced a worker, then until a replacement has answered too.

    A uvicorn worker checks its request limit on a timer tick, so a short burst
    may end before any worker leaves: the first burst is followed by a wait
    for a replaced worker, then a second burst.
    """
    from tests.conftest import wait_for

    first = set(server.children())
    answers = http_load(url, requests, retry_reset=True)
    assert wait_for(lambda: bool(set(server.children()) - first), timeout=30), "no worker was recycled"
    # The kernel may hand a whole burst to the workers that were already there:
    # load on until a replacement has answered, so the caller sees it serve.
    deadline = time.monotonic() + 30
    while True:
        answers += http_load(url, requests // 2, retry_reset=True)
        if {pid for pid, _ in answers} - first:
            return answers
        assert time.monotonic() < deadline, f"no replacement answered: {sorted({pid for pid, _ in answers})}"


def start_celery_app(
    servers: list[Server],
    app_dir: Path,
    module: str,
    queue: str,
    env: dict[str, str],
    log: Path,
    concurrency: int = 2,
    max_tasks_per_child: int = 3,
) -> Server:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        module,
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--max-tasks-per-child",
        str(max_tasks_per_child),
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
    results = []
    try:
        results = [producer.send_task(task, queue=queue) for _ in range(count)]
        for result in results:
            try:
                worker, backend = result.get(timeout=max(deadline - time.monotonic(), 0.1))
                answers.append((int(worker), str(backend)))
            except CeleryTimeout:
                answers.append((0, "error timeout"))
    finally:
        for result in results:  # now, while the broker is up: a pending result unsubscribes when collected
            try:
                result.backend.remove_pending_result(result)
            except Exception:  # noqa: BLE001 - done already, or the backend is gone
                pass
        producer.close()
    return answers


def in_child(work: Callable[[], object]) -> str:
    """Fork; the child runs `work` and reports str(result) (or "error <kind>: <message>"); returns the report."""
    import os

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                report = str(work())
            except BaseException as exc:  # noqa: BLE001 - the parent asserts on it
                report = f"error {type(exc).__name__}: {exc}"
            os.write(write_fd, report.encode()[:60000])
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def endpoint_of(url: str) -> str:
    """A server URL's "ip:port", as doctor reports a connection's far end."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"
