"""forkpool.protect(pool) for asyncpg pools, in-process: the same object works in a forked child's own loop.

An asyncpg pool belongs to the loop it was made in: unprotected, a child that
uses its parent's pool talks through the parent's sessions or fails. Protected,
the child's first use opens the pool in the child's own loop with every option
the app gave (callbacks, connection and record classes, server settings), the
parent's sessions survive the child, a master's release ends its sessions
(in the pool's loop, or on the socket when that loop is gone) and leaves the
pool openable, and a protect() that cannot be done leaves the pool as it was.
The Gunicorn runs are in tests/test_protect_asgi_servers.py.
"""

from __future__ import annotations

import asyncio

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install asyncpg")

import forkpool  # noqa: E402
from forkpool import _protect as protection  # noqa: E402
from forkpool import identity  # noqa: E402
from forkpool._integrations.asyncpg import INTEGRATION  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.protect_support import in_child  # noqa: E402

QUERY = "SELECT pg_backend_pid(), current_setting('application_name'), current_setting('statement_timeout')"
CALLS: list[str] = []


class MyConnection(asyncpg.Connection):
    pass


class MyRecord(asyncpg.Record):
    pass


async def _init(conn) -> None:
    CALLS.append("init")
    await conn.execute("SET statement_timeout = '4321ms'")


async def _setup(conn) -> None:
    CALLS.append("setup")


async def _reset(conn) -> None:
    CALLS.append("reset")


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


def _pool(database_url: str, **extra):
    return asyncpg.create_pool(database_url, **{"min_size": 2, "max_size": 2, **extra})


async def _opened(database_url: str, protect: bool = True, **extra):
    pool = _pool(database_url, **extra)  # made in the running loop, as asyncpg wants
    if protect:
        forkpool.protect(pool)  # before it opens: its connections carry this process's identity
    return await pool


async def _backends(pool) -> set[int]:
    held = [await pool.acquire(timeout=5) for _ in range(2)]
    try:
        return {await conn.fetchval("SELECT pg_backend_pid()") for conn in held}
    finally:
        for conn in held:
            await pool.release(conn)


async def _describe(pool) -> str:
    async with pool.acquire(timeout=5) as conn:
        backend, name, timeout = await conn.fetchrow(QUERY)
        row = await conn.fetchrow("SELECT 1 AS one")
        kind = f"{type(conn._con).__name__} {type(row).__name__}"
    return f"{backend} {name} {timeout} {kind} {','.join(sorted(set(CALLS)))}"


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_the_same_pool_works_in_a_child_and_the_parent_keeps_its_sessions(
    protected, database_url, suite_id, sessions, forget_protected
):
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(_opened(database_url, protected, server_settings={"search_path": "public"}))
    parent = loop.run_until_complete(_backends(pool))

    def child() -> str:
        async def work() -> str:
            mine = await _backends(pool)  # first use: opens in this loop
            async with pool.acquire() as conn:
                name, path = await conn.fetchrow(
                    "SELECT current_setting('application_name'), current_setting('search_path')"
                )
            return f"{','.join(map(str, sorted(mine)))} {name} {path} {pool.get_size()}"

        return asyncio.run(asyncio.wait_for(work(), 15))

    report = in_child(child)
    if not protected:  # the child talked through the parent's sessions, or failed
        assert report.startswith("error") or {int(b) for b in report.split()[0].split(",")} & parent, report
        return
    backends, name, path, size = report.split()
    mine = {int(b) for b in backends.split(",")}
    assert len(mine) == 2 and not mine & parent, (report, parent)
    assert name.startswith(f"{suite_id}:") and name != identity.application_name() and path == "public"
    assert size == "2" and isinstance(pool, asyncpg.Pool)
    assert loop.run_until_complete(_backends(pool)) == parent  # the parent's sessions survived the child
    assert wait_for(lambda: sorted(b for _, b in sessions()) == sorted(parent), timeout=10), sessions()
    loop.run_until_complete(pool.close())
    loop.close()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def test_every_option_survives_the_childs_rebuild(database_url, suite_id, forget_protected):
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(
        _opened(
            database_url,
            init=_init,
            setup=_setup,
            reset=_reset,
            connection_class=MyConnection,
            record_class=MyRecord,
            max_queries=1000,
            max_inactive_connection_lifetime=120,
            command_timeout=30,
            statement_cache_size=10,
        )
    )
    CALLS.clear()
    parent = loop.run_until_complete(_describe(pool))

    def child() -> str:
        CALLS.clear()
        return asyncio.run(asyncio.wait_for(_describe(pool), 15))

    report = in_child(child)
    backend, name, timeout, conn_class, record_class, calls = report.split()
    assert int(backend) != int(parent.split()[0]) and name.startswith(f"{suite_id}:"), (report, parent)
    assert (timeout, conn_class, record_class) == ("4321ms", "MyConnection", "MyRecord"), report
    assert calls == "init,reset,setup", report  # reset: at release, before the report is made
    assert parent.split()[2:5] == report.split()[2:5]
    loop.run_until_complete(pool.close())
    loop.close()


