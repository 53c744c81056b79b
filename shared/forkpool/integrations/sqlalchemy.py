"""SQLAlchemy engines, and Flask-SQLAlchemy's ``db``: one pool per process, through SQLAlchemy's events.

- ``do_connect``: each new DB-API connection carries this process's identity
  (``application_name`` = ``<suite>:<role>:<pid>``) unless the app set one.
  That is the only listener: nothing is added to the checkout path. (SQLAlchemy's
  own recipe checks the pid at every checkout; here the at-fork hook and the
  server hooks do that work once per fork instead, see BENCHMARKS.md.)
- In a forked child, after its inherited sockets went to /dev/null,
  ``engine.dispose(close=False)`` (SQLAlchemy >= 1.4.33) replaces the pool
  without touching the old one: no close, no lock of the old pool taken.
- A master disposes properly (it owns the connections); a worker opens
  ``pool_size`` connections at start and disposes at exit.

Flask-SQLAlchemy keeps one engine per app and bind in ``db._app_engines``:
private, read because ``db.engines`` needs an app context that server hooks
do not have (tried with Flask-SQLAlchemy 3.1).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from ..endpoints import Endpoints, postgres
from ..identity import application_name
from ..stats import PoolReport

_ATTACHED = "_forkpool_attached"


def engines_of(obj: Any) -> Iterator[Any]:
    """The engines behind `obj`: itself, or every engine of a Flask-SQLAlchemy ``db``."""
    app_engines = getattr(obj, "_app_engines", None)
    if app_engines is None:
        yield obj
        return
    for by_bind in list(app_engines.values()):
        yield from by_bind.values()


def attach_engine(engine: Any) -> Endpoints:
    from sqlalchemy import event

    if not getattr(engine, _ATTACHED, False):

        @event.listens_for(engine, "do_connect")
        def _identity(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict) -> None:
            cparams.setdefault("application_name", application_name())

        setattr(engine, _ATTACHED, True)
    if engine.dialect.name != "postgresql":
        return Endpoints()
    return postgres(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))


class SQLAlchemyEngines:
    name = "sqlalchemy"

    def attach(self, obj: Any) -> Endpoints:
        found = Endpoints()
        for engine in engines_of(obj):
            found |= attach_engine(engine)
        return found

    def detach(self, obj: Any) -> None:
        for engine in engines_of(obj):
            engine.dispose(close=False)  # the old pool is dereferenced, not touched

    def release(self, obj: Any) -> None:
        for engine in engines_of(obj):
            engine.dispose()

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        done = True
        for engine in engines_of(obj):
            attach_engine(engine)  # an engine Flask-SQLAlchemy made since protect()
            if not eager:
                continue  # SQLAlchemy's pool connects on first use: so does the worker's
            size = getattr(engine.pool, "size", lambda: 0)()
            held = []
            try:
                for _ in range(size):
                    if time.monotonic() > deadline:
                        done = False
                        break
                    held.append(engine.raw_connection())
            finally:
                for conn in held:
                    conn.close()  # back to the pool
        return done

    def report(self, obj: Any) -> list[PoolReport]:
        return [engine_report(engine) for engine in engines_of(obj)]


def engine_report(engine: Any) -> PoolReport:
    """An engine's pool: QueuePool's maximum is pool_size + max_overflow (max_overflow -1: no bound)."""
    pool = engine.pool
    label = f"engine {engine.url.render_as_string(hide_password=True)}"
    backend = engine.dialect.name
    size, overflow = getattr(pool, "size", None), getattr(pool, "_max_overflow", None)
    if callable(size) and isinstance(overflow, int):  # QueuePool and its async twin
        # _max_overflow: QueuePool keeps the max_overflow argument nowhere public (SQLAlchemy 2.0, 2.1).
        bound = None if overflow < 0 else size() + overflow
        source = f"pool_size {size()} + max_overflow {overflow}"
        return PoolReport(label, backend, bound, source, open=pool.checkedin() + pool.checkedout(),
                          in_use=pool.checkedout())
    kind = type(pool).__name__
    if kind in ("SingletonThreadPool", "StaticPool", "AssertionPool"):
        return PoolReport(label, backend, 1 if kind != "SingletonThreadPool" else None, kind)
    return PoolReport(label, backend, None, kind)  # NullPool: one per checkout, no bound


INTEGRATION = SQLAlchemyEngines()
