"""A Flask app with Flask-SQLAlchemy's ``db`` (two engines: the default and a bind) made at import time.

PROTECT=1 calls ``forkpool.protect(db)``, as the README says. Both engines are
used at import (in the master, under preload_app; in Celery's main process,
which imports this through tasks.py), so each has a session for every worker
to inherit: the bind is there because Flask-SQLAlchemy keeps its engines in a
map, and protecting only ``db.engine`` would leave the other one shared.
"""

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

import forkpool

URL = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1)

app = Flask(__name__)
app.config.update(
    SQLALCHEMY_DATABASE_URI=URL,
    SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2, "max_overflow": 0, "pool_timeout": 10},
    SQLALCHEMY_BINDS={"reports": {"url": URL, "pool_size": 1, "max_overflow": 0, "pool_timeout": 10}},
)
db = SQLAlchemy(app)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(db, eager=True)  # the test counts whole pools per process

with app.app_context():  # work at import: in the master, under preload_app
    db.session.execute(text("SELECT 1"))
    with db.engines["reports"].connect() as conn:
        conn.execute(text("SELECT 1"))


def answer() -> str:
    """Both engines used, in an app context: the default engine's backend pid, or "error <kind>"."""
    # The session ends here, not in Flask-SQLAlchemy's teardown: on a session another process
    # read from, the teardown's rollback raises too, and Gunicorn answers its own HTML 500.
    try:
        with db.engines["reports"].connect() as conn:
            conn.execute(text("SELECT 1"))
        found = db.session.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.005)")).scalar()
        db.session.remove()
        return str(found)
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        try:
            db.session.remove()
        except Exception:  # noqa: BLE001 - "error with no message from the libpq" again, from the rollback
            pass
        return f"error {type(exc).__name__}"


@app.get("/")
def backend():
    found = answer()
    return f"{os.getpid()} {found}", 500 if found.startswith("error") else 200, {"Content-Type": "text/plain"}
