"""The asyncio pool on asyncpg (``driver="asyncpg"``): asyncpg's connections, the same pool, fork-safe.

The pool's logic is proven on both drivers in tests/test_aio_pool.py (its tests
that take the `aio_driver` fixture: waiters, cancellation, server-side kills,
the idle threshold, fork, the network bounds on the socket); here, what the
asyncpg driver decides on its own: no implicit transaction (the block neither
commits nor rolls back; a transaction left open is rolled back on return), the
session state as the session's defaults, the configure hook and reset, prepared
statements, listeners, sessions the server ended, the goodbye of forked
children (asyncpg has no fork guard of its own), the DSN read into asyncpg's
arguments (multi-host, target_session_attrs), and failover's 25006.
"""

from __future__ import annotations

import ast
import asyncio
import multiprocessing
import os
import subprocess
import sys

import pytest

import forkpool
from forkpool import stats as keys
from harness.failover import WRITERS, Load, prepare
from tests.conftest import wait_for
from tests.runner_support import holders, logged_pg, without_goodbye  # noqa: F401 - logged_pg is a fixture
from tests.test_aio_pool import backend_pid, invariants, pids_of_all, run, until

asyncpg = pytest.importorskip("asyncpg")

INSERT = "INSERT INTO writes (writer, n) VALUES ($1, $2)"


@pytest.fixture(autouse=True)
def _asyncpg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_DRIVER", "asyncpg")


def test_a_block_yields_an_asyncpg_connection_and_opens_no_transaction(sessions, suite_id):
    forkpool.configure(min_size=1, max_size=1)

    async def main():
        pool = await forkpool.get_async_pool()
        async with pool.connection() as conn:
            assert isinstance(conn, asyncpg.Connection)
            assert not conn.is_in_transaction()  # asyncpg's model: the pool opens none
            await conn.execute("CREATE TEMP TABLE t_apg (v int)")
            await conn.execute("INSERT INTO t_apg VALUES (1)")
        with pytest.raises(RuntimeError):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO t_apg VALUES (2)")  # committed on its own, as asyncpg does
                async with conn.transaction():
                    await conn.execute("INSERT INTO t_apg VALUES (3)")
                    raise RuntimeError("boom")  # the transaction's own block rolls 3 back
        async with pool.connection() as conn:
            values = await conn.fetchval("SELECT array_agg(v ORDER BY v) FROM t_apg")
            name = await conn.fetchval("SELECT current_setting('application_name')")
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return values, name, snapshot

    values, name, snapshot = run(main())
    assert values == [1, 2] and name == f"{suite_id}:app:{os.getpid()}"
    assert snapshot[keys.IN_USE] == 0 and snapshot[keys.CHECKOUTS] == 3 and snapshot[keys.SIZE] == 1
    assert invariants(snapshot) and set(snapshot) == set(keys.ALL_KEYS)


def test_a_transaction_left_open_is_rolled_back_on_return_and_the_next_one_starts_at_the_top():
    forkpool.configure(min_size=1, max_size=1)

    async def main():
        pool = await forkpool.get_async_pool()
        async with pool.connection() as conn:
            first = await backend_pid(conn)
            await conn.execute("CREATE TABLE IF NOT EXISTS t_apg_left (v int)")
            await conn.execute("TRUNCATE t_apg_left")
            await conn.execute("BEGIN")  # raw: asyncpg knows nothing of it
            await conn.execute("INSERT INTO t_apg_left VALUES (1)")
        async with pool.connection() as conn:
            assert not conn.is_in_transaction()
            left = conn.transaction()
            await left.start()  # asyncpg's own, never finished: its mark must go too
            await conn.execute("INSERT INTO t_apg_left VALUES (2)")
        async with pool.connection() as conn:
            same = await backend_pid(conn) == first
            assert not conn.is_in_transaction()
            async with conn.transaction():  # a top-level transaction, not a savepoint of the one left
                await conn.execute("INSERT INTO t_apg_left VALUES (3)")
            rows = await conn.fetchval("SELECT array_agg(v) FROM t_apg_left")
            await conn.execute("DROP TABLE t_apg_left")
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return same, rows, snapshot

    same, rows, snapshot = run(main())
    assert same, "a rolled-back connection is reused, not replaced"
    assert rows == [3]
    assert snapshot[keys.CONNECTIONS_DISCARDED] == 0 and invariants(snapshot)


