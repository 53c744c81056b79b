"""Every PostgreSQL alias of ``settings.DATABASES`` as one protected object: Django's connections and native pools.

What is inherited across fork, and what a child does with it (no network I/O,
no lock a parent thread may have held):

- the forking thread's ``DatabaseWrapper.connection`` (a classic connection,
  or one checked out of a pool): its socket already points at /dev/null
  (``protection`` did that by endpoint; ``drop_without_io`` again here for a
  socket the endpoints missed); the wrapper lets go of it as Django's own
  ``close()`` would, minus the close;
- the pools of Django >= 5.1 (``OPTIONS["pool"]``, psycopg 3 + psycopg_pool):
  they live in the class-level dict ``DatabaseWrapper._connection_pools``,
  keyed by alias, so every child finds its parent's pool objects there, with
  the parent's sockets and without the parent's worker threads. The child
  moves them out of the dict, so Django builds a new pool in the child on first
  use (or at ``warm``), with this process's identity.

The graveyard: an inherited pool may not be closed in the child (``close()``
takes the pool's lock and says goodbye on the parent's sockets) and may not be
dropped either: psycopg_pool's ``ConnectionPool.__del__`` stops the workers,
which puts tasks on its queue and takes the scheduler's lock, both of which a
parent thread may have held at fork time (read in psycopg_pool 3.3.3).
So every inherited pool, and the connection the wrapper held, is kept
referenced for the life of the process in ``graveyard()``: at most one pool and
one connection per alias per fork generation (a Gunicorn or Celery child
forked from a master that released properly inherits none: the graveyard only
fills when something forked without forkpool's master hooks). Marking the
pool closed instead (``pool._closed = True``, which makes ``__del__`` return
early) would free the memory but writes a private attribute of psycopg_pool
whose meaning may change; a few kilobytes per fork is the cheaper risk.

Identity: Django builds connection parameters from ``OPTIONS`` at every
classic connect, and once per pool (psycopg_pool keeps the kwargs it was made
with). So ``OPTIONS["application_name"]`` is set to ``<suite>:<role>:<pid>``
whenever this process's identity may have changed: at protect time, in the
forked child (a dict write: no lock), and at ``warm`` once the server hooks
have named the role, before the child's pool is built. A pool made in the child
after fork therefore carries the child's pid. An ``application_name`` the
project set itself is never overwritten.

Private API: ``DatabaseWrapper._connection_pools`` (a class attribute, no
public accessor: ``close_pool()`` closes, which a child must not do). Read in
Django 5.1.15 and 5.2.19 (the same code), run with 5.2.19; Django 6 (Python
3.12+) not tried.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..stats import PoolReport
from ..endpoints import Endpoints, postgres
from ..identity import application_name
from ..integrations.dbapi import drop_without_io
from ..per_process import home

logger = logging.getLogger("forkpool.django")


def graveyard() -> list[Any]:
    """What children inherited and may neither close nor drop: kept referenced for the life of the process."""
    holder = home()
    if not hasattr(holder, "django_graveyard"):
        holder.django_graveyard = []
    return holder.django_graveyard  # type: ignore[no-any-return]


@dataclass(eq=False)
class DjangoDatabases:
    """The object forkpool protects: the project's PostgreSQL aliases, resolved at ``attach``."""

    aliases: tuple[str, ...] = ()
    pooled: frozenset[str] = frozenset()
    persistent: frozenset[str] = frozenset()  # CONN_MAX_AGE != 0
    pool_dicts: list[dict] = field(default_factory=list)  # each backend class's _connection_pools
    identities: dict[str, str] = field(default_factory=dict)  # alias -> the application_name we set last
    # False when a server closes classic connections between units of work anyway
    # (Celery's Django fixup, by default): opening one at worker start would be wasted.
    warm_classic: bool = True

    def holds_connections(self) -> bool:
        """Does this process (this thread's wrappers, any pool) hold anything now?"""
        from django.db import connections

        if any(pools.keys() & set(self.aliases) for pools in self.pool_dicts):
            return True
        return any(conn.connection is not None for conn in connections.all(initialized_only=True)
                   if conn.alias in self.aliases)


