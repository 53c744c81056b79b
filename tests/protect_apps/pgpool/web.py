"""A WSGI app with a psycopg_pool ConnectionPool opened at import time; PROTECT=1 hands it to forkpool.protect."""

import os

from psycopg_pool import ConnectionPool

import forkpool

pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=2, max_size=2, timeout=2, open=True)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(pool)

with pool.connection() as conn:  # work at import: in the master, under preload_app
    conn.execute("SELECT 1")


def app(environ, start_response):
    try:
        with pool.connection() as conn:
            backend = conn.execute("SELECT pg_backend_pid() FROM pg_sleep(0.005)").fetchone()[0]
        status, body = "200 OK", f"{os.getpid()} {backend}"
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        status, body = "500 Internal Server Error", f"{os.getpid()} error {type(exc).__name__}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
