"""The asyncio pool: one per process and event loop, FIFO on futures, cancellation-safe, fork-safe.

The tests that take the `aio_driver` fixture run on both of its drivers, psycopg 3 and asyncpg: the pool's
logic is the same on either. The others use psycopg 3's connection; what the asyncpg driver decides on its
own (its transaction model, session defaults, DSN, failover) is in tests/test_aio_pool_asyncpg.py.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import forkpool
from forkpool import stats as keys
from forkpool._drivers_async import kept_after_fork
from tests.conftest import on_devnull

T = TypeVar("T")

AIO_DRIVERS = ("psycopg", "asyncpg")


@pytest.fixture(params=AIO_DRIVERS)
def aio_driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per driver of the asyncio pool (DB_POOL_DRIVER), skipped where it is not installed."""
    if importlib.util.find_spec(request.param) is None:
        pytest.skip(f"driver {request.param} is not installed")
    monkeypatch.setenv("DB_POOL_DRIVER", request.param)
    return str(request.param)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def invariants(snapshot: dict) -> bool:
    return (
        snapshot[keys.SIZE] == snapshot[keys.IDLE] + snapshot[keys.IN_USE]
        and snapshot[keys.CONNECTIONS_OPENED] - snapshot[keys.CONNECTIONS_CLOSED] == snapshot[keys.SIZE]
        and snapshot[keys.SIZE] <= snapshot[keys.MAX_SIZE]
    )


async def scalar(conn: Any, sql: str) -> Any:
    """The first value of the first row, on a connection of either driver."""
    if hasattr(conn, "fetchval"):  # asyncpg
        return await conn.fetchval(sql)
    cur = await conn.execute(sql)  # psycopg 3
    return (await cur.fetchone())[0]


async def backend_pid(conn: Any) -> int:
    return int(await scalar(conn, "SELECT pg_backend_pid()"))


async def pids_of_all(pool: forkpool.AsyncPool, count: int = 2) -> list[int]:
    """Check out `count` connections at once and give them back: their sessions' server pids."""
    conns = [await pool.getconn() for _ in range(count)]
    pids = [await backend_pid(conn) for conn in conns]
    for conn in conns:
        await pool.putconn(conn)
    return pids


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll between awaits, so the maintainer task keeps running."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_one_pool_per_loop_shared_by_its_coroutines_and_a_new_one_for_another_loop():
    forkpool.configure(min_size=1, max_size=2)

    async def main():
        pools = await asyncio.gather(*(forkpool.get_async_pool() for _ in range(20)))
        assert all(p is pools[0] for p in pools)
        assert await pools[0].wait(10)
        await forkpool.close_async_pools()
        return pools[0]

    first = run(main())
    second = run(main())
    assert first is not second and first.closed and second.closed


def test_a_block_commits_on_success_rolls_back_on_error_and_always_returns(sessions, suite_id):
    forkpool.configure(min_size=1, max_size=1)

    async def main():
        pool = await forkpool.get_async_pool()
        async with pool.connection() as conn:
            await conn.execute("CREATE TEMP TABLE t_async (v int)")
            await conn.execute("INSERT INTO t_async VALUES (1)")
        with pytest.raises(RuntimeError):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO t_async VALUES (2)")
                raise RuntimeError("boom")
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT array_agg(v), current_setting('application_name') FROM t_async")
            values, name = await cur.fetchone()
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return values, name, snapshot

    values, name, snapshot = run(main())
    assert values == [1] and name == f"{suite_id}:app:{os.getpid()}"
    assert snapshot[keys.IN_USE] == 0 and snapshot[keys.CHECKOUTS] == 3 and invariants(snapshot)
    assert set(snapshot) == set(keys.ALL_KEYS)


def test_waiters_are_served_fifo_up_to_the_ceiling_and_time_out_with_pool_timeout(aio_driver, count_settles):
    forkpool.configure(min_size=1, max_size=2, timeout=30)

    async def main():
        pool = await forkpool.get_async_pool()
        held = [await pool.getconn(), await pool.getconn()]
        order: list[int] = []

        async def wait_turn(number: int) -> None:
            async with pool.connection() as conn:
                order.append(number)
                await conn.execute("SELECT 1")

        waiters = [asyncio.create_task(wait_turn(n)) for n in range(8)]
        assert await until(lambda: pool.stats()[keys.WAITING] == 8)  # all queued, in creation order
        assert await asyncio.to_thread(count_settles, 2) == 2  # the ceiling: no third session
        await pool.putconn(held.pop())
        await asyncio.gather(*waiters)
        held.append(await pool.getconn())
        with pytest.raises(forkpool.PoolTimeout):
            await pool.getconn(timeout=0.2)
        for conn in held:
            await pool.putconn(conn)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return order, snapshot

    order, snapshot = run(main())
    assert order == list(range(8))
    assert snapshot[keys.TIMEOUTS] == 1 and snapshot[keys.WAITING] == 0 and snapshot[keys.SIZE] == 2
    assert invariants(snapshot)


