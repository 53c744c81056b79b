"""Polls pg_stat_activity for one run's sessions, every 50 ms, for the whole run.

The sampler's own session is named outside the run's prefix, so it never
counts itself. A server restart only pauses it: it reconnects and goes on.
"""

from __future__ import annotations

import threading
import time

import psycopg2

from .model import Sample

INTERVAL = 0.05

_QUERY = (
    "SELECT application_name, count(*) FROM pg_stat_activity "
    "WHERE left(application_name, %s) = %s GROUP BY 1"
)


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

    def start(self) -> "Sampler":
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
        conn = psycopg2.connect(self.database_url, application_name=f"forkpool-sampler {self.prefix}",
                                connect_timeout=2)
        conn.autocommit = True
        return conn

    def _sample(self, conn: psycopg2.extensions.connection) -> Sample:
        with conn.cursor() as cur:
            cur.execute(_QUERY, (len(self.prefix), self.prefix))
            rows = cur.fetchall()
        return Sample(self.now(), parse_sessions(rows))
