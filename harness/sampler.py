"""Polls pg_stat_activity for one run's sessions (on one server, or summed over several), every 50 ms, all run.

The sampler's own session is named outside the run's prefix, so it never
counts itself. A server restart only pauses it: it reconnects and goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import psycopg2

from .model import Sample

INTERVAL = 0.05

_QUERY = "SELECT application_name, count(*) FROM pg_stat_activity WHERE left(application_name, %s) = %s GROUP BY 1"


def parse_sessions(rows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """``<suite-id>:<role>:<pid>`` rows -> {(role, pid): count}; names of another shape are skipped."""
    sessions: dict[tuple[str, int], int] = {}
    for name, count in rows:
        parts = name.rsplit(":", 2)
        if len(parts) == 3 and parts[2].isdigit():
            key = (parts[1], int(parts[2]))
            sessions[key] = sessions.get(key, 0) + count
    return sessions


class Sampler:
    def __init__(self, database_url: str, suite_id: str, interval: float = INTERVAL) -> None:
        self.database_url = database_url
        self.prefix = f"{suite_id}:"
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._conn: psycopg2.extensions.connection | None = None
        self._thread = threading.Thread(target=self._run, name="forkpool-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(5)
        if self._conn is not None:
            self._conn.close()
        return self.samples

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample_now(self) -> Sample:
        """One sample taken on the caller's thread, with a connection of its own."""
        conn = self._connect()
        try:
            return self._sample(conn)
        finally:
            conn.close()

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                self.samples.append(self._sample(self._conn))
            except psycopg2.Error:
                self.errors += 1
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
            self._stop.wait(max(self.interval - (time.monotonic() - started), 0.0))

    def _connect(self) -> psycopg2.extensions.connection:
        return self._connect_to(self.database_url)

    def _connect_to(self, url: str) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(url, application_name=f"forkpool-sampler {self.prefix}", connect_timeout=2)
        conn.autocommit = True
        return conn

    def _sample(self, conn: psycopg2.extensions.connection) -> Sample:
        with conn.cursor() as cur:
            cur.execute(_QUERY, (len(self.prefix), self.prefix))
            rows = cur.fetchall()
        return Sample(self.now(), parse_sessions(rows))


class _Pair:
    """The admin console and the server, closed together (the sampler reconnects both)."""

    def __init__(self, admin: psycopg2.extensions.connection, server: psycopg2.extensions.connection) -> None:
        self.admin, self.server = admin, server

    @property
    def closed(self) -> bool:
        return bool(self.admin.closed or self.server.closed)

    def close(self) -> None:
        self.admin.close()
        self.server.close()


class BouncerSampler(Sampler):
    """Behind PgBouncer: its clients by identity (``SHOW CLIENTS``), and its server connections at PostgreSQL.

    The clients are the suite's connections, so every check that counts
    sessions by role and pid counts them here; `servers` is how many sessions
    PgBouncer's own role holds on the server, for check 8.
    """

    def __init__(
        self, admin_url: str, database_url: str, suite_id: str, server_role: str, interval: float = INTERVAL
    ) -> None:
        super().__init__(database_url, suite_id, interval)
        self.admin_url, self.server_role = admin_url, server_role

    def _connect(self) -> _Pair:  # type: ignore[override]
        name = f"forkpool-sampler {self.prefix}"  # outside the run's prefix: never counted
        admin = psycopg2.connect(self.admin_url, application_name=name, connect_timeout=2)
        admin.autocommit = True  # the admin console takes no transactions
        try:
            server = super()._connect()
        except BaseException:
            admin.close()
            raise
        return _Pair(admin, server)

    def _sample(self, conn: _Pair) -> Sample:  # type: ignore[override]
        with conn.admin.cursor() as cur:
            cur.execute("SHOW CLIENTS")
            column = [c[0] for c in cur.description].index("application_name")
            names = [row[column] for row in cur.fetchall()]
        with conn.server.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self.server_role,))
            servers = int(cur.fetchone()[0])
        rows = [(name, 1) for name in names if name and name.startswith(self.prefix)]
        return Sample(self.now(), parse_sessions(rows), servers)


# What libpq says when no server is there to hold a session: refused (TCP), no socket file (Unix), the
# server shutting down or starting up (57P03), or the connection ended under the query by its shutdown.
_GONE = (
    "Connection refused",
    "No such file or directory",
    "the database system is shutting down",
    "the database system is starting up",
    "server closed the connection unexpectedly",
)


def _server_gone(exc: psycopg2.OperationalError) -> bool:
    return any(text in str(exc) for text in _GONE)


class _Group:
    """One connection per server, each opened again when lost; a server that refuses one is down."""

    def __init__(self, connect: Callable[[str], psycopg2.extensions.connection], urls: Sequence[str]) -> None:
        self._connect, self.urls = connect, list(urls)
        self.conns: list[psycopg2.extensions.connection | None] = [None] * len(self.urls)
        self.closed = False

    def rows(self, query: str, params: tuple) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for i, url in enumerate(self.urls):
            conn = self.conns[i]
            try:
                if conn is None or conn.closed:
                    conn = self.conns[i] = self._connect(url)
                with conn.cursor() as cur:
                    cur.execute(query, params)
                    found += cur.fetchall()
            except psycopg2.OperationalError as exc:
                if conn is not None:
                    conn.close()
                self.conns[i] = None
                if not _server_gone(exc):
                    # A timeout, or "too many clients": the server is up and its sessions unknown. The
                    # sample is skipped (Sampler._run); counted as none it could hide a ceiling breach.
                    raise
                # Down (stopped, stopping or not yet started): it holds no session of ours.
        return found

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()
        self.closed = True


class ServersSampler(Sampler):
    """The run's sessions summed over several servers: a primary and its standby through a failover, where
    the suite's sessions move from one to the other (harness/suite_failover.py).

    The servers are asked in the order given, one after the other: give the one sessions move *to* first
    (the standby), so that a session that moves between the two queries is missed in that sample rather
    than counted twice (a ceiling check must never see an excess that did not exist). A server that
    refuses a connection counts as holding none: it is down.
    """

    def __init__(self, urls: Sequence[str], suite_id: str, interval: float = INTERVAL) -> None:
        super().__init__(urls[0], suite_id, interval)
        self.urls = list(urls)

    def _connect(self) -> _Group:  # type: ignore[override]
        return _Group(super()._connect_to, self.urls)

    def _sample(self, conn: _Group) -> Sample:  # type: ignore[override]
        return Sample(self.now(), parse_sessions(conn.rows(_QUERY, (len(self.prefix), self.prefix))))
