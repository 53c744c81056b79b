"""The flask-sqlalchemy stack: Flask-SQLAlchemy's ``db``, protected by forkpool, behind the views' interface.

The suite's views ask ``db()`` (the app's ``extensions["forkpool"]``) for this
request's connection, the pool's stats and a health check; this binding answers
from Flask-SQLAlchemy's engine, so the same views, load and checks run on the
stack users run (``forkpool loadtest --stack flask-sqlalchemy``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, g
from flask_sqlalchemy import SQLAlchemy

import forkpool
from forkpool.flask import EXTENSION_KEY
from suite.stacks import engine_stats, pool_size, sqlalchemy_url

_G_KEY = "_stack_checkout"


class SQLAlchemyBinding:
    def __init__(self, app: Flask) -> None:
        app.config.setdefault("SQLALCHEMY_DATABASE_URI", sqlalchemy_url())
        app.config.setdefault(
            "SQLALCHEMY_ENGINE_OPTIONS", {"pool_size": pool_size(), "max_overflow": 0, "pool_timeout": 10}
        )
        self.app = app
        self.db = SQLAlchemy(app)
        forkpool.protect(self.db, eager=True)  # the ceiling: every process opens its whole pool at start
        app.extensions[EXTENSION_KEY] = self
        app.teardown_appcontext(self._give_back)

    @property
    def pool(self) -> SQLAlchemyBinding:
        return self  # the views call db().pool.stats()

    def stats(self) -> dict[str, Any]:
        with self.app.app_context():
            return engine_stats(self.db.engine)

    def connection(self) -> Any:
        """This request's DB-API connection, checked out of SQLAlchemy's pool on first use."""
        conn = g.get(_G_KEY)
        if conn is None:
            conn = self.db.engine.raw_connection()
            setattr(g, _G_KEY, conn)
        return conn

    def health(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        try:
            conn = self.db.engine.raw_connection()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.rollback()
            finally:
                conn.close()
            return {"sqlalchemy": {"ok": True, "error": None}}
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            return {"sqlalchemy": {"ok": False, "error": type(exc).__name__}}

    def _give_back(self, exc: BaseException | None) -> None:
        conn = g.pop(_G_KEY, None)
        if conn is not None:
            conn.rollback()  # whatever the view left uncommitted
            conn.close()  # back to SQLAlchemy's pool
