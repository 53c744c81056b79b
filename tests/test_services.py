"""harness.services against the real servers it starts (no mocks)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis

from harness.services import EmbeddedPostgres, EmbeddedRedis, ServiceError, query_server, redact_url, services

ROOT = Path(__file__).resolve().parent.parent
MACHINE_PORTS = {5432, 6379}  # the machine's own servers: never ours


def query(url: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def server_family(pid: int) -> list[int]:
    """The server and the processes it forked (postgres backends, workers)."""
    proc = psutil.Process(pid)
    return [pid] + [child.pid for child in proc.children(recursive=True)]


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(live(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if live(p)]


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(max_connections=20)
    began = time.monotonic()
    server.start()
    print(f"\nembedded postgres started in {time.monotonic() - began:.2f}s at {server.url}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def rd() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def test_postgres_starts_with_requested_settings(pg: EmbeddedPostgres) -> None:
    print(f"start took {pg.last_start_seconds:.2f}s")  # reported, not asserted: machines vary
    assert pg.is_running()
    assert pg.port not in MACHINE_PORTS
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert query(pg.url, "SHOW max_connections") == [("20",)]
    assert query(pg.url, "SHOW superuser_reserved_connections") == [("3",)]
    assert query(pg.url, "SHOW listen_addresses") == [("127.0.0.1",)]
    assert query(pg.url, "SHOW fsync") == [("off",)]
    assert pg.data_dir.is_dir() and pg.log_path.is_file()


def test_create_database_returns_working_url(pg: EmbeddedPostgres) -> None:
    url = pg.create_database("app_one")
    assert url == pg.url_for("app_one")
    assert query(url, "SELECT current_database()") == [("app_one",)]


def test_restart_in_place_kills_sessions_keeps_port_and_data(pg: EmbeddedPostgres) -> None:
    query(pg.url, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    port, data_dir, old_pid = pg.port, pg.data_dir, pg.pid
    survivor = psycopg2.connect(pg.url)
    try:
        pg.restart()
        assert (pg.port, pg.data_dir) == (port, data_dir)
        assert pg.pid != old_pid
        with pytest.raises(psycopg2.OperationalError), survivor.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        survivor.close()
    assert query(pg.url, "SELECT v FROM kept") == [(42,)]
    pg.restart("immediate")  # crash-like stop; recovery must keep the data too
    assert query(pg.url, "SELECT v FROM kept") == [(42,)]


def test_stop_then_start_server_keeps_port(pg: EmbeddedPostgres) -> None:
    port = pg.port
    pg.stop_server()
    pg.stop_server()  # idempotent
    assert not pg.is_running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.url, connect_timeout=2)
    pg.start_server()
    assert pg.port == port and query(pg.url, "SELECT 1") == [(1,)]


def test_unknown_stop_mode_is_refused(pg: EmbeddedPostgres) -> None:
    with pytest.raises(ValueError):
        pg.stop("gentle")
    assert pg.is_running()


def test_cleanup_leaves_no_process_and_no_files() -> None:
    server = EmbeddedPostgres(max_connections=10).start()
    conn = psycopg2.connect(server.url)  # a backend that must go too
    family = server_family(server.pid)  # type: ignore[arg-type]
    data_dir, tmp_dir = server.data_dir, server.tmp_dir
    assert len(family) > 2
    server.cleanup()
    server.cleanup()  # safe twice
    conn.close()
    assert not server.is_running()
    assert wait_gone(family, timeout=5) == []
    assert processes_mentioning(str(data_dir)) == []
    assert tmp_dir is not None and not tmp_dir.exists()


def test_failed_start_raises_one_line_error_with_log_tail() -> None:
    server = EmbeddedPostgres(max_connections=2)  # below the 3 reserved slots
    try:
        with pytest.raises(ServiceError) as info:
            server.start()
        message = str(info.value)
        assert "\n" not in message
        assert "max_connections" in message  # quoted from the server log
    finally:
        server.cleanup()


def test_explicit_port_in_use_is_an_error_not_a_retry(rd: EmbeddedRedis) -> None:
    with pytest.raises(ServiceError, match="exited"):
        EmbeddedRedis(port=rd.port).start()


def test_password_role_requires_its_password_and_is_never_shown() -> None:
    secret = "s3cr3t-p@ss/word"
    with EmbeddedPostgres(max_connections=10, password=secret) as server:
        good = server.url_for("postgres", user="forkpool", password=secret)
        assert query(good, "SELECT current_user") == [("forkpool",)]
        query(good, "CREATE TABLE mine (v int)")  # may create tables in public
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            query(server.url_for("postgres", user="forkpool", password="wrong"), "SELECT 1")
        with pytest.raises(psycopg2.OperationalError):
            query(server.url_for("postgres", user="forkpool"), "SELECT 1")
        assert query(server.url, "SELECT current_user") == [("postgres",)]  # still trust
        assert secret not in redact_url(good) and "***" in redact_url(good)
        assert "s3cr3t" not in repr(server)
        assert "s3cr3t" not in server.log_path.read_text()


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://u:pw@h:1/db") == "postgresql://u:***@h:1/db"
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("host=h password=pw dbname=x") == "host=h password=*** dbname=x"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from harness.services import EmbeddedPostgres, EmbeddedRedis
pg = EmbeddedPostgres(max_connections=10).start()
rd = EmbeddedRedis().start()
print(json.dumps({{"pg": pg.pid, "data": str(pg.data_dir), "rd": rd.pid,
                  "tmp": [str(pg.tmp_dir), str(rd.tmp_dir)]}}), flush=True)
time.sleep(60)
"""


