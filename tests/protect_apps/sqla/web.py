"""A WSGI app with a SQLAlchemy engine made at import time; PROTECT=1 hands it to forkpool.protect."""

import os

from sqlalchemy import text

import forkpool
from dialect import backend, engine

if os.environ.get("PROTECT") == "1":
    forkpool.protect(engine, eager=True)  # the test counts whole pools per process

with engine.connect() as conn:  # work at import: in the master, under preload_app
    conn.execute(text("SELECT 1"))


def app(environ, start_response):
    try:
        status, body = "200 OK", f"{os.getpid()} {backend()}"
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        status, body = "500 Internal Server Error", f"{os.getpid()} error {type(exc).__name__}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
