"""A WSGI app whose only pool is a SQLAlchemy engine made at import and protected (sizes from ENGINE_*)."""

import os

from sqlalchemy import create_engine, text

import forkpool

engine = create_engine(
    os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1),
    pool_size=int(os.environ["ENGINE_POOL_SIZE"]),
    max_overflow=int(os.environ.get("ENGINE_MAX_OVERFLOW", "0")),
    pool_timeout=10,
)
forkpool.protect(engine, eager=os.environ.get("ENGINE_EAGER") == "1")


def app(environ, start_response):
    with engine.connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()} {backend}".encode()]
