"""A PostgreSQL of its own that logs how every session ended, for the runner tests (multiprocessing, RQ).

A session that ends without libpq's Terminate message is logged by PostgreSQL:
"unexpected EOF on client connection" (DEBUG1, idle session) or "could not
receive data from client: Connection reset by peer" (unread data). Every line
starts with the backend pid and the application name (``%p [%a]``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg2
import pytest

from harness.services import EmbeddedPostgres
from tests.conftest import wait_for

NO_GOODBYE = ("unexpected EOF on client connection", "Connection reset by peer", "could not receive data from client")


@pytest.fixture(scope="module")
def logged_pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(
        max_connections=60,
        settings={
            "log_min_messages": "debug1",
            "log_connections": "on",
            "log_disconnections": "on",
            "log_line_prefix": "%p [%a] ",
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def holders(server: EmbeddedPostgres, suite_id: str) -> dict[int, int]:
    """{process pid: its sessions} of this test's processes on `server`, by application name."""
    conn = psycopg2.connect(server.url, application_name="pytest-admin")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s", (f"{suite_id}:%",)
            )
            names = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    found: dict[int, int] = {}
    for name in names:
        pid = int(name.rsplit(":", 1)[1])
        found[pid] = found.get(pid, 0) + 1
    return found


def log_lines(server: EmbeddedPostgres, backends: set[int]) -> dict[int, list[str]]:
    """{backend pid: its log lines} for `backends`."""
    found: dict[int, list[str]] = {b: [] for b in backends}
    for line in server.log_path.read_text(errors="replace").splitlines():
        match = re.match(r"(\d+) \[", line)
        if match and int(match.group(1)) in found:
            found[int(match.group(1))].append(line)
    return found


def without_goodbye(server: EmbeddedPostgres, backends: set[int]) -> dict[int, list[str]]:
    """Wait until each of `backends` logged its disconnection; {backend: lines} of those that ended without a goodbye."""

    def all_ended() -> bool:
        return all(any("disconnection:" in line for line in lines) for lines in log_lines(server, backends).values())

    assert wait_for(all_ended, timeout=20), log_lines(server, backends)
    return {
        b: [line for line in lines if any(text in line for text in NO_GOODBYE)]
        for b, lines in log_lines(server, backends).items()
        if any(text in line for text in NO_GOODBYE for line in lines)
    }


def session_lister(server: EmbeddedPostgres, suite_id: str):
    """Like conftest's `sessions` fixture, on `server`: this test's sessions as (application_name, backend pid)."""

    def listing() -> list[tuple[str, int]]:
        conn = psycopg2.connect(server.url, application_name="pytest-admin")
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT application_name, pid FROM pg_stat_activity WHERE application_name LIKE %s ORDER BY pid",
                    (f"{suite_id}:%",),
                )
                return [(name, int(pid)) for name, pid in cur.fetchall()]
        finally:
            conn.close()

    return listing


def logged_backends(server: EmbeddedPostgres, suite_id: str) -> dict[int, str]:
    """{backend pid: application name} of every session of this test the server logged, over the whole run."""
    found: dict[int, str] = {}
    for line in server.log_path.read_text(errors="replace").splitlines():
        match = re.match(rf"(\d+) \[({re.escape(suite_id)}:[^\]]*)\]", line)
        if match:
            found[int(match.group(1))] = match.group(2)
    return found
