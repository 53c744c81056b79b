"""Fork a process that holds forkpool pools; run under ``-W error::DeprecationWarning`` (tests/test_fork_quiet.py).

    python -W error::DeprecationWarning tests/fork_quiet_program.py SCENARIO

A process of its own, so no thread of the test runner is counted. On Python 3.12+
a fork with a second thread alive raises here (the warning is an error); the
program then exits non-zero with the traceback. Prints ``OK ...`` at the end.
DATABASE_URL names the server; SCENARIO is one of the functions below.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import psycopg2

import forkpool
import forkpool.health
from forkpool.settings import build_settings

DSN = os.environ["DATABASE_URL"]
FORKS = 8


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def maintainers() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("forkpool-"))


def fork_and_check(child: Callable[[], int] = lambda: 0) -> None:
    """os.fork(); the child runs `child` and leaves with its result as exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child exited {status}"


def child_queries() -> int:
    # The child's own pool (the inherited ones are detached): a real round trip.
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        return 0 if cur.fetchone() == (1,) else 3


def mp_child(queue: multiprocessing.Queue[int]) -> None:
    queue.put(child_queries())


def pools() -> str:
    """Three pools with maintainer threads, the idle closer, the metrics exporter; os.fork and multiprocessing."""
    os.environ["DB_POOL_IDLE_CLOSE"] = "3600"
    exporter = False
    try:
        import forkpool.metrics  # its fork hook holds the export lock the maintainers take

        forkpool.metrics.start_exporter()  # what a worker with a metrics directory runs
        exporter = True
    except ImportError:
        pass
    settings = build_settings(dsn=DSN, min_size=2, max_size=2)
    own = [forkpool.Pool(settings, name=f"quiet{i}") for i in range(2)]
    for pool in own:
        pool.open(wait=True, timeout=20)
    registry_pool = forkpool.get_pool()  # starts the idle closer
    registry_pool.open(wait=True, timeout=20)
    threads = maintainers()
    assert "forkpool-idle-closer" in threads and len(threads) == 4 + exporter, threads
    for _ in range(FORKS):
        fork_and_check(child_queries)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[int] = ctx.Queue()
    for _ in range(2):
        proc = ctx.Process(target=mp_child, args=(queue,))
        proc.start()
        assert queue.get(timeout=30) == 0
        proc.join(30)
        assert proc.exitcode == 0, proc.exitcode
    # The threads are back: at once (3.12), or at the next checkout (3.13, see fork_quiet.py).
    for pool in [*own, registry_pool]:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert wait_for(lambda: maintainers() == threads), (maintainers(), threads)
    forkpool.close_all()
    for pool in own:
        pool.close()
    return f"{FORKS + 2} forks, threads {len(threads)}"