def test_servers_die_with_a_sigkilled_parent() -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True)
    started: dict = {}
    try:
        started.update(json.loads(child.stdout.readline()))  # type: ignore[union-attr]
        pids = server_family(started["pg"]) + [started["rd"]]
        assert all(live(p) for p in pids)
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        assert wait_gone(pids, timeout=10) == []  # PDEATHSIG, not our cleanup
        assert processes_mentioning(started["data"]) == []
    finally:
        child.kill()
        child.wait()
        for path in started.get("tmp", []):  # nobody was left to delete them
            shutil.rmtree(path, ignore_errors=True)


def test_redis_start_ping_restart_cleanup() -> None:
    server = EmbeddedRedis().start()
    print(f"\nembedded redis started in {server.last_start_seconds:.3f}s at {server.url}")
    assert server.port not in MACHINE_PORTS
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"
    port, pid = server.port, server.pid
    server.restart()
    assert server.port == port and server.pid != pid
    assert client.ping()  # redis-py reconnects on its own
    assert client.get("k") is None  # no persistence, by design
    client.close()
    tmp_dir = server.tmp_dir
    server.cleanup()
    server.cleanup()
    assert wait_gone([pid]) == []  # type: ignore[list-item]
    assert not server.is_running()
    assert tmp_dir is not None and not tmp_dir.exists()
    assert processes_mentioning(f"127.0.0.1:{port}") == []


def test_services_uses_external_urls_and_starts_nothing(
    pg: EmbeddedPostgres, rd: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg.url)
    monkeypatch.setenv("REDIS_URL", rd.url)
    # A server it started would be a child of this process (services.py spawns them directly). Not a
    # count of the machine's "forkpool-" processes: the other xdist worker and other test runs start
    # and stop servers meanwhile; nor of all descendants: the fixtures' postgres forks a backend per
    # connection.
    before = {child.pid for child in psutil.Process().children()}
    with services(max_connections=7) as running:
        assert (running.database_url, running.redis_url) == (pg.url, rd.url)
        assert running.postgres is None and running.redis is None
        assert [c for c in psutil.Process().children() if c.pid not in before] == []
    assert pg.is_running() and rd.is_running()  # not ours to stop


def test_services_starts_and_stops_embedded_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "")  # empty means unset
    with services(max_connections=15) as running:
        assert running.postgres is not None and running.redis is not None
        assert running.database_url == running.postgres.url
        assert query(running.database_url, "SHOW max_connections") == [("15",)]
        assert redis.Redis.from_url(running.redis_url).ping()  # type: ignore[arg-type]
        started = [running.postgres, running.redis]
    assert not any(server.is_running() for server in started)
    assert not any(server.tmp_dir.exists() for server in started)  # type: ignore[union-attr]


def test_services_without_redis(monkeypatch: pytest.MonkeyPatch, pg: EmbeddedPostgres) -> None:
    monkeypatch.setenv("DATABASE_URL", pg.url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with services(need_redis=False) as running:
        assert running.redis is None and running.redis_url is None


def test_free_ports_come_from_below_the_ephemeral_range():
    # A port inside it can be taken by an outgoing connection before the server binds it.
    from harness._procs import LISTEN_PORTS, _ephemeral_low, free_port

    ports = {free_port() for _ in range(50)}
    ceiling = min(LISTEN_PORTS.stop, _ephemeral_low())
    if ceiling - LISTEN_PORTS.start > 100:
        assert all(LISTEN_PORTS.start <= port < ceiling for port in ports), sorted(ports)
    # else: this machine's ephemeral range starts too low to stay out of it; the kernel's choice is used
    assert not ports & {5432, 6379}
    assert len(ports) > 40  # spread out: parallel runs rarely pick the same one


def test_the_pair_replicates_synchronously_and_promotes(pg_pair):
    """The fixture itself: writes on the primary are on the standby, which refuses writes until promoted."""
    dsn = pg_pair.create_database("failover")
    query_server(pg_pair.primary, "CREATE TABLE writes (n int)", dbname="failover")
    query_server(pg_pair.primary, "INSERT INTO writes VALUES (1)", dbname="failover")
    pg_pair.wait_replayed()
    assert pg_pair.standby_query("SELECT count(*) FROM writes", dbname="failover") == [(1,)]
    assert pg_pair.standby_query("SELECT pg_is_in_recovery()") == [(True,)]
    assert pg_pair.primary_query("SELECT sync_state FROM pg_stat_replication") == [("sync",)]
    pg_pair.promote()
    query_server(pg_pair.standby, "INSERT INTO writes VALUES (2)", dbname="failover")
    assert pg_pair.standby_query("SELECT count(*) FROM writes", dbname="failover") == [(2,)]
    assert "target_session_attrs=read-write" in dsn