def test_the_session_state_is_the_sessions_default_and_survives_returns():
    forkpool.configure(min_size=1, max_size=1, isolation_level="serializable", read_only=True, deferrable=True)

    async def main():
        pool = await forkpool.get_async_pool()
        seen = []
        for _ in range(2):
            async with pool.connection() as conn:
                async with conn.transaction():
                    seen.append(
                        tuple(
                            await conn.fetchrow(
                                "SELECT current_setting('transaction_isolation'), "
                                "current_setting('transaction_read_only'), "
                                "current_setting('transaction_deferrable')"
                            )
                        )
                    )
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute("CREATE TEMP TABLE t_ro (v int)")
                await conn.execute("BEGIN")  # left open: rolled back on return, the defaults stay
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return seen, snapshot

    seen, snapshot = run(main())
    assert seen == [("serializable", "on", "on")] * 2
    assert snapshot[keys.CONNECTIONS_DISCARDED] == 0


def test_the_configure_hooks_settings_outlive_returns_and_asyncpgs_full_reset_is_one_argument_away():
    """No RESET ALL on a return (docs/recipes/asyncio.md): what the configure hook set stays, and so does a
    borrower's plain SET; reset=asyncpg.Connection.reset gives asyncpg's pool's behaviour (both undone)."""

    async def configure(conn):
        await conn.execute("SET statement_timeout = '7s'")

    async def settings_seen(reset):
        pool = forkpool.AsyncPool(
            forkpool.PoolSettings(dsn=os.environ["DATABASE_URL"], min_size=1, max_size=1, driver="asyncpg"),
            configure=configure,
            reset=reset,
        )
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute("SET search_path = borrower")
            await conn.execute("BEGIN")  # left open: rolled back on return
        async with pool.connection() as conn:
            seen = tuple(
                await conn.fetchrow("SELECT current_setting('statement_timeout'), current_setting('search_path')")
            )
        snapshot = pool.stats()
        await pool.close()
        return seen, snapshot

    kept, snapshot = run(settings_seen(None))
    assert kept == ("7s", "borrower") and snapshot[keys.CONNECTIONS_DISCARDED] == 0
    undone, snapshot = run(settings_seen(asyncpg.Connection.reset))
    assert undone == ("0", '"$user", public') and snapshot[keys.CONNECTIONS_DISCARDED] == 0


def test_a_configure_hook_that_fails_or_leaves_a_transaction_is_a_connect_error():
    async def fails(conn):
        await conn.execute("SELECT no_such_column")

    async def leaves_open(conn):
        await conn.execute("BEGIN")

    async def attempt(hook):
        settings = forkpool.PoolSettings(dsn=os.environ["DATABASE_URL"], min_size=0, max_size=1, driver="asyncpg")
        pool = forkpool.AsyncPool(settings, configure=hook)
        try:
            with pytest.raises(forkpool.ConnectError) as caught:
                await pool.getconn(timeout=5)
            return str(caught.value), pool.stats()
        finally:
            await pool.close()

    failed, snapshot = run(attempt(fails))
    assert "configure hook" in failed and "no_such_column" in failed and snapshot[keys.SIZE] == 0
    left, snapshot = run(attempt(leaves_open))
    assert "left a transaction open" in left and snapshot[keys.SIZE] == 0


@pytest.mark.parametrize("prepare", [True, False])
def test_prepare_off_is_asyncpgs_statement_cache_off(prepare):
    """DB_POOL_PREPARE=off (PgBouncer < 1.21 in transaction pooling): asyncpg names no prepared statement."""
    forkpool.configure(min_size=1, max_size=1, prepare=prepare)

    async def main():
        pool = await forkpool.get_async_pool()
        async with pool.connection() as conn:
            await conn.fetchval("SELECT $1::int", 1)
            named = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
        healthy = await forkpool.health.async_health_check()
        await forkpool.close_async_pools()
        return named, healthy

    named, healthy = run(main())
    assert (named > 0) is prepare
    assert healthy == {"default": {"ok": True, "error": None}}


