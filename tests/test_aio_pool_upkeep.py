"""The asyncio pool's upkeep against a real server: restart recovery, refill backoff, leak
warnings, metrics, and stats that stay consistent under concurrent load and cancellation."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkpool
from forkpool import _base as keys
from forkpool._base import add_stats_listener, stats_listeners
from forkpool.settings import build_settings
from tests.test_aio_pool import backend_pid, invariants, until


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def rounds():
    """How many maintainer rounds each pool has finished (every round ends by publishing its stats)."""
    seen: dict[int, int] = {}

    def publish(pool) -> None:
        seen[id(pool)] = seen.get(id(pool), 0) + 1

    add_stats_listener("test-rounds", publish, lambda pool: None)
    yield lambda pool: seen.get(id(pool), 0)
    stats_listeners().pop("test-rounds", None)


def test_a_server_restart_never_reaches_the_callers_after_it(pg_server, count_settles):
    if pg_server is None:
        pytest.skip("needs the embedded server: an external DATABASE_URL cannot be restarted by the tests")
    forkpool.configure(min_size=4, max_size=4, check_idle=3600)  # only the socket tells a dead one

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        before = await asyncio.gather(*(pool.getconn() for _ in range(4)))
        old = {await backend_pid(c) for c in before}
        for conn in before:
            await pool.putconn(conn)
        # In the loop's (main) thread: a server started from another thread dies with it (PDEATHSIG).
        pg_server.restart()

        async def caller():
            async with pool.connection(timeout=15) as conn:
                return await backend_pid(conn)

        seen = await asyncio.gather(*(caller() for _ in range(12)), return_exceptions=True)
        assert await pool.wait(10)
        assert await asyncio.to_thread(count_settles, 4) == 4  # the server sees exactly the pool's sessions
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return old, seen, snapshot

    old, seen, snapshot = run(main())
    assert [s for s in seen if isinstance(s, BaseException)] == []
    assert old.isdisjoint(seen)  # every caller got a session of the new server
    assert snapshot[keys.CONNECTIONS_DISCARDED] >= 1 and snapshot[keys.SIZE] == 4 and invariants(snapshot)


def test_refill_backs_off_while_the_server_is_down_then_refills_when_it_returns(pg_server, caplog, rounds):
    if pg_server is None:
        pytest.skip("needs the embedded server: an external DATABASE_URL cannot be stopped by the tests")
    caplog.set_level(logging.INFO, logger="forkpool.pool")
    forkpool.configure(min_size=2, max_size=2, connect_timeout=1)

    async def main():
        pg_server.stop()  # from the main thread, as start() must be (a server dies with its starter thread)
        try:
            pool = await forkpool.get_async_pool()
            assert await pool.open(wait=True, timeout=1) is False  # down: open() returns, it does not hang
            with pytest.raises(forkpool.ConnectError):
                await pool.getconn(timeout=1)
            assert await until(lambda: rounds(pool) >= 3)  # three failed rounds, each followed by a backoff
        finally:
            pg_server.start()
        assert await pool.wait(20)
        async with pool.connection() as conn:
            await backend_pid(conn)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    snapshot = run(main())
    delays = [float(m[1]) for r in caplog.records if (m := re.search(r"retrying in ([\d.]+) s", r.getMessage()))]
    # Exponential with +-20 % jitter: each wait is longer than the one before, never a tight loop.
    assert len(delays) >= 3 and all(b > a for a, b in itertools.pairwise(delays)), delays
    assert snapshot[keys.CONNECT_ERRORS] >= 4 and snapshot[keys.SIZE] == 2 and invariants(snapshot)
    assert any("connected again" in r.getMessage() for r in caplog.records)


def test_a_connection_held_past_the_leak_threshold_is_reported_once_with_its_stack(caplog, rounds):
    forkpool.configure(min_size=1, max_size=1, leak_timeout=0.2)
    caplog.set_level(logging.WARNING, logger="forkpool.pool")

    async def forgetful_handler(pool):
        return await pool.getconn()

    async def main():
        pool = await forkpool.get_async_pool()
        conn = await forgetful_handler(pool)
        assert await until(lambda: pool.stats()[keys.LEAK_WARNINGS] == 1)
        reported_at = rounds(pool)
        assert await until(lambda: rounds(pool) > reported_at)  # another round: no second report
        await pool.putconn(conn)
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return snapshot

    snapshot = run(main())
    reports = [r.getMessage() for r in caplog.records if "checked out for" in r.getMessage()]
    assert snapshot[keys.LEAK_WARNINGS] == 1 and len(reports) == 1
    assert "forgetful_handler" in reports[0] and "AsyncPool" in reports[0]


def sample(name: str, pool: str, suffix: str = "") -> float:
    from prometheus_client import REGISTRY

    from forkpool.identity import process_role

    labels = {"pool": pool, "role": process_role()}
    own = {**labels, "integration": "forkpool", "backend": "postgresql"}  # the gauges' labels (metrics.GAUGE_LABELS)
    metric = f"forkpool_pool_{name}{suffix}"
    return REGISTRY.get_sample_value(metric, labels) or REGISTRY.get_sample_value(metric, own) or 0.0


def test_stats_and_metrics_use_the_threaded_pools_keys_and_move_as_expected(database_url, rounds):
    metrics = pytest.importorskip("forkpool.metrics", reason="the prometheus extra is not installed")
    name = "aio-metrics"  # its own label set: other tests' pools do not move these series
    forkpool.configure(name, dsn=database_url, min_size=1, max_size=1, timeout=5)
    threaded = forkpool.Pool(build_settings(dsn=database_url, min_size=1, max_size=1), "threaded-keys")
    threaded_keys = set(threaded.stats())
    threaded.close()
    counted = list(metrics.COUNTERS)
    before = {k: sample(k, name, "_total") for k in counted}
    waits_before = sample("wait_seconds", name, "_count")

    async def main():
        pool = await forkpool.get_async_pool(name)
        async_keys = set(pool.stats())
        for _ in range(5):
            async with pool.connection():
                pass
        held = await pool.getconn()
        with pytest.raises(forkpool.PoolTimeout):
            await pool.getconn(timeout=0.1)
        waiter = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)
        await pool.putconn(held)
        await pool.putconn(await waiter)
        published = rounds(pool)
        assert await until(lambda: rounds(pool) > published)  # a round after the work: metrics exported
        gauges = {k: sample(k, name) for k in metrics.GAUGES}
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return async_keys, gauges, snapshot

    async_keys, gauges, snapshot = run(main())
    assert async_keys == threaded_keys == set(keys.ALL_KEYS)
    assert gauges == {keys.SIZE: 1, keys.IDLE: 1, keys.IN_USE: 0, keys.WAITING: 0, keys.MAX_SIZE: 1}
    moved = {k: sample(k, name, "_total") - before[k] for k in counted}
    assert moved == {
        keys.CHECKOUTS: 7,
        keys.TIMEOUTS: 1,
        keys.CONNECTIONS_OPENED: 1,
        keys.CONNECTIONS_CLOSED: 1,
        keys.CONNECTIONS_DISCARDED: 0,
        keys.CONNECT_ERRORS: 0,
        keys.LEAK_WARNINGS: 0,
    }
    assert {k: snapshot[k] for k in moved} == {**moved, keys.CONNECTIONS_CLOSED: 0}  # closed came at close()
    assert sample("wait_seconds", name, "_count") - waits_before == 2  # the timed-out wait and the served one
    assert sample("size", name) == 0  # a closed pool's gauges drop to zero


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_size=st.integers(1, 4),
    tasks=st.integers(1, 10),
    rounds_each=st.integers(1, 8),
    break_some=st.booleans(),
    cancel_some=st.booleans(),
    check_each=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_stats_are_consistent_under_concurrent_load_and_cancellation(
    database_url, max_size, tasks, rounds_each, break_some, cancel_some, check_each, seed
):
    rng = random.Random(seed)

    async def main():
        # check_idle=0: every reuse runs a SELECT 1 first, an await a cancellation can land in.
        chosen = build_settings(
            dsn=database_url, min_size=1, max_size=max_size, timeout=10, check_idle=0 if check_each else 30
        )
        pool = forkpool.AsyncPool(chosen, "prop")
        await pool.open()
        snapshots: list[dict] = []
        got = [0]

        async def work() -> None:
            for _ in range(rounds_each):
                if break_some and rng.random() < 0.1:
                    conn = await pool.getconn()
                    got[0] += 1
                    try:
                        await conn.close()  # the pool must discard it on return
                    finally:
                        await pool.putconn(conn)
                    continue
                async with pool.connection() as conn:
                    got[0] += 1
                    if rng.random() < 0.5:
                        await conn.execute("SELECT 1")
                    else:
                        await asyncio.sleep(0)
                await asyncio.sleep(rng.choice([0, 0.001]))  # now and then the pool has idle ones to reuse

        async def sampler() -> None:
            while True:
                snapshots.append(pool.stats())
                await asyncio.sleep(0)

        watching = asyncio.create_task(sampler())
        workers = [asyncio.create_task(work()) for _ in range(tasks)]
        if cancel_some:
            for _ in range(tasks):
                await asyncio.sleep(rng.choice([0, 0, 0.001]))  # while waiting, checking, holding or returning
                rng.choice(workers).cancel()
        outcomes = await asyncio.gather(*workers, return_exceptions=True)
        watching.cancel()
        assert await until(lambda: pool.stats()[keys.IN_USE] == 0, 5)
        final = pool.stats()
        await pool.close()
        return outcomes, snapshots, final, got[0]

    outcomes, snapshots, final, got = run(main())
    assert [o for o in outcomes if o is not None and not isinstance(o, asyncio.CancelledError)] == []
    if not cancel_some:
        assert got == tasks * rounds_each
    assert final[keys.CHECKOUTS] == got  # a checkout cancelled before its caller saw it is not counted
    assert final[keys.IN_USE] == 0 and final[keys.WAITING] == 0
    assert final[keys.CONNECTIONS_CLOSED] >= final[keys.CONNECTIONS_DISCARDED]
    assert [s for s in snapshots + [final] if not invariants(s)] == []