def test_max_waiting_refuses_the_next_caller():
    forkpool.configure(min_size=1, max_size=1, max_waiting=1)

    async def main():
        pool = await forkpool.get_async_pool()
        held = await pool.getconn()
        queued = asyncio.create_task(pool.getconn(timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(forkpool.TooManyWaiting):
            await pool.getconn(timeout=5)
        await pool.putconn(held)
        await pool.putconn(await queued)
        await forkpool.close_async_pools()

    run(main())


IN_FLIGHT = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE application_name LIKE %s AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'"
)


def test_cancellation_loses_no_connection_and_leaves_no_ghost_in_the_queue(aio_driver, admin, suite_id):
    forkpool.configure(min_size=2, max_size=2)

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        held = [await pool.getconn(), await pool.getconn()]
        # Cancelled while waiting: off the queue.
        waiting = [asyncio.create_task(pool.getconn(timeout=30)) for _ in range(5)]
        assert await until(lambda: pool.stats()[keys.WAITING] == 5)
        for task in waiting[::2]:
            task.cancel()
        await asyncio.sleep(0)
        for conn in held:
            await pool.putconn(conn)  # served to the two waiters still in line
        served = [await task for task in waiting[1::2]]
        assert pool.stats()[keys.WAITING] == 0
        for conn in served:
            await pool.putconn(conn)

        # Cancelled while holding, mid-query: the block returns (or discards) the connection.
        async def slow():
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")

        tasks = [asyncio.create_task(slow()) for _ in range(2)]
        assert await until(lambda: admin(IN_FLIGHT, f"{suite_id}:%")[0][0] == 2)  # both running on the server
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await pool.wait(10)  # the maintainer replaced whatever was discarded
        for _ in range(4):
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT 1") == 1
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    snapshot = run(main())
    assert snapshot[keys.IN_USE] == 0 and snapshot[keys.WAITING] == 0 and invariants(snapshot)
    assert snapshot[keys.SIZE] == 2


def test_a_waiter_cancelled_just_after_being_served_gives_the_connection_to_the_next_in_line():
    """The connection was handed to the waiter's future, but the waiter never resumed to take it."""
    forkpool.configure(min_size=1, max_size=1)

    async def main():
        pool = await forkpool.get_async_pool()
        held = await pool.getconn()
        first = asyncio.create_task(pool.getconn(timeout=30))
        second = asyncio.create_task(pool.getconn(timeout=5))
        assert await until(lambda: pool.stats()[keys.WAITING] == 2)
        await pool.putconn(held)  # the clean return has no await: `first` is served, not yet resumed
        served = pool.stats()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        conn = await second
        assert conn is held  # the one connection went on, FIFO, to the next waiter
        await pool.putconn(conn)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return served, snapshot

    served, snapshot = run(main())
    assert served[keys.IN_USE] == 1 and served[keys.WAITING] == 1  # the race was really run
    assert snapshot[keys.IN_USE] == 0 and snapshot[keys.IDLE] == 1 and invariants(snapshot)
    assert snapshot[keys.CHECKOUTS] == 2  # held, then second: the cancelled waiter's is not counted


def test_a_caller_cancelled_during_the_pre_use_check_or_a_reset_loses_no_connection():
    forkpool.configure(min_size=1, max_size=1, check_idle=0)  # every checkout runs a SELECT 1 first

    async def cancelled_at_first_await(coro) -> None:
        task = asyncio.create_task(coro)
        await asyncio.sleep(0)  # the task runs up to its first real await: the query in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        before = pool.stats()[keys.CHECKS]
        await cancelled_at_first_await(pool.getconn(timeout=5))
        assert pool.stats()[keys.CHECKS] == before + 1  # it was cancelled inside the check
        async with pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")
        conn = await pool.getconn(timeout=5)
        await conn.execute("SELECT 1")  # in a transaction: putconn() must roll it back, an await
        await cancelled_at_first_await(pool.putconn(conn))
        async with pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    snapshot = run(main())
    assert snapshot[keys.IN_USE] == 0 and snapshot[keys.TIMEOUTS] == 0 and invariants(snapshot)


def test_a_server_side_kill_is_discarded_and_the_pool_refills(aio_driver, admin, suite_id):
    forkpool.configure(min_size=2, max_size=2, check_idle=0)

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        await asyncio.to_thread(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            f"{suite_id}:%",
        )
        for _ in range(4):
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT 1") == 1  # never a dead one: the pre-use check caught them
        assert await pool.wait(10)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    snapshot = run(main())
    assert snapshot[keys.CONNECTIONS_DISCARDED] >= 2 and snapshot[keys.SIZE] == 2 and invariants(snapshot)


def test_reuse_within_the_idle_threshold_costs_no_round_trip(aio_driver):
    forkpool.configure(min_size=1, max_size=1, check_idle=5)

    async def main():
        pool = await forkpool.get_async_pool()
        for _ in range(50):
            async with pool.connection():
                pass
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    assert run(main())[keys.CHECKS] == 0


def test_a_forked_child_gets_its_own_async_pool_and_the_parents_sessions_survive(aio_driver, count_settles):
    forkpool.configure(min_size=2, max_size=2)

    async def parent_pids():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        return pool, await pids_of_all(pool)

    loop = asyncio.new_event_loop()
    try:
        pool, before = loop.run_until_complete(parent_pids())
        sockets = [pool._driver.socket_fd(entry.conn) for entry in pool._idle]
        read_fd, write_fd = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                assert pool.closed  # the inherited one is detached: PoolClosed on use
                if aio_driver == "asyncpg":  # no fork guard of its own: the driver's drop_without_io
                    # Its connections' sockets point at /dev/null, and the objects are kept, never collected.
                    assert len(sockets) == 2 and all(on_devnull(fd) for fd in sockets)
                    assert len(kept_after_fork()) == 2

                async def own():
                    mine = await forkpool.get_async_pool()
                    async with mine.connection() as conn:
                        pid = await backend_pid(conn)
                    await forkpool.close_async_pools()
                    return mine is not pool and pid not in before

                os.write(write_fd, b"ok" if asyncio.run(own()) else b"no")
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        assert os.read(read_fd, 2) == b"ok"
        os.waitpid(child, 0)
        assert count_settles(2) == 2
        _, after = loop.run_until_complete(parent_pids())
        assert sorted(after) == sorted(before)
        loop.run_until_complete(forkpool.close_async_pools())
    finally:
        loop.close()


def test_idle_trimming_goes_back_to_min_size_with_the_same_counts():
    forkpool.configure(min_size=1, max_size=3, max_idle=0.3, max_lifetime=0)  # idle trimming only

    async def main():
        pool = await forkpool.get_async_pool()
        held = [await pool.getconn() for _ in range(3)]
        for conn in held:
            await pool.putconn(conn)
        assert pool.stats()[keys.SIZE] == 3
        assert await until(lambda: pool.stats()[keys.SIZE] == 1)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    snapshot = run(main())
    assert snapshot[keys.SIZE] == 1 and snapshot[keys.CONNECTIONS_CLOSED] == 2 and invariants(snapshot)


def test_lifetime_trimming_replaces_idle_and_returned_connections_with_new_sessions():
    forkpool.configure(min_size=2, max_size=2, max_lifetime=0.5, max_idle=0)  # lifetime only

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        first = set(await pids_of_all(pool))
        # Idle past its lifetime: the maintainer closes it and refills to min_size.
        assert await until(lambda: pool.stats()[keys.CONNECTIONS_CLOSED] >= 2 and pool.stats()[keys.SIZE] == 2)
        second = set(await pids_of_all(pool))
        # Checked out past their lifetime (nothing idle for the maintainer to trim meanwhile):
        # closed on return, not put back idle.
        closed = pool.stats()[keys.CONNECTIONS_CLOSED]
        conns = [await pool.getconn(), await pool.getconn()]
        due = max(pool._in_use[c].expires_at for c in conns)  # when both are past it
        await asyncio.sleep(max(due - time.monotonic(), 0) + 0.05)
        for conn in conns:
            await pool.putconn(conn)
        on_return = pool.stats()
        assert await pool.wait(10)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return first, second, closed, on_return, snapshot

    first, second, closed, on_return, snapshot = run(main())
    assert len(first) == len(second) == 2 and first.isdisjoint(second)
    assert on_return[keys.CONNECTIONS_CLOSED] == closed + 2 and on_return[keys.IDLE] == 0
    assert on_return[keys.CONNECTIONS_DISCARDED] == 0  # expired, not broken
    assert snapshot[keys.SIZE] == 2 and invariants(snapshot)


def test_connect_failure_is_a_connect_error_with_no_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:s3cret@127.0.0.1:1/db")  # nothing listens on port 1
    forkpool.configure(min_size=0, max_size=1, connect_timeout=1)

    async def main():
        pool = await forkpool.get_async_pool()
        try:
            with pytest.raises(forkpool.ConnectError) as raised:
                await pool.getconn(timeout=2)
            return str(raised.value), repr(pool)
        finally:
            await forkpool.close_async_pools()

    message, shown = run(main())
    assert "s3cret" not in message + shown and "127.0.0.1" in message


# Importing a module of the package under a second name is what the test does on purpose; Python 3.12+
# says so for each relative import in it.
@pytest.mark.filterwarnings("ignore:__package__ != __spec__.parent:DeprecationWarning")
def test_reload_and_double_import_do_not_create_a_second_async_pool(count_settles, monkeypatch):
    """As tests/test_fork.py checks for the threaded pool: the per-process, per-loop pool is found again."""
    forkpool.configure(min_size=2, max_size=2)

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        for name in (
            "forkpool._process",
            "forkpool._base",
            "forkpool._pool_async",
            "forkpool._registry",
            "forkpool",
        ):
            importlib.reload(sys.modules[name])
        reloaded = await forkpool.get_async_pool()
        # The same file imported again under another module name (a second sys.path entry).
        spec = importlib.util.spec_from_file_location("aio_registry_copy", forkpool._registry.__file__)
        copy = importlib.util.module_from_spec(spec)
        copy.__package__ = "forkpool"
        spec.loader.exec_module(copy)
        copied = await copy.get_async_pool()
        stats = [s["name"] for s in forkpool.health.async_stats()]  # async_stats() moved to forkpool.health
        sessions = count_settles(2)
        await forkpool.close_async_pools()
        return pool, reloaded, copied, stats, sessions

    pool, reloaded, copied, stats, sessions = run(main())
    assert reloaded is pool and copied is pool
    assert stats == [pool.name] and sessions == 2  # one pool, two sessions: nothing opened twice


# A server that never answers, per driver: the DSN's query, connect_timeout, and the least the connect may
# take. libpq's (and psycopg's) connect_timeout is 2 s at the least; asyncpg takes fractions.
SILENT_SERVER = {"psycopg": ("", 2.0, 1.5), "asyncpg": ("?sslmode=disable", 1.5, 1.0)}


def test_connections_carry_the_network_bounds_and_a_silent_server_fails_within_connect_timeout(aio_driver):
    """Read back from the socket itself, as tests/test_settings.py does for the threaded pool (on psycopg 3, libpq's
    connect_timeout too, from the connection's options); then a server that accepts and never answers fails a
    connect within connect_timeout instead of hanging it."""
    forkpool.configure(min_size=1, max_size=1)

    async def options():
        pool = await forkpool.get_async_pool()
        try:
            async with pool.connection() as conn:
                sock = socket.socket(fileno=os.dup(pool._driver.socket_fd(conn)))
                try:
                    kernel = (
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                    )
                finally:
                    sock.close()
                libpq: dict[str, str] = {}  # asyncpg has no libpq
                if aio_driver == "psycopg":
                    libpq = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
            return kernel, libpq
        finally:
            await forkpool.close_async_pools()

    kernel, libpq = run(options())
    assert kernel == (1, 5, 2, 3, 10000)
    if aio_driver == "psycopg":
        assert libpq["connect_timeout"] == "5"

    query, connect_timeout, least = SILENT_SERVER[aio_driver]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel completes the handshake; nothing ever reads or answers
    try:
        forkpool.configure(
            dsn=f"postgresql://u@127.0.0.1:{silent.getsockname()[1]}/db{query}",
            min_size=0,
            max_size=1,
            connect_timeout=connect_timeout,
        )

        async def connect_to_silence():
            pool = await forkpool.get_async_pool()
            started = time.monotonic()
            try:
                # asyncio.timeout: without the bound the connect would hang, past the caller's timeout too
                with pytest.raises(forkpool.ConnectError):
                    async with asyncio.timeout(8):
                        await pool.getconn(timeout=10)
                return time.monotonic() - started
            finally:
                await forkpool.close_async_pools()

        waited = run(connect_to_silence())
    finally:
        silent.close()
    # the driver's connect_timeout: not the caller's 10 s, and not a refusal
    assert least < waited < 6, waited
