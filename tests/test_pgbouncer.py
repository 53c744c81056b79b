"""What transaction pooling forbids, shown through a real PgBouncer, and that forkpool's pools do not need it.

In transaction pooling PgBouncer lends a server connection for one transaction
only: whatever a client leaves in the *session* (a SET, an advisory lock, a
LISTEN, a prepared statement) stays on a server connection the next
transaction, or another client, may get. These tests make each misuse happen
(a pool of one or two server connections makes the sharing certain) and then
run forkpool's own pools through the same PgBouncer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import psycopg
import psycopg2
import pytest

import forkpool
import forkpool.health
from harness.pgbouncer import BouncerSettings, EmbeddedPgBouncer, show


@pytest.fixture
def bouncer(pgbouncer_binary, database_url: str, request: pytest.FixtureRequest) -> Iterator[EmbeddedPgBouncer]:
    """A PgBouncer in front of the session's server, with as many server connections as the test asks (default 1)."""
    pool_size = getattr(request, "param", 1)
    with EmbeddedPgBouncer(database_url, BouncerSettings(pool_size=pool_size, reserve=0)) as running:
        yield running


def autocommit(url: str, name: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(url, application_name=name)
    conn.autocommit = True  # each statement its own transaction: the server connection may change in between
    return conn


def one(conn: psycopg2.extensions.connection, query: str) -> object:
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0] if cur.description else None


def test_session_state_is_shared_with_other_clients(bouncer):
    """SET and advisory locks outlive their transaction on a server connection that another client gets next."""
    a, b = autocommit(bouncer.url, "client-a"), autocommit(bouncer.url, "client-b")
    try:
        one(a, "SET statement_timeout = '1234ms'")
        assert one(b, "SHOW statement_timeout") == "1234ms"  # a's setting, in b's session
        one(a, "SELECT pg_advisory_lock(4242)")
        assert one(b, "SELECT pg_try_advisory_lock(4242)") is True  # mutual exclusion is gone: same server session
    finally:
        one(a, "RESET ALL")
        one(a, "SELECT pg_advisory_unlock_all()")
        a.close()
        b.close()


def test_listen_loses_its_notifications(bouncer, database_url):
    """LISTEN registers the server session, which is lent to others between transactions: nothing arrives."""
    listener = autocommit(bouncer.url, "listener")
    direct = autocommit(database_url, "notifier")
    try:
        one(listener, "LISTEN forkpool_chan")
        one(direct, "NOTIFY forkpool_chan, 'hello'")
        time.sleep(0.3)
        one(listener, "SELECT 1")
        listener.poll()
        assert listener.notifies == []  # directly, the notification would be here
    finally:
        listener.close()
        direct.close()


@pytest.mark.parametrize("bouncer", [2], indirect=True)
def test_psycopg3_prepared_statements_break_below_1_21_and_forkpool_turns_them_off(bouncer, monkeypatch):
    """psycopg 3 prepares a query on its 6th run; the next transaction on another server connection lacks it."""
    if bouncer.version[:2] >= (1, 21):
        pytest.skip(f"PgBouncer {bouncer.version} keeps prepared statements itself (max_prepared_statements)")
    holder = psycopg.connect(bouncer.url, application_name="holder", autocommit=True)

    def run_twice_over(conn) -> None:
        for i in range(6):  # the statement is now prepared on the server connection these ran on
            conn.execute("SELECT %s::int", (i,)).fetchone()
        with holder.transaction():  # holds that server connection: the next query gets the other one
            holder.execute("SELECT 1")
            conn.execute("SELECT %s::int", (7,)).fetchone()

    try:
        plain = psycopg.connect(bouncer.url, application_name="plain", autocommit=True)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match=r"prepared statement .* does not exist"):
            run_twice_over(plain)
        plain.close()
        monkeypatch.setenv("DB_POOL_DRIVER", "psycopg")
        forkpool.configure(dsn=bouncer.url, min_size=1, max_size=1, prepare=False)  # what DB_POOL_PREPARE=off does
        with forkpool.get_pool().connection() as conn:
            assert conn.prepare_threshold is None
            conn.autocommit = True
            run_twice_over(conn)  # no error: nothing was prepared
            conn.autocommit = False
    finally:
        holder.close()


