"""A small Flask app with a SQLAlchemy engine made at import time, as many apps have (tests/test_doctor.py).

At import it also serves one warm-up request in-process (Flask's test client),
as apps do to fail fast on a bad configuration: under preload_app that request
runs in the Gunicorn master, and its connection stays in the engine's pool
there, to be inherited by every worker.
"""

import os

from flask import Flask
from sqlalchemy import create_engine, text

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1)
engine = create_engine(
    url, pool_size=2, max_overflow=0, connect_args={"application_name": os.environ.get("APP_NAME", "sqla-app")}
)

app = Flask(__name__)


@app.get("/")
def backend_pid() -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT pg_backend_pid()")).scalar())


warm_up = app.test_client().get("/")
assert warm_up.status_code == 200, warm_up.get_data(as_text=True)
