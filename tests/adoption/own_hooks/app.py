"""A small WSGI app that, like many, touches the database when it is imported (a warm-up query).

With ``preload_app`` that import happens in the Gunicorn master, which must not
keep the connection: forkpool's ``when_ready``, called from the user's own, closes it.
"""

import json
import os

import forkpool

with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
    cur.execute("SELECT 1")


def app(environ, start_response):
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1, pg_backend_pid()")
        one, backend = cur.fetchone()
    body = json.dumps({"select": one, "pid": os.getpid(), "backend_pid": backend}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