def test_the_asyncio_pool_runs_through_pgbouncer_with_prepare_off(bouncer, monkeypatch):
    """Two of its connections take turns on PgBouncer's one server connection: prepared, both would name
    their statement _pg3_0 in the same server session (DuplicatePreparedStatement); unprepared, nothing collides."""
    monkeypatch.setenv("DATABASE_URL", bouncer.url)
    monkeypatch.setenv("DB_POOL_PREPARE", "off")
    monkeypatch.setenv("DB_POOL_SIZE", "2")

    async def main() -> list[int]:
        pool = await forkpool.get_async_pool()
        found = []
        try:
            async with pool.connection() as first, pool.connection() as second:
                assert first.prepare_threshold is None and second.prepare_threshold is None
                await first.set_autocommit(True)
                await second.set_autocommit(True)
                for i in range(8):
                    for conn in (first, second):
                        found.append((await (await conn.execute("SELECT %s::int", (i,))).fetchone())[0])
                await first.set_autocommit(False)
                await second.set_autocommit(False)
        finally:
            await forkpool.close_async_pools()
        return found

    assert asyncio.run(main()) == [i for i in range(8) for _ in range(2)]


@pytest.mark.usefixtures("driver")
@pytest.mark.parametrize("bouncer", [2], indirect=True)
def test_forkpools_pool_relies_on_no_session_state(bouncer, monkeypatch, suite_id):
    """Checks, resets and identity work per transaction: exact clients at PgBouncer, at most its pool at the server."""
    monkeypatch.setenv("PROCESS_ROLE", "web")
    forkpool.configure(dsn=bouncer.url, min_size=3, max_size=3, check_idle=0, prepare=False)  # a check per checkout
    pool = forkpool.get_pool()
    assert pool.wait(10)
    name = f"{suite_id}:web:{os.getpid()}"
    for _ in range(5):
        with pool.connection() as conn, conn.cursor() as cur:  # the identity reaches the server in each transaction
            cur.execute("SELECT current_setting('application_name')")
            assert cur.fetchone()[0] == name
    with pytest.raises(ZeroDivisionError), pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        1 / 0  # noqa: B018 - the block fails inside a transaction: the pool rolls back, PgBouncer frees the server
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone()[0] == 2
    assert forkpool.health.health_check() == {"default": {"ok": True, "error": None}}
    clients = [row["application_name"] for row in show(bouncer.admin_url, "SHOW CLIENTS")]
    assert clients.count(name) == 3  # processes x pool size, counted at PgBouncer by identity
    servers = [row for row in show(bouncer.admin_url, "SHOW SERVERS") if row["user"] == bouncer.server_role]
    assert len(servers) <= 2  # and never more than its pool at the server
    stats = pool.stats()
    assert stats["checks"] >= 7 and stats["connections_discarded"] == 0  # every check passed, nothing thrown away


def test_bootstrap_installs_pgbouncer_and_mariadb_as_root_with_apt_and_otherwise_says_how(monkeypatch, capsys):
    import bootstrap

    calls: list[list[str]] = []
    monkeypatch.setattr(bootstrap, "find_binary", lambda names: None)
    monkeypatch.delenv("FORKPOOL_PGBOUNCER", raising=False)
    monkeypatch.delenv("FORKPOOL_NO_APT", raising=False)
    monkeypatch.setattr(bootstrap.subprocess, "run", lambda argv, **kw: calls.append(argv) or subprocess_result(0))
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: f"/usr/bin/{name}")
    bootstrap.ensure_system_packages()
    assert calls[:2] == [
        ["apt-get", "update", "-qq"],
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "pgbouncer",
            "mariadb-server",
            "libmariadb-dev",
            "pkg-config",
        ],
    ]
    assert ["service", "pgbouncer", "stop"] in calls  # the package's own service, if policy let it start
    calls.clear()
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)  # not root: nothing run, one command each printed
    bootstrap.ensure_system_packages()
    out = capsys.readouterr().out
    assert not calls and "Install it with: sudo apt-get install -y pgbouncer" in out
    assert (
        "MariaDB is not installed; its tests will be skipped. Install it with: sudo apt-get install -y mariadb-server"
        in out
    )


def subprocess_result(code: int) -> object:
    import subprocess

    return subprocess.CompletedProcess([], code)


def test_without_pgbouncer_its_tests_show_as_skipped_with_the_command(tmp_path):
    """Never as passed: the reason names the one command that installs it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FORKPOOL_PGBOUNCER": str(tmp_path / "no-pgbouncer")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/test_pgbouncer.py",
            "-k",
            "not without and not bootstrap",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "6 skipped" in result.stdout and "passed" not in result.stdout.splitlines()[-1]
    assert "pgbouncer is not installed" in result.stdout and "apt-get install -y pgbouncer" in result.stdout
