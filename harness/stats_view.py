"""`forkpool stats`: every process's pool in a running suite, per role, beside the server's count.

Reads the suite's Prometheus metrics (GET /metrics serves web and workers
alike), asks GET /pool for the suite id, and pg_stat_activity for the count the
server sees. `forkpool up` leaves the URLs in a state file, so with no options
this reports on the suite it started.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2
from prometheus_client.parser import text_string_to_metric_families

from .sampler import _QUERY, parse_sessions

STATE_FILE = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache") / "forkpool" / "up.json"
PER_PROCESS = ("size", "idle", "in_use", "waiting", "max_size")


def write_state(**fields: str) -> None:
    """Where `forkpool up` is running, for `forkpool stats` (private: it may hold a DSN)."""
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(fields, out)


def read_state() -> dict[str, str]:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def clear_state() -> None:
    STATE_FILE.unlink(missing_ok=True)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def processes_from_metrics(text: str) -> dict[tuple[str, int], dict[str, float]]:
    """{(role, pid): {"size": .., "idle": .., ...}} from the gauges; timeouts per role from the counter."""
    found: dict[tuple[str, int], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        key = family.name.removeprefix("forkpool_pool_")
        if key not in PER_PROCESS:
            continue
        for sample in family.samples:
            pid = sample.labels.get("pid")
            # A process's pools add up: forkpool's own and protected ones (SQLAlchemy...), PostgreSQL's only.
            if pid is None or sample.labels.get("backend", "postgresql") != "postgresql":
                continue
            values = found.setdefault((sample.labels["role"], int(pid)), {})
            values[key] = values.get(key, 0) + sample.value
    return found


def timeouts_by_role(text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "forkpool_pool_timeouts":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[sample.labels["role"]] = totals.get(sample.labels["role"], 0) + sample.value
    return totals


def server_counts(database_url: str, suite: str) -> dict[tuple[str, int], int]:
    """Sessions per (role, pid) at the server; at PgBouncer's admin console (database ``pgbouncer``), its clients.

    Behind PgBouncer the server's sessions carry whichever client's name ran last
    on them: the suite's own connections are PgBouncer's clients (`forkpool up
    --pgbouncer` leaves its admin console's URL for this).
    """
    conn = psycopg2.connect(database_url, application_name="forkpool-stats", connect_timeout=5)
    prefix = f"{suite}:"
    try:
        with conn.cursor() as cur:
            if conn.info.dbname == "pgbouncer":
                conn.autocommit = True  # the admin console takes no transactions
                cur.execute("SHOW CLIENTS")
                column = [c[0] for c in cur.description].index("application_name")
                return parse_sessions(
                    [(row[column], 1) for row in cur.fetchall() if (row[column] or "").startswith(prefix)]
                )
            cur.execute(_QUERY, (len(prefix), prefix))
            return parse_sessions(cur.fetchall())
    finally:
        conn.close()


def collect(web_url: str, database_url: str | None) -> dict[str, Any]:
    text = _get(web_url + "/metrics").decode()
    suite = json.loads(_get(web_url + "/pool"))["suite_id"]
    processes = processes_from_metrics(text)
    server = server_counts(database_url, suite) if database_url else {}
    rows = [
        {
            "role": role,
            "pid": pid,
            **{k: int(v) for k, v in values.items()},
            "server": server.get((role, pid)) if database_url else None,
        }
        for (role, pid), values in sorted(processes.items())
    ]
    roles: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = roles.setdefault(row["role"], {"processes": 0, "size": 0, "in_use": 0, "waiting": 0, "server": 0})
        total["processes"] += 1
        for k in ("size", "in_use", "waiting"):
            total[k] += row.get(k, 0)
        total["server"] += row["server"] or 0
    for role, timeouts in timeouts_by_role(text).items():
        roles.setdefault(role, {}).update(timeouts=int(timeouts))
    return {"suite_id": suite, "processes": rows, "roles": roles, "server_checked": bool(database_url)}
