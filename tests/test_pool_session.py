"""The pools' session state and per-connection hooks: a returned connection goes back to the state
the pool was configured with; ``configure=`` and ``reset=`` run on each new / returned connection
(real PostgreSQL, both drivers, the threaded and the asyncio pool).

What goes over the wire is read from a relay in front of the server (tests/wire_log.py): exact,
where the server's transaction counters would be flushed late and not tell BEGIN ... COMMIT from
an autocommit statement.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import forkpool
from forkpool import _base as keys
from forkpool.settings import PoolSettings, build_settings, session_of, settings_from_env
from tests.conftest import transaction_status
from tests.wire_log import WireLog

# The pre-use check (a SELECT 1 after check_idle seconds idle) would add a statement on a slow machine.
QUIET = {"min_size": 1, "max_size": 1, "check_idle": 3600}


@pytest.fixture
def wire(database_url):
    with WireLog(database_url) as log:
        yield log


def select_1(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def show(conn, setting: str) -> str:
    with conn.cursor() as cur:
        cur.execute(f"SHOW {setting}")
        return cur.fetchone()[0]


def backend_pid(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def read_only(conn) -> bool | None:
    return getattr(conn, "readonly", None) if hasattr(conn, "readonly") else conn.read_only


# -- the threaded pool, both drivers ------------------------------------------------------------


@pytest.mark.usefixtures("driver")
@pytest.mark.parametrize("how", ["setting", "connect_kwargs"])
def test_autocommit_checkouts_send_no_begin_and_no_rollback(wire, database_url, how):
    given = {"autocommit": True} if how == "setting" else {"connect_kwargs": {"autocommit": True}}
    forkpool.configure(dsn=wire.url(database_url), **QUIET, **given)
    pool = forkpool.get_pool()
    assert pool.open(wait=True, timeout=10)
    wire.clear()
    for _ in range(3):
        with pool.connection() as conn:
            assert conn.autocommit is True
            select_1(conn)
    assert wire.statements() == ["SELECT 1"] * 3


@pytest.mark.usefixtures("driver")
def test_without_autocommit_each_checkout_is_a_transaction(wire, database_url):
    """The contrast (and main's behaviour for a user who wants autocommit): BEGIN, the query, COMMIT."""
    forkpool.configure(dsn=wire.url(database_url), **QUIET)
    pool = forkpool.get_pool()
    assert pool.open(wait=True, timeout=10)
    wire.clear()
    with pool.connection() as conn:
        select_1(conn)
    assert [s.upper() for s in wire.statements()] == ["BEGIN", "SELECT 1", "COMMIT"]


@pytest.mark.usefixtures("driver")
def test_a_connection_changed_by_its_user_comes_back_in_the_configured_state(wire, database_url):
    forkpool.configure(dsn=wire.url(database_url), autocommit=True, isolation_level="repeatable read", **QUIET)
    pool = forkpool.get_pool()
    conn = pool.getconn()
    conn.autocommit = False
    conn.isolation_level = None
    select_1(conn)  # a transaction left open
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn and transaction_status(again) == "IDLE"
    assert again.autocommit is True
    assert getattr(again.isolation_level, "name", again.isolation_level) in ("REPEATABLE_READ", 2)  # psycopg 3, 2
    wire.clear()
    select_1(again)
    assert wire.statements() == ["SELECT 1"]  # autocommit again: nothing around the query
    pool.putconn(again)


@pytest.mark.usefixtures("driver")
def test_read_only_is_restored_on_return_and_seen_by_the_server(driver):
    forkpool.configure(read_only=True, **QUIET)
    pool = forkpool.get_pool()
    conn = pool.getconn()
    assert show(conn, "transaction_read_only") == "on"
    conn.rollback()
    if driver == "psycopg2":
        conn.readonly = False
    else:
        conn.read_only = False
    assert show(conn, "transaction_read_only") == "off"
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn and read_only(again) is True
    assert show(again, "transaction_read_only") == "on"
    pool.putconn(again)


@pytest.mark.usefixtures("driver")
def test_a_default_pool_undoes_what_its_user_changed(driver):
    """Nothing configured: the server's defaults. A user's read-only switch does not reach the next user."""
    forkpool.configure(**QUIET)
    pool = forkpool.get_pool()
    conn = pool.getconn()
    conn.autocommit = True
    if driver == "psycopg2":
        conn.readonly = True
    else:
        conn.read_only = True
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn and again.autocommit is False and read_only(again) is None
    assert show(again, "transaction_read_only") == "off"
    pool.putconn(again)


SESSIONS = {
    "default": {},
    "autocommit": {"autocommit": True},
    "all four": {"autocommit": True, "isolation_level": "serializable", "read_only": True, "deferrable": True},
    "in transactions": {"isolation_level": "read committed", "read_only": False, "deferrable": False},
}


@pytest.mark.usefixtures("driver")
@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_a_connection_left_as_lent_takes_the_one_question_return(session):
    """The common return costs attribute reads, not a reset: a connection in the configured state passes
    putconn()'s check as it was lent, and after a query and a commit."""
    forkpool.configure(**session, **QUIET)
    pool = forkpool.get_pool()
    conn = pool.getconn()
    assert pool._is_clean(conn)  # the hot path's own predicate
    select_1(conn)
    conn.commit()
    assert pool._is_clean(conn)
    pool.putconn(conn)


@pytest.mark.usefixtures("driver")
def test_configure_runs_once_on_each_new_connection_before_it_is_lent():
    seen: list[int] = []

    def set_path(conn) -> None:
        seen.append(backend_pid(conn))
        with conn.cursor() as cur:
            cur.execute("SET search_path TO pg_catalog, public")
        conn.commit()

    forkpool.configure(configure=set_path, min_size=0, max_size=2, check_idle=3600)
    pool = forkpool.get_pool()
    first, second = pool.getconn(), pool.getconn()
    for conn in (first, second):
        assert show(conn, "search_path") == "pg_catalog, public"
        conn.rollback()
        pool.putconn(conn)
    with pool.connection() as conn:
        assert backend_pid(conn) in seen
    assert sorted(seen) == sorted({backend_pid(first), backend_pid(second)})  # once each, two connections
    assert pool.stats()[keys.CONNECTIONS_OPENED] == 2


@pytest.mark.usefixtures("driver")
def test_a_failing_configure_is_the_pools_connect_error_and_leaves_no_session(count_settles):
    def broken(conn) -> None:
        raise ValueError("no such schema")

    forkpool.configure(configure=broken, min_size=0, max_size=1, timeout=5)
    pool = forkpool.get_pool()
    with pytest.raises(forkpool.ConnectError) as raised:
        pool.getconn()
    message = str(raised.value)
    assert "configure hook" in message and "broken" in message and "ValueError: no such schema" in message
    assert "\n" not in message
    assert pool.stats()[keys.CONNECT_ERRORS] >= 1 and pool.stats()[keys.SIZE] == 0
    assert count_settles(0) == 0  # the connection was closed, not leaked


@pytest.mark.usefixtures("driver")
def test_a_configure_that_leaves_a_transaction_open_is_refused():
    forkpool.configure(configure=select_1, min_size=0, max_size=1, timeout=5)
    with pytest.raises(forkpool.ConnectError, match="left a transaction open"):
        forkpool.get_pool().getconn()


@pytest.mark.usefixtures("driver")
def test_reset_runs_on_each_return_and_a_failing_one_discards_the_connection(caplog):
    calls: list[int] = []
    fail = [False]

    def reset(conn) -> None:
        calls.append(backend_pid(conn))
        conn.rollback()
        if fail[0]:
            raise RuntimeError("reset failed")

    forkpool.configure(reset=reset, **QUIET)
    pool = forkpool.get_pool()
    with pool.connection() as conn:
        first = backend_pid(conn)
    with pool.connection() as conn:
        assert backend_pid(conn) == first  # reset went fine: the same connection
    assert calls == [first, first]
    fail[0] = True
    with caplog.at_level(logging.WARNING, logger="forkpool.pool"), pool.connection() as conn:
        pass
    assert "reset hook" in caplog.text and "discarded" in caplog.text
    fail[0] = False
    with pool.connection() as conn:
        assert backend_pid(conn) != first  # the failed one was replaced
    assert pool.stats()[keys.CONNECTIONS_DISCARDED] == 1


@pytest.mark.usefixtures("driver")
def test_a_reset_that_leaves_a_transaction_open_discards_the_connection():
    forkpool.configure(reset=select_1, **QUIET)
    pool = forkpool.get_pool()
    with pool.connection() as conn:
        first = backend_pid(conn)
    with pool.connection() as conn:
        assert backend_pid(conn) != first
    assert pool.stats()[keys.CONNECTIONS_DISCARDED] >= 1


@pytest.mark.usefixtures("driver")
def test_pool_for_takes_the_session_and_the_hooks(database_url):
    seen: list[object] = []
    pool = forkpool.pool_for(database_url, autocommit=True, configure=seen.append, min_size=0, max_size=1)
    with pool.connection() as conn:
        assert conn.autocommit is True and seen == [conn]
    assert forkpool.pool_for(database_url, autocommit=True, configure=seen.append, min_size=0, max_size=1) is pool
    assert forkpool.pool_for(database_url, min_size=0, max_size=1) is not pool


# -- the asyncio pool (psycopg 3) -----------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def psycopg3():
    return pytest.importorskip("psycopg")


def test_async_autocommit_checkouts_send_no_begin_and_no_rollback(psycopg3, wire, database_url):
    forkpool.configure(dsn=wire.url(database_url), autocommit=True, **QUIET)

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.open(wait=True, timeout=10)
        wire.clear()
        for _ in range(3):
            async with pool.connection() as conn:
                assert conn.autocommit is True
                await conn.execute("SELECT 1")
        await forkpool.close_async_pools()

    run(main())
    assert wire.statements() == ["SELECT 1"] * 3


def test_async_connection_changed_by_its_user_comes_back_in_the_configured_state(psycopg3, wire, database_url):
    forkpool.configure(dsn=wire.url(database_url), autocommit=True, read_only=True, **QUIET)

    async def main():
        pool = await forkpool.get_async_pool()
        conn = await pool.getconn()
        await conn.set_autocommit(False)
        await conn.set_read_only(False)
        await conn.execute("SELECT 1")  # a transaction left open
        await pool.putconn(conn)
        again = await pool.getconn()
        state = (again is conn, again.autocommit, again.read_only, again.info.transaction_status.name)
        wire.clear()
        await again.execute("SELECT 1")
        await pool.putconn(again)
        await forkpool.close_async_pools()
        return state

    assert run(main()) == (True, True, True, "IDLE")
    assert wire.statements() == ["SELECT 1"]


@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_async_connection_left_as_lent_takes_the_return_without_await(psycopg3, session):
    forkpool.configure(**session, **QUIET)

    async def main():
        pool = await forkpool.get_async_pool()
        conn = await pool.getconn()
        lent = pool._is_clean(conn)  # the hot path's own predicate
        await conn.execute("SELECT 1")
        await conn.commit()
        after = pool._is_clean(conn)
        await pool.putconn(conn)
        await forkpool.close_async_pools()
        return lent, after

    assert run(main()) == (True, True)


def test_async_configure_and_reset_hooks_may_be_coroutines_or_plain(psycopg3):
    configured: list[int] = []
    resets: list[int] = []

    async def configure(conn) -> None:
        await conn.execute("SET search_path TO pg_catalog, public")
        await conn.commit()
        configured.append(conn.info.backend_pid)

    def reset(conn) -> None:
        resets.append(conn.info.backend_pid)

    forkpool.configure(configure=configure, reset=reset, **QUIET)

    async def main():
        pool = await forkpool.get_async_pool()
        for _ in range(2):
            async with pool.connection() as conn:
                cur = await conn.execute("SHOW search_path")
                assert (await cur.fetchone())[0] == "pg_catalog, public"
                pid = conn.info.backend_pid
        await forkpool.close_async_pools()
        return pid

    pid = run(main())
    assert configured == [pid] and resets == [pid, pid]


def test_async_failing_hooks_surface_as_connect_error_or_discard(psycopg3, count_settles):
    async def broken(conn) -> None:
        raise ValueError("no adapters")

    forkpool.configure(configure=broken, min_size=0, max_size=1, timeout=5)

    async def failing_configure():
        pool = await forkpool.get_async_pool()
        with pytest.raises(forkpool.ConnectError, match=r"configure hook .*broken.* ValueError: no adapters"):
            await pool.getconn()
        errors = pool.stats()[keys.CONNECT_ERRORS]
        await forkpool.close_async_pools()
        return errors

    assert run(failing_configure()) >= 1
    assert count_settles(0) == 0

    forkpool._registry.configured().clear()

    async def bad_reset(conn) -> None:
        raise RuntimeError("reset failed")

    forkpool.configure(reset=bad_reset, **QUIET)

    async def failing_reset():
        pool = await forkpool.get_async_pool()
        async with pool.connection() as conn:
            first = conn.info.backend_pid
        async with pool.connection() as conn:
            second = conn.info.backend_pid
        discarded = pool.stats()[keys.CONNECTIONS_DISCARDED]
        await forkpool.close_async_pools()
        return first, second, discarded

    first, second, discarded = run(failing_reset())
    assert first != second and discarded >= 1


# -- settings ------------------------------------------------------------------------------------


def test_session_settings_from_the_environment():
    env = {
        "DB_POOL_AUTOCOMMIT": "yes",
        "DB_POOL_ISOLATION_LEVEL": "REPEATABLE_READ",
        "DB_POOL_READ_ONLY": "1",
        "DB_POOL_DEFERRABLE": "off",
    }
    settings = build_settings(**settings_from_env(env))
    session = session_of(settings)
    assert (session.autocommit, session.isolation_level, session.read_only, session.deferrable) == (
        True,
        "repeatable read",
        True,
        False,
    )


def test_bad_session_settings_are_one_line_config_errors():
    with pytest.raises(forkpool.ConfigError, match="not an isolation level") as raised:
        settings_from_env({"DB_POOL_ISOLATION_LEVEL": "snapshot"})
    assert "\n" not in str(raised.value)
    with pytest.raises(forkpool.ConfigError, match="yes/no"):
        settings_from_env({"DB_POOL_AUTOCOMMIT": "sometimes"})
    with pytest.raises(forkpool.ConfigError, match="contradicts"):
        build_settings(autocommit=True, connect_kwargs={"autocommit": False})
    with pytest.raises(forkpool.ConfigError, match="must be a function"):
        build_settings(configure="SET search_path TO x")
    with pytest.raises(forkpool.ConfigError, match="True or False"):
        build_settings(connect_kwargs={"readonly": "yes"})


def test_session_keys_of_connect_kwargs_become_the_session_and_not_libpq_parameters():
    from forkpool._base import connect_params

    settings = build_settings(connect_kwargs={"autocommit": True, "readonly": True, "options": "-c x=1"})
    assert session_of(settings).autocommit is True and session_of(settings).read_only is True
    params = connect_params(settings, 5)
    assert "autocommit" not in params and "readonly" not in params and params["options"] == "-c x=1"
    assert "configure" not in repr(PoolSettings(configure=print))


@pytest.mark.usefixtures("driver")
def test_pool_and_async_pool_take_the_hooks_as_arguments(database_url, driver):
    from forkpool.settings import build_settings

    seen: list[str] = []
    settings = build_settings(dsn=database_url, min_size=0, max_size=1, driver=driver)
    pool = forkpool.Pool(
        settings, "hooked", configure=lambda conn: seen.append("configure"), reset=lambda conn: seen.append("reset")
    )
    try:
        with pool.connection() as conn:
            select_1(conn)
    finally:
        pool.close()
    assert seen == ["configure", "reset"] and pool.settings.configure is not None
    with pytest.raises(forkpool.ConfigError, match="must be a function"):
        forkpool.Pool(settings, "bad", reset="DISCARD ALL")
    if driver != "psycopg":
        return

    async def main():
        async def on_connect(conn) -> None:
            seen.append("async configure")

        apool = forkpool.AsyncPool(settings, "hooked-async", configure=on_connect)
        try:
            async with apool.connection() as conn:
                await conn.execute("SELECT 1")
        finally:
            await apool.close()

    run(main())
    assert seen[-1] == "async configure"
