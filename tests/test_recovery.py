"""Broken connections are discarded and replaced; a server restart never reaches callers."""

from __future__ import annotations

import threading

import pytest

import forkpool
from forkpool import stats as keys
from tests.conftest import wait_for

# Every test here runs once per driver (psycopg2, psycopg 3): the same guarantees for both.
pytestmark = pytest.mark.usefixtures("driver")


def query_backend_pid(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def test_connection_killed_while_in_use_is_discarded_never_reused(admin):
    forkpool.configure(min_size=1, max_size=1)
    pool = forkpool.get_pool()
    conn = pool.getconn()
    admin("SELECT pg_terminate_backend(%s)", query_backend_pid(conn))
    with pytest.raises(pool.driver.Error):
        query_backend_pid(conn)
    pool.putconn(conn)
    stats = pool.stats()
    assert stats[keys.CONNECTIONS_DISCARDED] == 1 and stats[keys.SIZE] == 0
    replacement = pool.getconn(timeout=10)
    assert replacement is not conn and not replacement.closed
    query_backend_pid(replacement)
    pool.putconn(replacement)


def test_idle_connection_killed_by_the_server_is_never_handed_out(admin):
    forkpool.configure(min_size=3, max_size=3, check_idle=3600)  # the time threshold never fires
    pool = forkpool.get_pool()
    assert pool.wait(10)
    conns = [pool.getconn() for _ in range(3)]
    victims = [query_backend_pid(c) for c in conns]
    for conn in conns:
        pool.putconn(conn)
    for pid in victims:
        admin("SELECT pg_terminate_backend(%s)", pid)
    assert wait_for(lambda: not admin("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", victims), 5)
    for _ in range(3):
        with pool.connection() as conn:
            assert query_backend_pid(conn) not in victims
    assert pool.stats()[keys.CONNECTIONS_DISCARDED] == 3


def test_server_restart_does_not_surface_to_callers_after_it(pg_server, count_settles, suite_id):
    if pg_server is None:
        pytest.skip("needs the embedded server: an external DATABASE_URL cannot be restarted by the tests")
    forkpool.configure(min_size=4, max_size=4, check_idle=3600)
    pool = forkpool.get_pool()
    assert pool.wait(10)
    pg_server.restart()
    failures: list[BaseException] = []

    def caller() -> None:
        try:
            with pool.connection(timeout=15) as conn:
                query_backend_pid(conn)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert pool.stats()[keys.CONNECTIONS_DISCARDED] >= 1
    assert wait_for(lambda: pool.stats()[keys.SIZE] == 4, 10)
    assert count_settles(4) == 4


def test_pool_reconnects_in_the_background_after_an_outage(pg_server, count_settles):
    if pg_server is None:
        pytest.skip("needs the embedded server: an external DATABASE_URL cannot be stopped by the tests")
    forkpool.configure(min_size=2, max_size=2, connect_timeout=1)
    pg_server.stop()
    try:
        pool = forkpool.get_pool()
        assert pool.open(wait=True, timeout=1) is False  # down: open() returns, it does not hang
        with pytest.raises(forkpool.ConnectError):
            pool.getconn(timeout=1)
        assert wait_for(lambda: pool.stats()[keys.CONNECT_ERRORS] >= 2, 5)
    finally:
        pg_server.start()
    assert wait_for(lambda: pool.stats()[keys.SIZE] == 2, 20)
    assert count_settles(2) == 2


def test_callers_fail_fast_while_the_database_is_down_not_after_the_timeout(pg_server):
    if pg_server is None:
        pytest.skip("needs the embedded server's port")
    import time

    dead = pg_server.url.replace(f":{pg_server.port}/", ":1/")  # nothing listens there
    forkpool.configure(dsn=dead, min_size=3, max_size=3, timeout=30)
    pool = forkpool.get_pool()  # the maintainer starts reserving slots and connecting right away
    errors: list[BaseException] = []
    waited: list[float] = []

    def caller() -> None:
        started = time.monotonic()
        try:
            pool.getconn()
        except forkpool.ConnectError as exc:
            errors.append(exc)
        waited.append(time.monotonic() - started)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(errors) == 8
    assert all("cannot connect" in str(e) for e in errors)
    assert max(waited) < 10  # failed fast, not after the 30 s wait


@pytest.mark.parametrize("just_returned, polls", [(60.0, 0), (0.0, 50)])
def test_only_a_connection_back_for_a_moment_skips_the_socket_poll(monkeypatch, just_returned, polls):
    # The constant is widened / zeroed so the test does not depend on how fast this machine is.
    import forkpool._pool
    from forkpool._base import Entry

    monkeypatch.setattr(forkpool._pool, "JUST_RETURNED", just_returned)
    calls = []
    real = Entry.socket_has_news
    monkeypatch.setattr(Entry, "socket_has_news", lambda self: calls.append(1) or real(self))
    forkpool.configure(min_size=1, max_size=1, check_idle=3600)
    pool = forkpool.get_pool()
    assert pool.wait(10)
    for _ in range(50):
        pool.putconn(pool.getconn())
    assert len(calls) == polls
    assert pool.stats()[keys.CONNECTIONS_DISCARDED] == 0


def test_maintainer_replaces_idle_connections_the_server_ended_without_a_caller(admin, count_settles, suite_id):
    """A session ended on the server (or by a keepalive timeout) is replaced in the next round, not
    found by the next caller: the pool is full again on its own."""
    forkpool.configure(min_size=2, max_size=2, check_idle=3600)
    pool = forkpool.get_pool()
    assert pool.wait(10) and count_settles(2) == 2
    admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s", f"{suite_id}:%")
    assert wait_for(lambda: pool.stats()[keys.CONNECTIONS_DISCARDED] == 2, timeout=10)
    # The server lists a new session before the pool counts it (connect() still returning).
    assert count_settles(2) == 2 and wait_for(lambda: pool.stats()[keys.SIZE] == 2, timeout=10)
    assert pool.stats()[keys.CHECKOUTS] == 0  # nobody had to find them dead
