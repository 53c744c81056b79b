"""Questions the harness asks the running suite and the server, from outside."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg2

from ._procs import pid_alive

__all__ = ["pid_alive", "rows_for_keys", "wait_for_rows", "web_pool_reports", "writers_for_keys"]


def _get_pool(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/pool", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def web_pool_reports(url: str, expected: set[int], rounds: int = 40) -> dict[int, dict]:
    """GET /pool from 8 concurrent clients until every web worker has answered (bounded)."""
    reports: dict[int, dict] = {}
    with ThreadPoolExecutor(8) as clients:
        for _ in range(rounds):
            for body in clients.map(lambda _: _get_pool(url), range(16)):
                if body:
                    reports[body["pid"]] = body["pool"]
            if set(reports) >= expected:
                break
    return reports


def rows_for_keys(database_url: str, keys: list[str]) -> dict[str, int]:
    """How many `events` rows exist for each key (0 is absent from the result)."""
    if not keys:
        return {}
    conn = psycopg2.connect(database_url, application_name="forkpool-harness-check", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT key, count(*) FROM events WHERE key = ANY(%s) GROUP BY key", (list(keys),))
            return dict(cur.fetchall())
    finally:
        conn.close()


def wait_for_rows(database_url: str, keys: list[str], timeout: float) -> dict[str, int]:
    """Poll until every key has its `events` row (the tasks drained) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        rows = rows_for_keys(database_url, keys)
        if len(rows) == len(set(keys)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def writers_for_keys(database_url: str, keys: list[str]) -> dict[str, int]:
    """Rows per writer role (``worker@h2``), from ``written_by``: the application_name of the task's transaction.

    A name not of the ``suite:role:pid`` shape counts under itself, so a writer
    that is no task process of the run shows up as what it is.
    """
    if not keys:
        return {}
    conn = psycopg2.connect(database_url, application_name="forkpool-harness-check", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(written_by, ''), count(*) FROM events WHERE key = ANY(%s) GROUP BY 1", (list(keys),)
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    found: dict[str, int] = {}
    for name, count in rows:
        parts = name.rsplit(":", 2)
        role = parts[1] if len(parts) == 3 and parts[2].isdigit() else name or "(none)"
        found[role] = found.get(role, 0) + count
    return found