def backoff() -> str:
    """A pool whose server refuses: its maintainer backs off; a fork neither warns nor resets the backoff."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        dead = build_settings(dsn=f"postgresql://nobody@127.0.0.1:{port}/x", min_size=1, max_size=1, connect_timeout=2)
        pool = forkpool.Pool(dead, name="refused")
        pool.open()
        maintainer = pool._maintainer  # the backoff is what is checked
        assert wait_for(lambda: maintainer._backoff > 0), "never backed off"
        for _ in range(FORKS):
            fork_and_check()
        assert maintainer._backoff > 0
        pool.close()
    return f"{FORKS} forks while backing off"


def recovery() -> str:
    """An idle pool, a fork, then its sessions are terminated: the next use sees no error; it is full again."""
    pool = forkpool.Pool(build_settings(dsn=DSN, min_size=2, max_size=2), name="recovery")
    pool.open(wait=True, timeout=20)
    before = backend_pids(pool)
    opened = pool.stats()["connections_opened"]
    fork_and_check()
    admin = psycopg2.connect(DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM unnest(%s::int[]) AS pid", (before,))
        assert cur.fetchone()[0] == 2
        assert wait_for(lambda: _alive(cur, before) == 0)
    with pool.connection() as conn, conn.cursor() as cur:  # no error: the dead ones are replaced
        cur.execute("SELECT 1")
    assert wait_for(lambda: pool.stats()["size"] == 2 and pool.stats()["connections_opened"] >= opened + 2), (
        pool.stats()
    )
    after = backend_pids(pool)
    assert not set(after) & set(before), (before, after)
    fork_and_check()
    pool.close()
    admin.close()
    return "refilled after its sessions ended, across forks"


def backend_pids(pool: forkpool.Pool) -> list[int]:
    conns = [pool.getconn(timeout=10) for _ in range(pool.settings.max_size)]
    try:
        pids = []
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.append(cur.fetchone()[0])
            conn.rollback()
        return pids
    finally:
        for conn in conns:
            pool.putconn(conn)


def _alive(cur: psycopg2.extensions.cursor, pids: list[int]) -> int:
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
    return int(cur.fetchone()[0])


def idle_close() -> str:
    """DB_POOL_IDLE_CLOSE across forks: the idle closer ends for each fork, and still closes the unused pool."""
    os.environ["DB_POOL_IDLE_CLOSE"] = "1"
    pool = forkpool.get_pool()
    pool.open(wait=True, timeout=20)
    assert "forkpool-idle-closer" in maintainers(), maintainers()
    for _ in range(3):
        fork_and_check(child_queries)
    with pool.connection() as conn, conn.cursor() as cur:  # a use: 3.13 starts the threads again here
        cur.execute("SELECT 1")
    assert wait_for(lambda: pool.closed), pool.stats()
    assert forkpool.health.manager_stats()["closed_idle"] == 1, forkpool.health.manager_stats()
    return "idle pool closed after forks"


def stuck() -> str:
    """A maintainer stuck connecting (a server that accepts and never answers) cannot end before the fork:
    the fork waits its bound (fork_quiet.END_BOUND), then goes ahead; nothing hangs, and upkeep goes on."""
    import select
    import warnings

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshake; nobody ever reads the startup packet
        port = server.getsockname()[1]
        silent = build_settings(
            dsn=f"postgresql://nobody@127.0.0.1:{port}/x", min_size=1, max_size=1, connect_timeout=30
        )
        pool = forkpool.Pool(silent, name="silent")
        pool.open()
        assert select.select([server], [], [], 30)[0], "the maintainer never connected"
        with warnings.catch_warnings(record=True) as caught:  # the one fork that may warn, by design
            warnings.simplefilter("always", DeprecationWarning)
            fork_and_check()
        warned = sum("multi-threaded" in str(w.message) for w in caught)
        assert pool._maintainer._thread is not None  # still connecting: not ended, not lost
        pool.close()
    return f"a fork past a stuck maintainer ({warned} warning)"


def spawn() -> str:
    """subprocess with preexec_fn runs the at-fork hooks but never warns: the maintainers go on running."""
    import subprocess

    pool = forkpool.Pool(build_settings(dsn=DSN, min_size=1, max_size=1), name="spawner")
    pool.open(wait=True, timeout=20)
    threads = maintainers()
    subprocess.run([sys.executable, "-c", "pass"], preexec_fn=lambda: None, check=True)
    assert maintainers() == threads and not pool._maintainer.paused, maintainers()
    pool.close()
    return "subprocess with preexec_fn"


def gevent() -> str:
    """As Gunicorn's gevent worker: a pool opened before monkey patching (a real maintainer thread),
    another after (a greenlet); forks from the patched process work, and the pools after them.

    gevent's own fork ignores DeprecationWarning around the raw fork (gevent/os.py, fork_gevent):
    no warning shows here either way; the real thread is ended anyway (fewer threads at fork).
    """
    before = forkpool.Pool(build_settings(dsn=DSN, min_size=1, max_size=1), name="before-patch")
    before.open(wait=True, timeout=20)
    from gevent import monkey

    monkey.patch_all()
    after = forkpool.Pool(build_settings(dsn=DSN, min_size=1, max_size=1), name="after-patch")
    after.open(wait=True, timeout=20)
    for _ in range(FORKS):
        fork_and_check(child_queries)
    for pool in (before, after):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert wait_for(lambda: len(maintainers()) == 2), maintainers()
    before.close()
    after.close()
    return f"{FORKS} forks under gevent"


def aio() -> str:
    """An asyncio pool (a maintainer task, no thread): forks from the loop's thread do not warn."""

    async def main() -> None:
        pool = forkpool.AsyncPool(build_settings(dsn=DSN, min_size=2, max_size=2))
        await pool.open(wait=True, timeout=20)
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        for _ in range(FORKS):
            fork_and_check()
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        await pool.close()

    asyncio.run(main())
    return f"{FORKS} forks with an asyncio pool"


if __name__ == "__main__":
    scenario = {f.__name__: f for f in (pools, backoff, recovery, idle_close, stuck, spawn, gevent, aio)}[sys.argv[1]]
    print("OK", sys.version.split()[0], scenario(), flush=True)
