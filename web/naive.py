"""The anti-pattern, kept only so ``forkpool loadtest --naive`` can show what goes wrong. Never deploy it.

A plain psycopg2 pool created when the module is imported. Under
``preload_app`` the import runs in the Gunicorn master: the master holds the
connections, and every worker inherits the same sockets, with no hook to
detach them. Workers then interleave their queries on shared sockets.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg2.pool import ThreadedConnectionPool

from forkpool.flask import ForkPool
from forkpool.identity import application_name
from forkpool.settings import build_settings, settings_from_env
from web import create_app


class InheritedPool:
    """Just enough of the pool interface for the views: getconn, putconn, stats."""

    def __init__(self) -> None:
        settings = build_settings(**settings_from_env())
        self.size = settings.max_size
        self._pool = ThreadedConnectionPool(self.size, self.size, settings.dsn, application_name=application_name())

    def getconn(self, timeout: float | None = None) -> Any:
        return self._pool.getconn()

    def putconn(self, conn: Any) -> None:
        self._pool.putconn(conn)

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "name": "naive", "size": self.size, "min_size": self.size, "max_size": self.size}


class NaiveForkPool(ForkPool):
    def __init__(self, inherited: InheritedPool) -> None:
        super().__init__()
        self._inherited = inherited

    @property
    def pool(self) -> Any:  # the same object in every process: that is the bug
        return self._inherited


_shared_by_every_worker = InheritedPool()
app = create_app()
NaiveForkPool(_shared_by_every_worker).init_app(app)