class DjangoIntegration:
    name = "django"

    def attach(self, obj: DjangoDatabases) -> Endpoints:
        from django.db import connections

        found = Endpoints()
        aliases, pooled, persistent, pool_dicts = [], set(), set(), []
        for alias in connections:
            wrapper = connections[alias]  # this thread's wrapper: made, not connected
            if wrapper.vendor != "postgresql":
                logger.info("forkpool.django: database %r (%s) is not PostgreSQL; left alone", alias, wrapper.vendor)
                continue
            aliases.append(alias)
            settings_dict = wrapper.settings_dict
            if (settings_dict.get("OPTIONS") or {}).get("pool"):
                pooled.add(alias)
            if settings_dict.get("CONN_MAX_AGE") != 0:
                persistent.add(alias)
            pools = getattr(type(wrapper), "_connection_pools", None)  # Django >= 5.1
            if isinstance(pools, dict) and not any(pools is known for known in pool_dicts):
                pool_dicts.append(pools)
            set_identity(obj, alias, settings_dict)
            found |= postgres(dsn_of(settings_dict))
        obj.aliases, obj.pooled, obj.persistent = tuple(aliases), frozenset(pooled), frozenset(persistent)
        obj.pool_dicts = pool_dicts
        return found

    def detach(self, obj: DjangoDatabases) -> None:
        # In the child, in the at-fork hook: dict and attribute writes only.
        from django.db import connections

        buried = graveyard()
        for conn in connections.all(initialized_only=True):  # this thread's wrappers; no wrapper is made
            if conn.alias in obj.aliases and conn.connection is not None:
                drop_without_io(conn.connection)
                buried.append(conn.connection)
                forget_connection(conn)
        for pools in obj.pool_dicts:
            for alias in list(pools):
                buried.append(pools.pop(alias))
        for alias in obj.aliases:
            set_identity(obj, alias, connections.settings[alias])

    def release(self, obj: DjangoDatabases) -> None:
        # Masters before forking, workers at exit: this process's own, closed properly.
        from django.db import connections

        for conn in connections.all(initialized_only=True):
            if conn.alias in obj.aliases and conn.connection is not None:
                try:
                    conn.close()  # a pooled connection goes back to its pool, a classic one is closed
                except Exception:  # noqa: BLE001 - a broken connection must not keep the others open
                    logger.warning("closing Django connection %r failed", conn.alias, exc_info=True)
        for pools in obj.pool_dicts:
            for alias in [a for a in obj.pooled if a in pools]:
                try:
                    connections[alias].close_pool()  # closes the pool's connections, stops its threads
                except Exception:  # noqa: BLE001
                    logger.warning("closing Django pool %r failed", alias, exc_info=True)

    def warm(self, obj: DjangoDatabases, deadline: float, eager: bool) -> bool:
        from django.db import connections

        done = True
        for alias in obj.aliases:
            set_identity(obj, alias, connections.settings[alias])  # the role is named by now
            wrapper = connections[alias]
            remaining = deadline - time.monotonic()
            if alias in obj.pooled:
                if remaining <= 0:
                    done = False
                    continue
                done = open_pool(wrapper.pool, remaining) and done
            elif alias in obj.persistent and obj.warm_classic:
                if remaining <= 0:
                    done = False
                    continue
                wrapper.ensure_connection()  # this thread's: the one sync workers and prefork children use
        return done

    def report(self, obj: DjangoDatabases) -> list[PoolReport]:
        from django.db import connections

        found = []
        for alias in obj.aliases:
            settings_dict = connections.settings[alias]
            label, backend = f"django database {alias!r}", connections[alias].vendor
            if alias in obj.pooled:
                options = settings_dict.get("OPTIONS") or {}
                pool_options = options["pool"] if isinstance(options.get("pool"), dict) else {}
                # Django's pool is psycopg_pool's ConnectionPool; its max_size defaults to min_size (4).
                bound = int(pool_options.get("max_size", pool_options.get("min_size", 4)))
                found.append(PoolReport(label, backend, bound, f"OPTIONS['pool'] max_size {bound}"))
            else:
                # A classic connection per thread that uses the alias: one per thread.
                found.append(PoolReport(label, backend, None, "one connection per thread (no pool)"))
        return found


def open_pool(pool: Any, timeout: float) -> bool:
    """Open a pool made in this process; True once its ``min_size`` connections are ready, within `timeout` s.

    Polled through the public ``get_stats()``: psycopg_pool's ``open(wait=True)``
    closes the pool when the wait times out, and Django cannot reopen a closed
    pool. Not ready in time, the pool keeps connecting in the background.
    """
    pool.open()
    deadline = time.monotonic() + timeout
    while pool.get_stats().get("pool_available", 0) < pool.min_size:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def forget_connection(conn: Any) -> None:
    """What ``BaseDatabaseWrapper.close()`` does to the wrapper, without closing anything."""
    conn.run_on_commit = []
    if conn.in_atomic_block:
        # The child cannot finish the parent's transaction: Django refuses to
        # reconnect inside this atomic block, as after a close in one.
        conn.closed_in_transaction = True
        conn.needs_rollback = True
    conn.connection = None


def set_identity(obj: DjangoDatabases, alias: str, settings_dict: dict) -> None:
    options = settings_dict.get("OPTIONS")
    if options is None:
        options = settings_dict["OPTIONS"] = {}
    current = options.get("application_name")
    if current is None or current == obj.identities.get(alias):
        options["application_name"] = obj.identities[alias] = application_name()


def dsn_of(settings_dict: dict) -> str:
    """A libpq DSN naming the servers of one alias (as Django merges HOST/PORT over OPTIONS)."""
    from psycopg2.extensions import make_dsn

    options = settings_dict.get("OPTIONS") or {}
    params = {key: str(options[key]) for key in ("host", "hostaddr", "port") if options.get(key)}
    if settings_dict.get("HOST"):
        params["host"] = str(settings_dict["HOST"])
    if settings_dict.get("PORT"):
        params["port"] = str(settings_dict["PORT"])
    for key, env in (("host", "PGHOST"), ("port", "PGPORT")):
        if key not in params and os.environ.get(env):
            params[key] = os.environ[env]
    return make_dsn(**params) if params else ""


DATABASES = DjangoDatabases()
INTEGRATION = DjangoIntegration()
