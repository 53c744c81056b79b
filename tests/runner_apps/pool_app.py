"""A WSGI app that uses forkpool's pool at import time (in the uWSGI master, unless lazy-apps).

Answers "<worker pid> <backend pid>"; /stuck sleeps past uWSGI's harakiri bound.
"""

import os
import time

import forkpool

if os.environ.get("WIRE_IN_APP") == "1":
    import forkpool.uwsgi  # the one line, in the app instead of uWSGI's --import

pool = forkpool.get_pool()
with pool.connection() as conn, conn.cursor() as cur:  # work at import
    cur.execute("SELECT 1")


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/stuck":
        time.sleep(120)  # harakiri kills the worker long before this ends
    try:
        with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid() FROM pg_sleep(0.005)")
            backend = cur.fetchone()[0]
        status, body = "200 OK", f"{os.getpid()} {backend}"
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        status, body = "500 Internal Server Error", f"{os.getpid()} error {type(exc).__name__}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
