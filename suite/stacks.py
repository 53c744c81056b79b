"""Which data layer the suite's web and workers run on: forkpool's own pool, or a stack users already have.

    SUITE_STACK=forkpool           forkpool.get_pool() (default)
    SUITE_STACK=flask-sqlalchemy   web: Flask-SQLAlchemy's db; workers: a SQLAlchemy engine made at import;
                                   both handed to forkpool.protect()
    SUITE_STACK=django             its own small project (django_stack/): Django views and a Celery worker
                                   with Django, on Django's native pool, protected by "forkpool.django"

Views and tasks ask ``store()`` for a connection and for pool stats (the
django stack has views and tasks of its own, on Django's ``connection``); the
harness runs the same load and the same checks whatever the stack, so a user
sees the ceiling hold for the stack they run (``forkpool loadtest --stack``).
A stack's pool size is ``STACK_POOL_SIZE`` (forkpool's ``DB_POOL_SIZE`` would
open forkpool's own pool beside it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import forkpool
from forkpool import _base as keys

STACK_ENV = "SUITE_STACK"
POOL_SIZE_ENV = "STACK_POOL_SIZE"
FORKPOOL, FLASK_SQLALCHEMY, DJANGO = "forkpool", "flask-sqlalchemy", "django"
STACKS = (FORKPOOL, FLASK_SQLALCHEMY, DJANGO)


def stack_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(pool busy, database unavailable) errors of the stacks besides forkpool's and psycopg2's own."""
    try:
        from sqlalchemy import exc
    except ImportError:
        return (), ()
    return (exc.TimeoutError,), (exc.OperationalError, exc.DisconnectionError)


class Store(Protocol):
    def connection(self) -> Any: ...  # a context manager: commit on success, rollback on error, returned
    def stats(self) -> dict[str, Any]: ...


def stack() -> str:
    name = os.environ.get(STACK_ENV) or FORKPOOL
    if name not in STACKS:
        raise forkpool.ConfigError(f"{STACK_ENV}={name!r} must be one of {', '.join(STACKS)}")
    return name


def pool_size() -> int:
    from forkpool.settings import env_int

    return env_int(POOL_SIZE_ENV, 4, minimum=1)


def sqlalchemy_url() -> str:
    url = os.environ.get("DATABASE_URL") or "postgresql://"
    return url.replace("postgresql://", "postgresql+psycopg2://", 1).replace("postgres://", "postgresql+psycopg2://", 1)


class EngineStore:
    """A SQLAlchemy engine seen through the suite's Store interface."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.engine.raw_connection()  # the DB-API connection, checked out of SQLAlchemy's pool
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            conn.close()  # back to the pool

    def stats(self) -> dict[str, Any]:
        return engine_stats(self.engine)


def engine_stats(engine: Any) -> dict[str, Any]:
    """A QueuePool's state under the keys of forkpool._base (size = idle + in use, as the server counts it)."""
    pool = engine.pool
    idle, in_use = pool.checkedin(), pool.checkedout()
    return {
        keys.PID: os.getpid(),
        keys.NAME: "sqlalchemy",
        keys.SERVER: engine.url.render_as_string(),
        keys.MIN_SIZE: pool.size(),
        keys.MAX_SIZE: pool.size(),  # the stacks run with max_overflow=0
        keys.SIZE: idle + in_use,
        keys.IDLE: idle,
        keys.IN_USE: in_use,
    }


_worker_store: Store | None = None


def worker_store() -> Store:
    """The workers' store: forkpool's pool, or the engine made (and protected) at the workers' import."""
    if stack() == FORKPOOL:
        return forkpool.get_pool()
    assert _worker_store is not None, "workers.tasks makes the stack's engine at import"
    return _worker_store


def make_worker_engine() -> None:
    """At the workers' import, as users do: an engine per module, protected so each child gets its own."""
    global _worker_store
    if stack() == FLASK_SQLALCHEMY and _worker_store is None:
        from sqlalchemy import create_engine

        engine = create_engine(sqlalchemy_url(), pool_size=pool_size(), max_overflow=0, pool_timeout=10)
        _worker_store = EngineStore(forkpool.protect(engine, eager=True))
