"""A WSGI app: GET / queries through the connection made at import time, GET /own through the worker's own."""

import os

from shared_conn import backend, conn, own


def app(environ, start_response):
    try:
        target = own() if environ.get("PATH_INFO") == "/own" else conn
        status, body = "200 OK", f"{os.getpid()} {backend(target)}"
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        status, body = "500 Internal Server Error", f"{os.getpid()} error {type(exc).__name__}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