def test_listeners_left_behind_are_removed_on_return():
    forkpool.configure(min_size=1, max_size=1)

    async def main():
        pool = await forkpool.get_async_pool()
        heard = []
        async with pool.connection() as conn:
            await conn.add_listener("apg_channel", lambda *args: heard.append(args))
        async with pool.connection() as conn:
            channels = await conn.fetchval("SELECT count(*) FROM pg_listening_channels()")
            await conn.execute("NOTIFY apg_channel")
            await conn.fetchval("SELECT 1")
        await forkpool.close_async_pools()
        return channels, heard

    channels, heard = run(main())
    assert channels == 0 and heard == []


def test_sessions_the_server_ended_are_never_lent_within_the_idle_threshold(admin, suite_id):
    """asyncpg's loop reads the server's goodbye as it comes, so no news is left on the socket for the pool's
    poll (whose descriptor asyncpg closes, and may give to a new connection): the pool asks the connection
    whether it ended. (Without that the poll usually still catches it; the reused descriptor is the race.)"""
    forkpool.configure(min_size=2, max_size=2, check_idle=30)

    async def main():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        held = [await pool.getconn(), await pool.getconn()]
        before = {await backend_pid(conn) for conn in held}
        for conn in held:
            await pool.putconn(conn)
        await asyncio.to_thread(
            admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", list(before)
        )
        assert await until(lambda: all(conn.is_closed() for conn in held))  # asyncpg read the goodbye
        after = set()
        for _ in range(4):
            async with pool.connection() as conn:
                after.add(await backend_pid(conn))
        snapshot = pool.stats()
        await forkpool.close_async_pools()
        return before, after, snapshot

    before, after, snapshot = run(main())
    assert before.isdisjoint(after) and snapshot[keys.CONNECTIONS_DISCARDED] == 2 and invariants(snapshot)


def _mp_child(queue) -> None:
    """A multiprocessing child: its own pool in its own loop, closed at the end (asyncio.run's lifespan)."""

    async def work():
        pool = await forkpool.get_async_pool()
        inherited = [p for p in forkpool._base.live_pools() if p is not pool and p.pid != os.getpid()]
        async with pool.connection() as conn:
            pid = await backend_pid(conn)
        await forkpool.close_async_pools()
        return pid, all(p.closed for p in inherited)

    queue.put((os.getpid(), *asyncio.run(work())))


def test_children_forked_from_an_open_pool_end_their_own_sessions_with_a_goodbye(logged_pg, monkeypatch, suite_id):
    """os.fork and multiprocessing (fork): the parent's sessions survive every child, and each child's
    session ends with asyncpg's Terminate, which the server's log tells from a vanished client."""
    monkeypatch.setenv("DATABASE_URL", logged_pg.url)
    forkpool.configure(min_size=2, max_size=2)
    loop = asyncio.new_event_loop()

    async def parent_pids():
        pool = await forkpool.get_async_pool()
        assert await pool.wait(10)
        return await pids_of_all(pool)

    try:
        before = loop.run_until_complete(parent_pids())
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_mp_child, args=(queue,)) for _ in range(2)]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        read_fd, write_fd = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                _mp_child(_Pipe(write_fd))
            finally:
                os._exit(0)
        os.close(write_fd)
        results.append(ast.literal_eval(os.read(read_fd, 200).decode()))
        os.waitpid(child, 0)
        children = {r[0] for r in results}
        backends = {r[1] for r in results}
        assert all(r[2] for r in results), "an inherited pool was not detached in a child"
        assert len(children) == 3 and os.getpid() not in children and backends.isdisjoint(before)
        assert without_goodbye(logged_pg, backends) == {}
        after = loop.run_until_complete(parent_pids())
        assert sorted(after) == sorted(before)  # the parent's sessions survived every child
        assert wait_for(lambda: holders(logged_pg, suite_id) == {os.getpid(): 2}, timeout=10)
        loop.run_until_complete(forkpool.close_async_pools())
    finally:
        loop.close()


