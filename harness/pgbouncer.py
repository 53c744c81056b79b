"""A throwaway PgBouncer in transaction pooling mode between the suite and PostgreSQL.

Started from the ``pgbouncer`` binary (Debian's and Ubuntu's package
``pgbouncer``; no pip wheel carries it: ``python3 bootstrap.py test`` installs
it as root where apt exists) with a configuration generated here, listening on
127.0.0.1 only on a free port, as an unprivileged user (PgBouncer refuses to
run as root), dying with us like the other embedded servers (harness/services.py).
It never touches a PgBouncer the machine runs itself (the system service's 6432).

How it is counted from the outside:

- clients: PgBouncer's admin console (``SHOW CLIENTS``) lists every client
  connection with the ``application_name`` it logged in with, the suite's
  ``<suite-id>:<role>[@<host>]:<pid>``; grouped by it, the counts are those the
  direct runs take from pg_stat_activity.
- servers: PgBouncer logs into PostgreSQL as a role of its own, made for this
  run (``forkpool_pgb_<hex>``, a member of DATABASE_URL's user so it may do
  what the suite does), so every PostgreSQL session of that role is one of its
  server connections, whatever ``application_name`` the last transaction set.

``application_name`` reaches the server per transaction: PgBouncer tracks it
like ``client_encoding`` or ``TimeZone`` and sets it on the server connection
it links the client to (``current_setting('application_name')`` in a task's
transaction names the task process; pg_stat_activity shows, for an idle
server connection, the last client's).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from ._procs import ServiceError, chown_tree, server_user
from .services import HOST, _Server

SBIN = Path("/usr/sbin/pgbouncer")  # Debian's place, outside a non-root PATH
# PgBouncer 1.21 tracks protocol-level prepared statements (max_prepared_statements); older ones
# hand a statement prepared on one server connection to a transaction on another.
PROTOCOL_PREPARE = (1, 21)
ADMIN_DB = "pgbouncer"


def install_command() -> str:
    """The one command that installs PgBouncer here."""
    return ("" if os.geteuid() == 0 else "sudo ") + "apt-get install -y pgbouncer"


BINARY_ENV = "FORKPOOL_PGBOUNCER"  # a pgbouncer binary of your choice (a newer build); else PATH, /usr/sbin


def pgbouncer_binary() -> Path:
    chosen = os.environ.get(BINARY_ENV)
    if chosen:
        found = chosen if os.access(chosen, os.X_OK) else None
    else:
        found = shutil.which("pgbouncer") or (str(SBIN) if os.access(SBIN, os.X_OK) else None)
    if found is None:
        where = f" at {BINARY_ENV}={chosen!r}" if chosen else ""
        raise ServiceError(f"pgbouncer is not installed{where}: install it with `{install_command()}`")
    return Path(found)


def pgbouncer_version(binary: Path | None = None) -> tuple[int, ...]:
    """(1, 18, 0) from ``pgbouncer --version``'s first line, ``PgBouncer 1.18.0``."""
    out = subprocess.run(
        [str(binary or pgbouncer_binary()), "--version"], capture_output=True, text=True, timeout=10
    ).stdout
    found = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not found:
        raise ServiceError(f"cannot read pgbouncer's version from {out.strip()[:80]!r}")
    return tuple(int(part or 0) for part in found.groups())


def prepares_itself(version: tuple[int, ...]) -> bool:
    """True when this PgBouncer keeps prepared statements across server connections (1.21+)."""
    return version[:2] >= PROTOCOL_PREPARE


@dataclass(frozen=True)
class BouncerSettings:
    """The pool PgBouncer keeps for the suite's (database, user) pair."""

    pool_size: int = 10  # default_pool_size
    reserve: int = 2  # reserve_pool_size: opened for clients that waited reserve_timeout
    max_client_conn: int = 200
    reserve_timeout: float = 1.0  # reserve_pool_timeout, seconds (PgBouncer's default: 5)

    @property
    def server_bound(self) -> int:
        """Server connections it may hold at most: pool + reserve (max_db_connections enforces it)."""
        return self.pool_size + self.reserve


