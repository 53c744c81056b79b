"""A WSGI app with a protected SQLAlchemy engine made and used at import time (in the uWSGI master)."""

import os

from sqlalchemy import create_engine, text

import forkpool

engine = forkpool.protect(
    create_engine(
        os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1),
        pool_size=2,
        max_overflow=0,
        pool_timeout=10,
    ),
    eager=True,
)

with engine.connect() as conn:  # work at import
    conn.execute(text("SELECT 1"))


def application(environ, start_response):
    try:
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.005)")).scalar()
        status, body = "200 OK", f"{os.getpid()} {backend}"
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        status, body = "500 Internal Server Error", f"{os.getpid()} error {type(exc).__name__}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
