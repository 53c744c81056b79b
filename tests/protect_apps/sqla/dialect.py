"""The engine both apps use: PostgreSQL (DATABASE_URL, psycopg2) unless SQLA_URL names another database.

Every answer names the server session (or, for SQLite, the connection) it came
from, so a test tells whether two processes ever used one: PostgreSQL's and
MariaDB's own session ids; for SQLite, which has none, the pid of the process
that opened the connection and the connection's number there.
"""

import itertools
import os

from sqlalchemy import create_engine, event, text

URL = os.environ.get("SQLA_URL") or os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1)
engine = create_engine(URL, pool_size=2, max_overflow=0, pool_timeout=10)
_numbers = itertools.count(1)


@event.listens_for(engine, "connect")
def _tag(dbapi_connection, record):
    record.info["made_by"] = f"{os.getpid()}.{next(_numbers)}"


if engine.dialect.name == "sqlite":
    with engine.begin() as conn:  # work at import: in the master
        conn.execute(text("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY)"))


def session_query() -> str:
    if engine.dialect.name == "postgresql":
        return "SELECT pg_backend_pid() FROM pg_sleep(0.005)"
    if engine.dialect.name in ("mysql", "mariadb"):
        return "SELECT CONNECTION_ID() FROM (SELECT SLEEP(0.005)) AS pause"
    return "SELECT count(*) FROM hits"


def backend() -> str:
    """The session this process's query ran on."""
    with engine.connect() as conn:
        found = conn.execute(text(session_query())).scalar()
        return conn.connection.info["made_by"] if engine.dialect.name == "sqlite" else str(found)
