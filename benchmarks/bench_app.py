"""The suite benchmark's web app: one DB-backed endpoint, the same code in every mode.

    GET /item     a random row of bench_items by primary key, as JSON (one SELECT, committed)
    GET /healthz  no I/O

A bare WSGI callable, no framework, so that the framework's cost does not dilute the
difference between the ways of getting a connection (``benchmarks.db_modes``, mode from
BENCH_DB_MODE). Served by ``gunicorn -c benchmarks/gunicorn_bench.conf.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import Any

from .bench_data import ITEM_QUERY, ITEM_ROWS
from .db_modes import connection_source, current_mode

StartResponse = Callable[..., Any]

_connection = connection_source(current_mode())  # in the worker: imported after fork (no preload)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/item":
        return _item(start_response)
    if path == "/healthz":
        return _send(start_response, "200 OK", b'{"status": "ok"}')
    return _send(start_response, "404 Not Found", b'{"error": "not found"}')


def _item(start_response: StartResponse) -> Iterable[bytes]:
    item_id = random.randint(1, ITEM_ROWS)
    try:
        with _connection() as conn, conn.cursor() as cur:
            cur.execute(ITEM_QUERY, (item_id,))
            row = cur.fetchone()
    except Exception as exc:  # noqa: BLE001 - counted by the load generator as a non-2xx
        return _send(start_response, "500 Internal Server Error", json.dumps({"error": type(exc).__name__}).encode())
    if row is None:
        return _send(start_response, "404 Not Found", b'{"error": "no such item"}')
    return _send(start_response, "200 OK", json.dumps({"id": row[0], "name": row[1], "score": row[2]}).encode())


def _send(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
