"""The suite's schema, created once by ``forkpool initdb`` (never by every worker at start-up).

Idempotent: every statement is IF NOT EXISTS, so running it again changes nothing.
"""

from __future__ import annotations

from .registry import get_pool

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
    """Create the tables if missing; an advisory lock serialises concurrent runs."""
    with get_pool(pool_name).connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('forkpool.initdb'))")
        cur.execute(SCHEMA_SQL)
