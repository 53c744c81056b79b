"""Django's side of the suite's data layer: DATABASE_URL as a DATABASES entry, and the native pool's stats.

Framework code only where needed: ``database_from_url`` runs in settings.py,
before Django is set up; ``pool_stats`` and ``health`` in a running process.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from forkpool import _base as keys

ALIAS = "default"
POOL_TIMEOUT_S = 10  # as the flask-sqlalchemy stack's pool_timeout: a busy pool answers 503 well inside Gunicorn's 30 s
CONNECT_TIMEOUT_S = 5  # forkpool's DB_POOL_CONNECT_TIMEOUT default: a silent server is not waited for long


def database_from_url(url: str, pool_size: int) -> dict[str, Any]:
    """A DATABASES entry from a libpq DSN (URL or key=value), on Django's native pool of fixed size `pool_size`.

    psycopg's own parser, so whatever forkpool and the harness accept works here
    too; parameters Django has no setting for (sslmode, ...) go to OPTIONS,
    which Django hands to psycopg.connect().
    """
    from psycopg.conninfo import conninfo_to_dict

    params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    user = params.pop("user", "")
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, **params}
    entry = {
        "ENGINE": "django.db.backends.postgresql",
        # libpq's default database is the user's name; Django insists on a NAME.
        "NAME": options.pop("dbname", "") or user or getpass.getuser(),
        "USER": user,
        "PASSWORD": options.pop("password", ""),
        "HOST": options.pop("host", ""),
        "PORT": options.pop("port", ""),
        "CONN_MAX_AGE": 0,  # pooled: a request's or task's connection goes back to the pool when it ends
    }
    # min = max: every process holds exactly its pool, the number the harness's checks count.
    options["pool"] = {"min_size": pool_size, "max_size": pool_size, "timeout": POOL_TIMEOUT_S}
    entry["OPTIONS"] = options
    return entry


def pool_stats() -> dict[str, Any]:
    """This process's pool under the keys of forkpool._base; `size` counts what the server sees for this pid."""
    from django.db import connections

    wrapper = connections[ALIAS]
    pool = wrapper.pool  # psycopg_pool's ConnectionPool, shared by every thread of this process
    measures = pool.get_stats()  # public; get_stats() reads without resetting the counters
    size, idle = measures.get("pool_size", 0), measures.get("pool_available", 0)
    settings = wrapper.settings_dict
    return {
        keys.PID: os.getpid(),
        keys.NAME: f"django:{ALIAS}",
        keys.SERVER: f"{settings['HOST'] or 'localhost'}:{settings['PORT'] or 5432}/{settings['NAME']}",
        keys.MIN_SIZE: pool.min_size,
        keys.MAX_SIZE: pool.max_size,
        keys.SIZE: size,
        keys.IDLE: idle,
        keys.IN_USE: size - idle,
        keys.WAITING: measures.get("requests_waiting", 0),
    }


def health() -> dict[str, dict[str, Any]]:
    """One round trip on this thread's connection: {"django": {"ok", "error"}}, never raising."""
    from django.db import DatabaseError, connections

    try:
        with connections[ALIAS].cursor() as cur:
            cur.execute("SELECT 1")
        return {"django": {"ok": True, "error": None}}
    except DatabaseError as exc:
        return {"django": {"ok": False, "error": type(exc.__cause__ or exc).__name__}}