class EmbeddedPgBouncer(_Server):
    """PgBouncer in front of `database_url`'s database: ``url`` for the suite, ``admin_url`` for SHOW."""

    kind = "pgbouncer"
    # SIGTERM: immediate shutdown (1.18: "fast exit"); SIGINT waits for clients to finish.
    stop_signals = {"fast": signal.SIGTERM, "safe": signal.SIGINT}

    def __init__(
        self,
        database_url: str,
        settings: BouncerSettings = BouncerSettings(),
        *,
        port: int | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        super().__init__(port, base_dir)
        self.database_url, self.settings = database_url, settings
        self._binary = pgbouncer_binary()
        self.version = pgbouncer_version(self._binary)
        self._user = server_user()
        self._target = psycopg2.extensions.parse_dsn(database_url)
        self.dbname = self._target.get("dbname") or self._target.get("user") or "postgres"
        self.client_user = self._target.get("user") or "postgres"
        self.server_role = f"forkpool_pgb_{secrets.token_hex(4)}"
        self._server_password = secrets.token_hex(16)
        self._role_made = False

    @property
    def url(self) -> str:
        """What the suite's processes use as DATABASE_URL: the same database, through PgBouncer."""
        return f"postgresql://{quote(self.client_user, safe='')}@{self.host}:{self.port}/{quote(self.dbname, safe='')}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{quote(self.client_user, safe='')}@{self.host}:{self.port}/{ADMIN_DB}"

    @property
    def config_path(self) -> Path:
        return self._tmp() / "pgbouncer.ini"

    def _prepare(self) -> None:
        chown_tree(self._tmp(), self._user, recursive=False)  # the unprivileged user reads its files here
        self._make_server_role()
        (self._tmp() / "userlist.txt").write_text(f'"{self.client_user}" ""\n')
        chown_tree(self._tmp() / "userlist.txt", self._user)

    def _make_server_role(self) -> None:
        """A login role of PgBouncer's own: PostgreSQL sessions of it are PgBouncer's server connections."""
        role = sql.Identifier(self.server_role)
        try:
            self._execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(role), (self._server_password,))
            self._role_made = True
            # A member of DATABASE_URL's user: the suite's tables are reachable through it as they are directly.
            self._execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(self.client_user), role))
        except psycopg2.Error as exc:
            raise ServiceError(
                f"pgbouncer: cannot create its server role {self.server_role} with DATABASE_URL's "
                f"user {self.client_user!r} ({str(exc).strip().splitlines()[0]}); it needs CREATEROLE, "
                "or unset DATABASE_URL to use an embedded PostgreSQL"
            ) from None

    def _execute(self, query: sql.Composable, params: tuple = ()) -> None:
        conn = psycopg2.connect(self.database_url, application_name="forkpool-pgbouncer-setup", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
        finally:
            conn.close()

    def config_text(self) -> str:
        t, s = self._target, self.settings
        server = " ".join(
            f"{key}={value}"
            for key, value in (
                ("host", t.get("host") or "localhost"),
                ("port", t.get("port") or "5432"),
                ("dbname", self.dbname),
                ("user", self.server_role),
                ("password", self._server_password),
            )
        )
        lines = [
            "[databases]",
            f"{self.dbname} = {server}",
            "[pgbouncer]",
            f"listen_addr = {HOST}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",  # TCP only: a socket in /tmp could collide with another PgBouncer's
            "auth_type = trust",  # 127.0.0.1 only, throwaway; the names must still be in auth_file
            f"auth_file = {self._tmp() / 'userlist.txt'}",
            f"admin_users = {self.client_user}",
            "pool_mode = transaction",
            f"max_client_conn = {s.max_client_conn}",
            f"default_pool_size = {s.pool_size}",
            f"reserve_pool_size = {s.reserve}",
            f"reserve_pool_timeout = {s.reserve_timeout:g}",
            f"max_db_connections = {s.server_bound}",  # the server tier's hard bound, whatever pools appear
            "server_reset_query = DISCARD ALL",  # session pooling only; transaction pooling resets nothing
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        if prepares_itself(self.version):
            lines.append("max_prepared_statements = 200")  # 1.21+: psycopg 3 may keep preparing
        return "\n".join(lines) + "\n"

    def _argv(self) -> list[str]:
        # Written at every launch: a retry on another port must listen there.
        self.config_path.write_text(self.config_text())
        chown_tree(self.config_path, self._user)
        return [str(self._binary), str(self.config_path)]

    def _ping(self) -> bool:
        # Ours, not another PgBouncer that holds this port: its configuration file is our file.
        try:
            conn = psycopg2.connect(self.admin_url, connect_timeout=1)
        except psycopg2.Error:
            return False
        try:
            conn.autocommit = True  # the admin console takes no transactions
            with conn.cursor() as cur:
                cur.execute("SHOW CONFIG")
                return any(row[0] == "conffile" and row[1] == str(self.config_path) for row in cur.fetchall())
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    def cleanup(self) -> None:
        """Stop, delete the files, and drop the server role once its sessions are gone."""
        if os.getpid() != self._owner_pid:
            return
        super().cleanup()
        if self._role_made:
            self._role_made = False
            try:
                self._execute(
                    sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"),
                    (self.server_role,),
                )
                self._execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.server_role)))
            except psycopg2.Error:
                pass  # the server is gone already (an embedded one stops first): nothing to drop

    close = cleanup


def show(admin_url: str, command: str) -> list[dict[str, object]]:
    """One admin console command (SHOW CLIENTS, SHOW POOLS, ...) as a list of rows by column name."""
    conn = psycopg2.connect(admin_url, application_name="forkpool-pgbouncer-admin", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(command)
            names = [column[0] for column in cur.description]
            return [dict(zip(names, row, strict=False)) for row in cur.fetchall()]
    finally:
        conn.close()
