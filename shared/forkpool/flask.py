"""A Flask extension that binds this process's forkpool pool to an app, the Flask way (extra ``flask``).

    from forkpool.flask import ForkPool

    db = ForkPool()          # in your extensions module
    db.init_app(app)         # in create_app()
    db.connection()          # in a view: this request's connection

One connection per app context (request), checked out on first use and always
returned at teardown; work not committed by the view is rolled back, never
committed implicitly. The pool is looked up per request, not captured at
``init_app``, so an app created before fork (``preload_app``) uses each worker's
own pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import connection as PgConnection
from ._pool import Pool
from ._registry import get_pool
from .errors import import_extra
from .health import health_check

import_extra("flask", "flask", "forkpool.flask")

from flask import g  # noqa: E402

if TYPE_CHECKING:
    from flask import Flask

EXTENSION_KEY = "forkpool"
_G_KEY = "_forkpool_checkout"


class ForkPool:
    def __init__(self, app: Flask | None = None, pool_name: str = "default") -> None:
        self.pool_name = pool_name
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions[EXTENSION_KEY] = self
        app.teardown_appcontext(self._give_back)

    @property
    def pool(self) -> Pool:
        return get_pool(self.pool_name)

    def connection(self) -> PgConnection:
        """This request's connection (the same one for the whole request)."""
        checkout = g.get(_G_KEY)
        if checkout is None:
            pool = self.pool
            checkout = (pool, pool.getconn())
            setattr(g, _G_KEY, checkout)
        return checkout[1]

    def health(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        """A round trip through each of this process's pools (creating this extension's first)."""
        self.pool  # noqa: B018 - the property creates this extension's pool
        return health_check(timeout)

    def _give_back(self, exc: BaseException | None) -> None:
        checkout = g.pop(_G_KEY, None)
        if checkout is not None:
            pool, conn = checkout
            pool.putconn(conn)  # rolls back whatever the view left uncommitted


def db() -> ForkPool:
    """The extension of the current app."""
    from flask import current_app

    return current_app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]  # ForkPool.init_app put it there