class _Pipe:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def put(self, item: object) -> None:
        os.write(self.fd, repr(item).encode())


def test_the_dsn_becomes_asyncpgs_arguments_multi_host_included():
    from forkpool._drivers import asyncpg_arguments, parse_conninfo

    dsn = (
        "host=a.example,b.example port=5433,5434 dbname=shop user=app password=s3cret "
        "target_session_attrs=read-write sslmode=require options='-c search_path=shop -c statement_timeout=5s' "
        "keepalives_idle=7 connect_timeout=3"
    )
    kwargs, socket_options = asyncpg_arguments(parse_conninfo(dsn))
    assert kwargs == {
        "host": ["a.example", "b.example"],
        "port": [5433, 5434],
        "database": "shop",
        "user": "app",
        "password": "s3cret",
        "target_session_attrs": "read-write",
        "server_settings": {"search_path": "shop", "statement_timeout": "5s"},
        "timeout": 3.0,
        "dsn": "postgresql://?sslmode=require",
    }
    assert socket_options == {"keepalives_idle": 7}
    url, _ = asyncpg_arguments(parse_conninfo("postgresql://app@a:1,b:2/shop?target_session_attrs=primary"))
    assert url["host"] == ["a", "b"] and url["port"] == [1, 2] and url["target_session_attrs"] == "primary"
    # libpq's rules: an empty entry is the default port, one port serves every host
    assert asyncpg_arguments(parse_conninfo("postgresql://a:1,b/db"))[0]["port"] == [1, 5432]
    assert asyncpg_arguments(parse_conninfo("host=a,b port=7"))[0]["port"] == 7
    # the pool's name for the session wins over a server_settings one, as libpq's parameter does
    named, _ = asyncpg_arguments({"server_settings": {"application_name": "x", "jit": "off"}, "application_name": "y"})
    assert named["server_settings"] == {"application_name": "y", "jit": "off"}
    with pytest.raises(forkpool.ConfigError, match="2 port numbers for 3 hosts"):
        asyncpg_arguments(parse_conninfo("host=a,b,c port=1,2"))


def test_what_asyncpg_cannot_express_is_one_configuration_error(database_url):
    with pytest.raises(forkpool.ConfigError, match=r"^gssencmode: libpq's parameter has no asyncpg") as caught:
        forkpool.configure(dsn=f"{database_url}{'&' if '?' in database_url else '?'}gssencmode=disable")
    assert "\n" not in str(caught.value)
    with pytest.raises(forkpool.ConfigError, match=r"^passwrd: ") as caught:
        forkpool.configure(connect_kwargs={"passwrd": "s3cret-typo"})  # a misspelt key names only the key
    assert "s3cret" not in str(caught.value)
    with pytest.raises(forkpool.ConfigError, match="asyncpg takes only -c name=value"):
        forkpool.configure(connect_kwargs={"options": "-X"})
    with pytest.raises(forkpool.ConfigError, match="prepare_threshold"):
        forkpool.configure(connect_kwargs={"prepare_threshold": None})  # psycopg 3's, not asyncpg's
    forkpool.configure(connect_kwargs={"statement_cache_size": 0, "command_timeout": 30})  # asyncpg's own: taken


CONNINFOS = [
    "",
    "host=a port=5432 dbname=x user=u password=p",
    "host=a,b port=1,2 target_session_attrs=read-write",
    "password='se cret\\'x' user = bob  dbname= d",
    "options='-c search_path=x -c statement_timeout=5s'",
    "user=a\\ b",
    "postgresql://",
    "postgresql://u:p@h:5432/db?sslmode=require&application_name=x%20y",
    "postgres://a,b/db",
    "postgresql://a:1,b/db",
    "postgresql://a:1,b:2/db?target_session_attrs=primary",
    "postgresql://[::1]:5432/db",
    "postgresql://[::1],[::2]:5/db",
    "postgresql:///db?host=/tmp&port=5433",
    "postgresql://u@/db",
    "postgresql://%2Ftmp/db",
    "postgresql://u:@h/db",
    "postgresql://h/db?ssl=true",
    "postgresql://us%40er:pa%3Ass@h/d%2Fb",
]
BAD_CONNINFOS = ["host", "foo=bar", "host='x", "postgresql://h/db?foo=1", "postgresql://h/db?a"]


