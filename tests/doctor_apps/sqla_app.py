"""A WSGI app with a SQLAlchemy engine made at import time, as many apps have (tests/test_doctor.py)."""

import os

from sqlalchemy import create_engine, text

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1)
engine = create_engine(url, pool_size=2, max_overflow=0,
                       connect_args={"application_name": os.environ.get("APP_NAME", "sqla-app")})

with engine.connect() as conn:  # work done at import: under preload_app, in the Gunicorn master
    conn.execute(text("SELECT 1"))


def app(environ, start_response):
    with engine.connect() as conn:
        value = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(value).encode()]
