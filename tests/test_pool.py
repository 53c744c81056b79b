"""The pool in one process: singleton, waiting, timeouts, lifecycle, identity (real PostgreSQL)."""

from __future__ import annotations

import logging
import threading
import time

import psycopg2
import pytest

import forkpool
import forkpool.identity
from forkpool import stats as keys
from tests.conftest import transaction_status, wait_for

# Every test here runs once per driver (psycopg2, psycopg 3): the same guarantees for both.
pytestmark = pytest.mark.usefixtures("driver")


def backend_pid(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def test_get_pool_returns_one_pool_per_name(count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    pool = forkpool.get_pool()
    assert forkpool.get_pool() is pool
    assert forkpool.get_pool("default") is pool
    assert pool.wait(10)
    assert count_settles(3) == 3


def test_64_threads_racing_on_first_use_create_one_pool(count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "5")
    barrier = threading.Barrier(64)
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def race() -> None:
        try:
            barrier.wait()
            pool = forkpool.get_pool()
            with pool.connection() as conn:
                seen.append((id(pool), backend_pid(conn)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({pool_id for pool_id, _ in seen}) == 1
    assert len({pid for _, pid in seen}) <= 5
    assert count_settles(5) == 5
    # The server lists a session as soon as it is accepted, the pool counts it once
    # its connect() returns: the fifth may be between the two.
    pool = forkpool.get_pool()
    wait_for(lambda: pool.stats()[keys.CONNECTIONS_OPENED] >= 5, 10)
    assert pool.stats()[keys.CONNECTIONS_OPENED] == 5


def test_connection_commits_on_success_and_rolls_back_on_error(database_url):
    forkpool.configure(min_size=1, max_size=1)
    pool = forkpool.get_pool()
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS t_commit (v int)")  # temp: lives with the session
        cur.execute("INSERT INTO t_commit VALUES (1)")
    with pytest.raises(RuntimeError), pool.connection() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t_commit VALUES (2)")
        raise RuntimeError("boom")
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT array_agg(v) FROM t_commit")
        assert cur.fetchone()[0] == [1]
        assert transaction_status(conn) == "INTRANS"


def test_putconn_rolls_back_an_open_transaction_and_restores_autocommit():
    forkpool.configure(min_size=1, max_size=1)
    pool = forkpool.get_pool()
    conn = pool.getconn()
    conn.autocommit = True
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert transaction_status(conn) == "INTRANS"
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert transaction_status(again) == "IDLE"
    again.autocommit = True
    pool.putconn(again)
    assert pool.getconn().autocommit is False


def test_waiters_are_served_in_fifo_order():
    forkpool.configure(min_size=1, max_size=1, timeout=30)
    pool = forkpool.get_pool()
    assert pool.wait(10)
    held = pool.getconn()
    waits_before = pool.stats()[keys.WAITS]
    order: list[int] = []

    def take(i: int) -> None:
        with pool.connection():
            order.append(i)

    threads = []
    for i in range(8):
        t = threading.Thread(target=take, args=(i,))
        t.start()
        threads.append(t)
        # the next caller queues only once this one is queued
        assert wait_for(lambda: pool.stats()[keys.WAITING] == i + 1, 5)  # noqa: B023 - called at once, in this iteration
    pool.putconn(held)
    for t in threads:
        t.join(10)
    assert order == list(range(8))
    assert pool.stats()[keys.WAITS] - waits_before == 8


def test_pool_timeout_after_the_wait_never_before_never_hanging():
    forkpool.configure(min_size=2, max_size=2)
    pool = forkpool.get_pool()
    held = [pool.getconn(), pool.getconn()]
    started = time.monotonic()
    with pytest.raises(forkpool.PoolTimeout) as caught:
        pool.getconn(timeout=0.3)
    waited = time.monotonic() - started
    assert waited >= 0.3
    assert waited < 5  # bounded: the caller is not left hanging
    message = str(caught.value)
    assert "'default'" in message and "max_size 2" in message and "0.3 s" in message
    stats = pool.stats()
    assert stats[keys.TIMEOUTS] == 1 and stats[keys.WAITING] == 0
    for conn in held:
        pool.putconn(conn)
    with pool.connection(timeout=0.5):
        pass  # a timed-out waiter left no ghost in the queue


def test_timeouts_racing_handoffs_lose_no_connection_and_serve_no_one_twice():
    # Waits as long as a hold: many timeouts land just as a connection is handed over.
    forkpool.configure(min_size=2, max_size=2, timeout=30)
    pool = forkpool.get_pool()
    assert pool.wait(10)
    outcomes = {"served": 0, "timeouts": 0}
    holders: set[int] = set()
    guard = threading.Lock()

    def caller(seed: int) -> None:
        for i in range(150):
            try:
                conn = pool.getconn(timeout=0.0005 * ((seed + i) % 4))
            except forkpool.PoolTimeout:
                with guard:
                    outcomes["timeouts"] += 1
                continue
            with guard:
                assert id(conn) not in holders  # one connection, one holder
                holders.add(id(conn))
                outcomes["served"] += 1
            time.sleep(0.0002 * (i % 3))
            with guard:
                holders.discard(id(conn))
            pool.putconn(conn)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes["served"] + outcomes["timeouts"] == 8 * 150
    assert outcomes["timeouts"] > 0 and outcomes["served"] > 0  # both sides of the race ran
    stats = pool.stats()
    assert stats[keys.IN_USE] == 0 and stats[keys.WAITING] == 0 and stats[keys.IDLE] == 2
    assert stats[keys.TIMEOUTS] == outcomes["timeouts"] and stats[keys.CONNECTIONS_DISCARDED] == 0
    with pool.connection(timeout=1), pool.connection(timeout=1):
        pass  # both connections are there to take


@pytest.mark.parametrize("served_first", [False, True])
def test_a_waiter_interrupted_in_its_sleep_leaves_no_ghost_and_keeps_no_connection(monkeypatch, served_first):
    # KeyboardInterrupt lands in a sleeping caller: before it was served, or just as it was.
    from forkpool._pool import Waiter

    forkpool.configure(min_size=1, max_size=1, timeout=30)
    pool = forkpool.get_pool()
    held = pool.getconn()
    real_sleep = Waiter.sleep

    def interrupted(self, timeout):
        if served_first:
            real_sleep(self, timeout)
        raise KeyboardInterrupt

    monkeypatch.setattr(Waiter, "sleep", interrupted)
    caught: list[BaseException] = []

    def caller() -> None:
        try:
            pool.getconn()
        except KeyboardInterrupt as exc:
            caught.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    if served_first:
        assert wait_for(lambda: pool.stats()[keys.WAITING] == 1, 5)
        pool.putconn(held)
    t.join(10)
    assert len(caught) == 1
    stats = pool.stats()
    assert stats[keys.WAITING] == 0
    assert stats[keys.IN_USE] == (0 if served_first else 1)  # the served connection came back
    monkeypatch.setattr(Waiter, "sleep", real_sleep)
    if not served_first:
        pool.putconn(held)
    with pool.connection(timeout=1):
        pass


def test_max_waiting_bounds_the_queue():
    forkpool.configure(min_size=1, max_size=1, max_waiting=1)
    pool = forkpool.get_pool()
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pytest.raises(forkpool.PoolTimeout, pool.getconn, timeout=2))  # noqa: RUF061 - a lambda takes no with
    waiter.start()
    assert wait_for(lambda: pool.stats()[keys.WAITING] == 1, 5)
    with pytest.raises(forkpool.TooManyWaiting):
        pool.getconn(timeout=1)
    waiter.join(5)
    pool.putconn(held)


def test_putconn_rejects_a_foreign_connection(database_url):
    pool = forkpool.get_pool()
    stranger = psycopg2.connect(database_url)
    try:
        with pytest.raises(forkpool.PoolError, match="not checked out from this pool"):
            pool.putconn(stranger)
    finally:
        stranger.close()


def test_closed_pool_refuses_and_get_pool_builds_a_new_one(count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    assert pool.wait(10)
    forkpool.close_all()
    assert count_settles(0) == 0
    with pytest.raises(forkpool.PoolClosed):
        pool.getconn()
    fresh = forkpool.get_pool()
    assert fresh is not pool and fresh.wait(10)
    assert count_settles(2) == 2


def test_close_wakes_waiters_with_pool_closed():
    forkpool.configure(min_size=1, max_size=1)
    pool = forkpool.get_pool()
    held = pool.getconn()
    errors: list[BaseException] = []
    t = threading.Thread(
        target=lambda: errors.append(pytest.raises(forkpool.PoolClosed, pool.getconn, timeout=20).value)  # noqa: RUF061 - a lambda takes no with
    )
    t.start()
    assert wait_for(lambda: pool.stats()[keys.WAITING] == 1, 5)
    pool.close()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1
    pool.putconn(held)  # returned after close: closed, not pooled
    assert pool.stats()[keys.SIZE] == 0


def test_max_lifetime_replaces_connections_keeping_the_size(sessions):
    forkpool.configure(min_size=2, max_size=2, max_lifetime=0.5)
    pool = forkpool.get_pool()
    assert pool.wait(10)
    first = {pid for _, pid in sessions()}
    assert wait_for(lambda: pool.stats()[keys.CONNECTIONS_OPENED] >= 4, 10)
    assert wait_for(lambda: len(sessions()) == 2 and not first & {pid for _, pid in sessions()}, 10)
    assert pool.stats()[keys.SIZE] == 2


def test_max_idle_trims_down_to_min_size(count_settles):
    forkpool.configure(min_size=1, max_size=4, max_idle=0.3)
    pool = forkpool.get_pool()
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    assert pool.stats()[keys.SIZE] == 4
    assert wait_for(lambda: pool.stats()[keys.SIZE] == 1, 10)
    assert count_settles(1) == 1


def test_a_connection_held_too_long_is_reported_once_per_checkout_with_its_stack(caplog):
    forkpool.configure(min_size=1, max_size=1, leak_timeout=0.2)
    pool = forkpool.get_pool()
    caplog.set_level(logging.WARNING, logger="forkpool.pool")

    def forgetful_caller():
        return pool.getconn()

    def second_caller():
        return pool.getconn()

    conn = forgetful_caller()
    assert wait_for(lambda: pool.stats()[keys.LEAK_WARNINGS] == 1, 5)
    time.sleep(1.5)  # more maintenance rounds pass: still one report
    assert pool.stats()[keys.LEAK_WARNINGS] == 1
    pool.putconn(conn)
    # The same connection leaked again, back from idle through getconn()'s common path: a new report.
    again = second_caller()
    assert again is conn
    assert wait_for(lambda: pool.stats()[keys.LEAK_WARNINGS] == 2, 5)
    pool.putconn(again)
    reports = [r.getMessage() for r in caplog.records if "checked out for" in r.getMessage()]
    assert len(reports) == 2
    assert "forgetful_caller" in reports[0] and "second_caller" in reports[1] and "forgetful_caller" not in reports[1]


def test_application_name_carries_suite_role_and_pid(sessions, suite_id, monkeypatch):
    import os

    monkeypatch.setenv("PROCESS_ROLE", "web")
    forkpool.configure(min_size=1, max_size=1)
    assert forkpool.get_pool().wait(10)
    assert sessions() and all(name == f"{suite_id}:web:{os.getpid()}" for name, _ in sessions())
    forkpool.close_all()
    forkpool.identity.set_process_role("reporting")
    assert forkpool.get_pool().wait(10)
    assert wait_for(lambda: [n for n, _ in sessions()] == [f"{suite_id}:reporting:{os.getpid()}"], 5)


def test_application_name_is_truncated_without_losing_the_pid():
    forkpool.identity.set_identity(name="s" * 80, role="r" * 40)
    name = forkpool.identity.application_name(pid=4194304)
    assert len(name) <= 63
    assert name.endswith(":4194304")
    assert name.count(":") == 2 and name.startswith("s") and ":r" in name


def test_a_host_label_joins_the_role_and_is_never_truncated(monkeypatch):
    monkeypatch.setenv("HOST_LABEL", "h2")
    forkpool.identity.set_identity(name="run1", role="web")
    assert forkpool.identity.application_name(pid=42) == "run1:web@h2:42"
    forkpool.identity.set_identity(name="s" * 80, role="r" * 40)
    name = forkpool.identity.application_name(pid=4194304)
    assert len(name) <= 63 and name.endswith("@h2:4194304") and name.count(":") == 2
    monkeypatch.setenv("HOST_LABEL", "auto")  # the machine's short host name, cleaned
    import socket

    assert forkpool.identity.application_name(pid=1).endswith(f"@{socket.gethostname().split('.')[0][:20]}:1")
    monkeypatch.setenv("HOST_LABEL", "")
    assert "@" not in forkpool.identity.application_name(pid=1)  # one host: the name is as it always was


def test_the_pool_hands_out_connections_of_the_configured_driver(driver):
    pool = forkpool.get_pool()
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        module = type(conn).__module__.split(".")[0]
    assert pool.driver.name == driver and module == driver


def test_an_unknown_or_missing_driver_is_one_configuration_error(monkeypatch):
    monkeypatch.setenv("DB_POOL_DRIVER", "pg8000")
    with pytest.raises(forkpool.ConfigError, match="DB_POOL_DRIVER='pg8000' must be one of psycopg2, psycopg, asyncpg"):
        forkpool.configure()


def test_asyncpg_is_the_asyncio_pools_only_and_the_threaded_pool_says_so(monkeypatch):
    monkeypatch.setenv("DB_POOL_DRIVER", "asyncpg")
    forkpool.configure()  # valid: the asyncio pool takes it
    with pytest.raises(forkpool.ConfigError, match="serves forkpool's asyncio pool only"):
        forkpool.get_pool()