@pytest.mark.parametrize("dsn", CONNINFOS)
def test_with_no_libpq_driver_a_dsn_is_read_as_libpq_reads_it(dsn):
    """asyncpg alone: forkpool reads the DSN in Python (_conninfo), exactly as libpq's PQconninfoParse does."""
    import psycopg2.extensions

    from forkpool import _conninfo

    assert _conninfo.parse(dsn) == psycopg2.extensions.parse_dsn(dsn)


@pytest.mark.parametrize("dsn", BAD_CONNINFOS)
def test_with_no_libpq_driver_a_bad_dsn_fails_with_libpqs_reason(dsn):
    import psycopg2
    import psycopg2.extensions

    from forkpool import _conninfo

    with pytest.raises(psycopg2.ProgrammingError) as libpq:
        psycopg2.extensions.parse_dsn(dsn)
    with pytest.raises(ValueError) as ours:
        _conninfo.parse(dsn)
    assert str(ours.value) in str(libpq.value)


def test_asyncpg_alone_is_enough(suite_id):
    """A process where neither psycopg2 nor psycopg 3 can be imported: the asyncio pool on asyncpg works."""
    program = """
import asyncio, os, sys
sys.modules["psycopg2"] = sys.modules["psycopg"] = None  # neither importable, nor found by find_spec
import forkpool

async def main():
    forkpool.configure(driver="asyncpg", min_size=1, max_size=1)
    pool = await forkpool.get_async_pool()
    async with pool.connection() as conn:
        name = await conn.fetchval("SELECT current_setting('application_name')")
    await forkpool.close_async_pools()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg2", "psycopg") and sys.modules[m])
    print(name == f"{forkpool.identity.name()}:app:{os.getpid()}", loaded)

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True []"


def test_import_forkpool_loads_no_driver_and_a_missing_asyncpg_names_its_extra():
    program = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "asyncpg":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
import forkpool
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg2", "psycopg", "asyncpg"))
assert not loaded, loaded
sys.meta_path.insert(0, Block())
try:
    forkpool.AsyncPool(forkpool.PoolSettings(driver="asyncpg"))
except forkpool.MissingExtra as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'forkpool[asyncpg]'" in result.stdout


def test_the_pool_follows_the_primary_on_25006(pg_pair, suite_id):
    """The old primary is made read-only under open sessions: the refused write (asyncpg's
    ReadOnlySQLTransactionError, 25006) and the server's report retire every connection to it, and
    the next ones go, through the DSN's host list and target_session_attrs, to the new primary."""
    from harness import failover

    dsn = prepare(pg_pair)
    load = Load()

    async def main() -> dict[str, object]:
        pool = forkpool.AsyncPool(
            forkpool.PoolSettings(dsn=dsn, min_size=WRITERS, max_size=WRITERS, timeout=5, driver="asyncpg")
        )
        await pool.open()
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    async with pool.connection() as conn:
                        await conn.execute(INSERT, w, n)
                        port = int(conn._addr[1])  # asyncpg keeps the address it reached nowhere public
                except Exception as exc:  # noqa: BLE001 - every failed attempt is counted
                    load.fail(exc)
                    await asyncio.sleep(0.005)
                else:
                    load.ack(w, n, port)

        tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        try:
            return await asyncio.to_thread(failover.measure, pg_pair, "read-only", load, "AsyncPool[asyncpg]")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
            figures = pool.stats()
            await pool.close()
            refused = sum(1 for _, name in load.failed if name == "ReadOnlySQLTransactionError")
            print(f"\nasyncpg failover: discarded {figures[keys.CONNECTIONS_DISCARDED]}, 25006 seen {refused}")

    figures = asyncio.run(main())
    assert figures["recovered"], f"writes did not reach the new primary: {load.failed[-5:]}"
    failover.outcome(pg_pair, figures, load, f"{suite_id}:")
    print(f"failover {figures}")
    assert figures["rows_lost"] == 0 and figures["left_on_old_primary"] == 0, figures