def test_a_pool_made_before_any_loop_opens_in_the_loop_that_uses_it(database_url, suite_id, sessions, forget_protected):
    # asyncpg.create_pool() at import, never awaited: its _loop is the thread's default loop
    # (what get_event_loop() makes at import), which will never run.
    default = asyncio.new_event_loop()
    asyncio.set_event_loop(default)
    try:
        pool = forkpool.protect(_pool(database_url))
    finally:
        asyncio.set_event_loop(None)
    assert pool.get_size() == 0 and sessions() == []

    async def first_use() -> int:
        return await pool.fetchval("SELECT pg_backend_pid()")  # no `await pool` first: opened on use

    parent = asyncio.run(first_use())  # unprotected: its _loop is get_event_loop()'s, not this one
    assert wait_for(lambda: len(sessions()) == 2, timeout=10), sessions()
    report = in_child(lambda: asyncio.run(first_use()))
    assert report.isdigit() and int(report) != parent, report
    protection.release_all()  # a master before forking: asyncio.run's loop is gone
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    default.close()


def test_release_in_the_pools_idle_loop_closes_it_and_leaves_it_openable(database_url, sessions, forget_protected):
    loop = asyncio.new_event_loop()  # alive, not running: a Celery main process's per-process loop, say
    pool = loop.run_until_complete(_opened(database_url))
    assert wait_for(lambda: len(sessions()) == 2, timeout=10), sessions()
    protection.release_all()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    assert pool.get_size() == 0
    loop.run_until_complete(pool)  # the same object, open again (await pool: asyncpg's open)
    assert len(sessions()) == 2
    loop.run_until_complete(pool.close())
    loop.close()


def test_release_after_the_loop_is_gone_ends_the_sessions_with_terminate(
    database_url, admin, sessions, forget_protected
):
    async def at_import():
        pool = await _opened(database_url)
        await pool.fetchval("SELECT 1")
        return pool

    pool = asyncio.run(at_import())  # what a preload_app import leaves behind
    held = sessions()
    assert len(held) == 2
    protection.release_all()  # Gunicorn's pre_fork: no coroutine of that loop can run again
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    assert asyncio.run(pool.fetchval("SELECT 1")) == 1  # and the pool opens again in a new loop
    protection.release_all()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def test_a_pool_follows_the_process_from_one_asyncio_run_to_the_next(database_url, sessions, forget_protected):
    # A Celery task that runs asyncio.run() each time: unprotected, the second run fails with
    # "Event loop is closed"; protected, the old sessions end and the pool opens in the new loop.
    pool = asyncio.run(_opened(database_url))
    first = {b for _, b in sessions()}
    again = asyncio.run(_backends(pool))
    assert len(again) == 2 and not again & first, (first, again)
    assert wait_for(lambda: {b for _, b in sessions()} == again, timeout=10), sessions()
    protection.release_all()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()


def _slots(pool) -> dict:
    from forkpool._protect import _slot_names

    return {name: getattr(pool, name, None) for name in _slot_names(type(pool))}


def test_a_failing_protect_leaves_the_pool_untouched(forget_protected):
    loop = asyncio.new_event_loop()
    pool = asyncpg.create_pool("postgresql://me:hunter2@localhost:notaport/db", min_size=1, max_size=1, loop=loop)
    cls, before = type(pool), _slots(pool)
    with pytest.raises(forkpool.ConfigError) as caught:
        forkpool.protect(pool)
    message = str(caught.value)
    assert message.startswith("forkpool.protect: cannot protect asyncpg.pool.Pool (asyncpg): ValueError"), message
    assert "\n" not in message and "hunter2" not in message
    assert type(pool) is cls and _slots(pool) == before and protection.protected() == []
    loop.close()


def test_report_says_the_pools_size_and_use(database_url, forget_protected):
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(_opened(database_url))
    [(name, report)] = protection.reports()
    assert name == "asyncpg" and report.max_size == 2 and report.open == 2 and report.in_use == 0
    assert report.label.startswith("asyncpg pool ") and report.source == "max_size 2"
    held = loop.run_until_complete(pool.acquire())
    assert INTEGRATION.report(pool)[0].in_use == 1
    loop.run_until_complete(pool.release(held))
    loop.run_until_complete(pool.close())
    loop.close()


def test_with_the_loop_gone_the_server_gets_terminate_not_eof(database_url, pg_server, sessions, forget_protected):
    if pg_server is None:
        pytest.skip("reads the embedded server's log")
    debug = {"log_min_messages": "debug1"}  # an idle session's EOF is logged at DEBUG1 only

    async def at_import(protect: bool):
        pool = _pool(database_url, min_size=1, max_size=1, server_settings=dict(debug))
        if protect:
            forkpool.protect(pool)
        await pool
        return pool

    def eofs() -> int:
        return pg_server.log_path.read_text(errors="replace").count("unexpected EOF on client connection")

    from forkpool._integrations.asyncpg import connections_of, drop_without_io

    # Control: a socket that just closes (no Terminate) is logged as an EOF.
    before = eofs()
    bare = asyncio.run(at_import(False))
    [conn] = connections_of(bare)
    drop_without_io(conn)  # this process's only reference goes: the socket closes
    assert wait_for(lambda: eofs() == before + 1, timeout=10), "the server logged no EOF for a closed socket"
    # forkpool's release with the loop gone: Terminate first, then the socket closes.
    asyncio.run(at_import(True))
    assert wait_for(lambda: len(sessions()) == 1, timeout=10), sessions()
    protection.release_all()
    assert wait_for(lambda: sessions() == [], timeout=10), sessions()
    assert eofs() == before + 1
