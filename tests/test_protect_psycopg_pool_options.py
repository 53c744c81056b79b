"""forkpool.protect() takes every psycopg_pool pool psycopg_pool takes, and is all-or-nothing.

Each option a user passes (psycopg's own connection arguments in ``kwargs``,
a ``connection_class``, the ``configure`` / ``check`` / ``reset`` callbacks,
a ``name``, a callable conninfo or kwargs) is protected on a real PostgreSQL,
sync and async, and survives the rebuild in a forked child: the child's
connection is autocommit, has the row factory, was configured by the
callback, is of the connection class. A protect() that cannot be done raises
one line (ConfigError) and leaves the pool as it was.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed: pip install 'forkpool[psycopg_pool]'")
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import forkpool
from forkpool import _protect as protection
from tests.conftest import wait_for
from tests.protect_support import in_child

CALLS: list[str] = []  # what the callbacks saw, in this process


class MyConnection(psycopg.Connection):
    pass


class MyAsyncConnection(psycopg.AsyncConnection):
    pass


def _configure(conn: psycopg.Connection) -> None:
    CALLS.append("configure")
    conn.execute("SET statement_timeout = '4321ms'")


def _check(conn: psycopg.Connection) -> None:
    CALLS.append("check")
    conn.execute("SELECT 1")


def _reset(conn: psycopg.Connection) -> None:
    CALLS.append("reset")


async def _aconfigure(conn: psycopg.AsyncConnection) -> None:
    CALLS.append("configure")
    await conn.execute("SET statement_timeout = '4321ms'")


async def _acheck(conn: psycopg.AsyncConnection) -> None:
    CALLS.append("check")
    await conn.execute("SELECT 1")


async def _areset(conn: psycopg.AsyncConnection) -> None:
    CALLS.append("reset")


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


OPTIONS = {"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0}
QUERY = (
    "SELECT pg_backend_pid() AS backend, current_setting('application_name') AS name,"
    " current_setting('statement_timeout') AS timeout"
)


def _describe(conn, row: dict, name: str) -> str:
    return (
        f"{row['backend']} {row['name']} {row['timeout']} autocommit={conn.autocommit} "
        f"class={type(conn).__name__} prepare={conn.prepare_threshold} pool={name}"
    )


def _calls() -> str:
    wait_for(lambda: "reset" in CALLS, timeout=10)  # a sync pool resets a returned connection in its worker
    return f" calls={','.join(sorted(set(CALLS)))}"


def _callables_supported(callable_args: bool) -> None:
    from importlib.metadata import version

    if callable_args and tuple(int(p) for p in version("psycopg-pool").split(".")[:2]) < (3, 3):
        pytest.skip("a callable conninfo or kwargs needs psycopg_pool 3.3")


def _sync_pool(database_url: str, callable_args: bool) -> ConnectionPool:
    _callables_supported(callable_args)
    conninfo = (lambda: database_url) if callable_args else database_url
    kwargs = (lambda: dict(OPTIONS)) if callable_args else dict(OPTIONS)
    return ConnectionPool(
        conninfo,
        kwargs=kwargs,
        connection_class=MyConnection,
        configure=_configure,
        check=_check,
        reset=_reset,
        name="options-pool",
        min_size=1,
        max_size=1,
        timeout=5,
        open=False,
    )


def _async_pool(database_url: str, callable_args: bool) -> AsyncConnectionPool:
    _callables_supported(callable_args)

    async def conninfo() -> str:
        return database_url

    async def kwargs() -> dict:
        return dict(OPTIONS)

    return AsyncConnectionPool(
        conninfo if callable_args else database_url,
        kwargs=kwargs if callable_args else dict(OPTIONS),
        connection_class=MyAsyncConnection,
        configure=_aconfigure,
        check=_acheck,
        reset=_areset,
        name="options-pool",
        min_size=1,
        max_size=1,
        timeout=5,
        open=False,
    )


def _sync_use(pool: ConnectionPool) -> str:
    with pool.connection() as conn:
        described = _describe(conn, conn.execute(QUERY).fetchone(), pool.name)
    return described + _calls()


async def _async_use(pool: AsyncConnectionPool) -> str:
    async with pool.connection() as conn:
        described = _describe(conn, await (await conn.execute(QUERY)).fetchone(), pool.name)
    for _ in range(1000):  # the pool's own task resets a returned connection: let it run
        if "reset" in CALLS:
            break
        await asyncio.sleep(0.01)
    return described + _calls()


def _expect(report: str, suite_id: str, parent_backend: int | None = None) -> int:
    backend, name, timeout, *rest = report.split()
    assert name.startswith(f"{suite_id}:") and timeout == "4321ms", report
    assert rest[:4] == ["autocommit=True", f"class={rest[1][6:]}", "prepare=0", "pool=options-pool"], report
    assert rest[1] in ("class=MyConnection", "class=MyAsyncConnection"), report
    assert rest[4] == "calls=check,configure,reset", report
    if parent_backend is not None:
        assert int(backend) != parent_backend, report
    return int(backend)


@pytest.mark.parametrize("callable_args", [False, True], ids=["values", "callables"])
def test_a_sync_pool_keeps_every_option_in_a_forked_child(
    callable_args, database_url, suite_id, sessions, forget_protected
):
    pool = forkpool.protect(_sync_pool(database_url, callable_args), eager=False)
    CALLS.clear()
    pool.open(wait=True)
    parent = _expect(_sync_use(pool), suite_id)

    def child() -> str:
        CALLS.clear()
        protection.warm_all(time.monotonic() + 10)  # what post_fork / worker_process_init do
        return _sync_use(pool)

    report = in_child(child)
    assert not report.startswith("error"), report
    _expect(report, suite_id, parent)
    assert _expect(_sync_use(pool), suite_id) == parent  # the parent's session survived the child
    assert wait_for(lambda: [b for _, b in sessions()] == [parent], timeout=10), sessions()
    pool.close()


@pytest.mark.parametrize("callable_args", [False, True], ids=["values", "callables"])
def test_an_async_pool_keeps_every_option_in_a_forked_child(
    callable_args, database_url, suite_id, sessions, forget_protected
):
    loop = asyncio.new_event_loop()
    pool = forkpool.protect(_async_pool(database_url, callable_args))
    CALLS.clear()
    loop.run_until_complete(pool.open(wait=True))
    parent = _expect(loop.run_until_complete(_async_use(pool)), suite_id)

    def child() -> str:
        CALLS.clear()

        async def work() -> str:
            await pool.open(wait=True, timeout=10)  # the app's lifespan, in the child's own loop
            return await _async_use(pool)

        return asyncio.run(work())

    report = in_child(child)
    assert not report.startswith("error"), report
    _expect(report, suite_id, parent)
    assert _expect(loop.run_until_complete(_async_use(pool)), suite_id) == parent
    assert wait_for(lambda: [b for _, b in sessions()] == [parent], timeout=10), sessions()
    loop.run_until_complete(pool.close())
    loop.close()


def test_an_async_pool_opened_in_its_constructor_is_protected_with_psycopg_arguments(
    database_url, suite_id, forget_protected
):
    # Once: ProgrammingError 'invalid connection option "autocommit"', and the open pool hung asyncio.run's end.
    async def main() -> str:
        async with AsyncConnectionPool(
            database_url, kwargs={"autocommit": True}, min_size=1, max_size=1, timeout=5
        ) as pool:
            forkpool.protect(pool)
            async with pool.connection() as conn:
                return f"{conn.autocommit} {(await (await conn.execute(QUERY)).fetchone())[1]}"

    autocommit, name = asyncio.run(asyncio.wait_for(main(), 30)).split()
    assert autocommit == "True" and name.startswith(f"{suite_id}:")


def _state(pool) -> tuple:
    return type(pool), dict(vars(pool)), pool.kwargs, dict(pool.kwargs or {})


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failing_protect_leaves_the_pool_untouched_and_says_one_line(kind, forget_protected):
    cls = ConnectionPool if kind == "sync" else AsyncConnectionPool
    pool = cls(
        "host=localhost password=hunter2 port=not-a-number =oops",
        kwargs={"autocommit": True},
        min_size=1,
        max_size=1,
        open=False,
    )
    before = _state(pool)
    with pytest.raises(forkpool.ConfigError) as caught:
        forkpool.protect(pool)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and "hunter2" not in message, message
    assert message.startswith("forkpool.protect: cannot protect psycopg_pool"), message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert _state(pool) == before and pool.kwargs is before[2]
    assert not hasattr(pool, "_forkpool_naming") and not hasattr(pool, "_forkpool_open")
    assert protection.protected() == []


def test_a_pool_forkpool_cannot_rebuild_is_refused_untouched(database_url, forget_protected):
    pool = ConnectionPool(database_url, kwargs={"autocommit": True}, min_size=1, max_size=1, open=False)
    del pool._reconnect_failed  # as a psycopg_pool would that keeps this argument elsewhere
    before = _state(pool)
    with pytest.raises(forkpool.ConfigError) as caught:
        forkpool.protect(pool)
    assert "'reconnect_failed'" in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert _state(pool) == before and protection.protected() == []


def test_an_attach_that_fails_half_way_is_undone(database_url, forget_protected):
    from forkpool._integrations.psycopg_pool import INTEGRATION

    class HalfWay:
        name = "half-way"

        def attach(self, obj):
            obj.kwargs = {**obj.kwargs, "application_name": "changed"}
            obj.timeout = 99
            obj._forkpool_open = True
            raise RuntimeError("lost on the way\nTraceback (most recent call last):\n  password=hunter2")

        def __getattr__(self, name):
            return getattr(INTEGRATION, name)

    pool = ConnectionPool(database_url, kwargs={"autocommit": True}, min_size=1, max_size=1, open=False)
    before = _state(pool)
    with pytest.raises(forkpool.ConfigError) as caught:
        forkpool.protect(pool, HalfWay())
    assert str(caught.value) == (
        "forkpool.protect: cannot protect psycopg_pool.pool.ConnectionPool (half-way): RuntimeError: lost on the way"
    )
    assert _state(pool) == before and pool.timeout == 30 and protection.protected() == []


def test_a_refused_async_pool_is_left_for_its_own_close_and_the_loop_ends(forget_protected):
    # An open async pool nobody closes keeps asyncio.run() from ending (psycopg_pool's workers):
    # a refused protect() leaves the pool as it was, so the app's `async with` closes it.
    async def main() -> str:
        async with AsyncConnectionPool(
            "host=localhost password=hunter2 =oops", min_size=1, max_size=1, timeout=1, reconnect_timeout=1
        ) as pool:
            try:
                forkpool.protect(pool)
            except forkpool.ConfigError as exc:
                return str(exc)
        return "protected"

    message = asyncio.run(asyncio.wait_for(main(), 30))
    assert message.startswith("forkpool.protect: cannot protect") and "hunter2" not in message, message
    assert protection.protected() == []
