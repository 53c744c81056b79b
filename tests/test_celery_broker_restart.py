"""A Redis restart costs the Celery worker no descriptor (suite/celery_consumer.py).

The 60-minute soak saw the Celery processes' descriptors grow by 8 over 12 Redis
restarts (docs/reliability.md): per restart, the consumer's old channel kept its
connection pool's socket, closed by Redis (CLOSE_WAIT), for the life of the worker.
Here a real worker of the suite rides out three restarts of its own Redis, the
first while a late-acknowledged task runs; after each the main process holds no
socket Redis closed, and after a restart with nothing in flight no more sockets
than before the first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from celery import Celery

from harness.services import EmbeddedRedis
from suite.queue import TASK_HOLD, TASK_RECORD_EVENT
from suite.schema import init_schema_at
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.timeout(300),  # a worker's start and three restarts: its own waits are bounded below that
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(persistent=True, base_dir=tmp_path)  # the unacked index survives the restart
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _sockets(pid: int) -> list:
    return psutil.Process(pid).net_connections("tcp")


def _closed_by_redis(pid: int, port: int) -> list[int]:
    """The main process's descriptors of TCP sockets to Redis that Redis has closed."""
    return [c.fd for c in _sockets(pid) if c.raddr and c.raddr.port == port and c.status == psutil.CONN_CLOSE_WAIT]


def _socket_fds(pid: int) -> int:
    """Every socket descriptor, in the kernel's TCP table or not (one reset after Redis closed it has left it)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def _to_redis(pid: int, port: int) -> int:
    return sum(1 for c in _sockets(pid) if c.raddr and c.raddr.port == port)


def test_a_redis_restart_leaves_the_celery_worker_no_socket(
    broker: EmbeddedRedis, database_url: str, tmp_path: Path
) -> None:
    init_schema_at(database_url)
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=broker.url,
        CELERY_QUEUE=queue,
        FORKPOOL_NAME=queue,
        DB_POOL_SIZE="1",
        WORKER_CONCURRENCY="1",
        WORKER_MAX_TASKS_PER_CHILD="0",
    )
    log = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "celery", "--app", "workers.app", "worker", "--loglevel", "INFO"]
    argv += ["--queues", queue, "--hostname", f"{queue}@%h", "--without-gossip", "--without-mingle"]
    argv += ["--without-heartbeat"]
    with open(log, "wb") as out:
        worker = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    producer = Celery("restart-test", broker=broker.url, backend=broker.url)
    producer.conf.broker_connection_retry_on_startup = True
    keys = iter(range(10**6))

    def a_task_through(timeout: float = 60.0) -> None:
        # Sent after the restart: the producer's own connections may be the dead ones, and it retries.
        sent = producer.send_task(TASK_RECORD_EVENT, kwargs={"key": f"{queue}:{next(keys)}"}, queue=queue)
        assert sent.get(timeout=timeout)["key"].startswith(queue)

    try:
        assert wait_for(lambda: b" ready." in log.read_bytes() or worker.poll() is not None, 60), log.read_text()
        assert worker.poll() is None, log.read_text()
        main = worker.pid
        a_task_through()
        before, sockets = _to_redis(main, broker.port), _socket_fds(main)
        assert before and not _closed_by_redis(main, broker.port)

        # 1: while a late-acknowledged task runs; it is done, and acknowledged through the old channel.
        held = producer.send_task(TASK_HOLD, kwargs={"seconds": 5}, queue=queue)
        assert wait_for(lambda: held.state == "STARTED", 30), held.state
        probe = redis.Redis.from_url(broker.url)
        try:
            assert probe.hlen("unacked") == 1  # the premise: still running, its message unacked, as Redis goes
        finally:
            probe.close()
        broker.restart()
        assert held.get(timeout=60)["held_seconds"] == 5
        a_task_through()
        acks = redis.Redis.from_url(broker.url)
        try:
            assert wait_for(lambda: acks.hlen("unacked") == 0, 30), acks.hkeys("unacked")
        finally:
            acks.close()
        assert wait_for(lambda: not _closed_by_redis(main, broker.port), 15), _closed_by_redis(main, broker.port)

        # 2, 3: nothing in flight. The old channel of 1 is closed now too: as many sockets as before.
        for _ in range(2):
            broker.restart()
            a_task_through()
            assert wait_for(lambda: not _closed_by_redis(main, broker.port), 15), _closed_by_redis(main, broker.port)
            assert wait_for(lambda: _to_redis(main, broker.port) <= before, 15), (_to_redis(main, broker.port), before)
            assert wait_for(lambda: _socket_fds(main) <= sockets, 15), (_socket_fds(main), sockets)
        assert worker.poll() is None, log.read_text()
    finally:
        producer.close()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)  # the main process and its pool processes
            worker.wait(10)
