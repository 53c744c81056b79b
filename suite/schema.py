"""The suite's schema, created once by ``forkpool initdb`` (never by every worker at start-up).

Idempotent: every statement is IF NOT EXISTS, so running it again changes nothing.
"""

from __future__ import annotations

import psycopg2

from forkpool._registry import get_pool

NAME_MIN, NAME_MAX = 1, 200

SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS items (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN {NAME_MIN} AND {NAME_MAX}),
    payload     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS events (
    key         text PRIMARY KEY,
    data        jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    written_by  text NOT NULL
);
"""


def init_schema(pool_name: str = "default") -> None:
    """Create the tables if missing, through this process's pool `pool_name`."""
    with get_pool(pool_name).connection() as conn:
        _create(conn)


def init_schema_at(dsn: str) -> None:
    """The same with a one-off connection: for tools that hold no pool (the harness)."""
    conn = psycopg2.connect(dsn, application_name="forkpool-initdb", connect_timeout=10)
    try:
        _create(conn)
        conn.commit()
    finally:
        conn.close()


def _create(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        # Concurrent runs (several harnesses, compose restarts) serialise here.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('forkpool.initdb'))")
        cur.execute(SCHEMA_SQL)
