"""Every alias of ``settings.DATABASES`` as one protected object: PostgreSQL, MySQL/MariaDB, SQLite, any backend.

What is inherited across fork, and what a child does with it (no network I/O,
no lock a parent thread may have held):

- the forking thread's ``DatabaseWrapper.connection`` (a classic connection,
  or one checked out of a pool): its socket already points at /dev/null
  (``protection`` did that by endpoint; ``drop_socket`` again here for a
  socket the endpoints missed, a MySQL option file's socket say); the wrapper
  lets go of it as Django's own ``close()`` would, minus the close;
- every other thread's connections. Django keeps one wrapper per thread; in
  the child those threads do not exist, and CPython clears their thread states
  in ``PyOS_AfterFork_Child`` *before* any at-fork hook runs (seen with 3.11.7,
  3.12.1 and 3.13.0: a thread-local object's ``__del__`` runs before the hook):
  what only they referenced is freed there (a connection in a
  ``threading.local``), or at the child's next garbage collection (Django's
  wrappers sit in reference cycles), which may come while an at-fork hook
  still runs. psycopg2 and psycopg skip the goodbye for a connection made in
  another process; mysqlclient does not: its dealloc calls ``mysql_close()``,
  which sends COM_QUIT on the parent's socket and ends the parent thread's
  session (reproduced: a thread holding a MySQLdb connection, one fork, the
  parent's next query fails with 2013 "Lost connection to server during
  query"; with Django's wrappers, after the child's ``gc.collect()``, 2006
  "Server has gone away": tests/test_protect_django_backends.py); a
  sqlite3 connection's dealloc runs ``sqlite3_close_v2()``, which takes
  SQLite's mutexes. So the parent's before-fork hook takes a reference to
  every connection any thread of this process holds (the wrappers are tracked
  through Django's ``connection_created`` signal, weakly), the child points
  their sockets at /dev/null and keeps them in the graveyard; the parent drops
  the references again once the fork is done;
- the pools of Django >= 5.1 (``OPTIONS["pool"]``, PostgreSQL only: psycopg 3
  + psycopg_pool): they live in the class-level dict
  ``DatabaseWrapper._connection_pools``, keyed by alias, so every child finds
  its parent's pool objects there, with the parent's sockets and without the
  parent's worker threads. The child moves them out of the dict, so Django
  builds a new pool in the child on first use (or at ``warm``), with this
  process's identity.

Backends. PostgreSQL (psycopg2, psycopg 3, Django's native pool); MySQL and
MariaDB through mysqlclient (``MySQLdb``, what Django's backend imports) or
PyMySQL installed as ``MySQLdb``: the socket is found by endpoint (HOST/PORT,
a HOST starting with "/", ``OPTIONS["unix_socket"]``, "localhost" or no HOST
meaning the client library's default Unix socket) and by ``fileno()`` (PyMySQL:
its ``_sock``); SQLite: no socket, the child only lets go of the parent's
connection and opens its own file handle on first use (or at ``warm``). Any
other backend: the same steps by the DB-API alone (``fileno()`` where the
driver has it), endpoints unknown.

The graveyard: an inherited pool may not be closed in the child (``close()``
takes the pool's lock and says goodbye on the parent's sockets) and may not be
dropped either: psycopg_pool's ``ConnectionPool.__del__`` stops the workers,
which puts tasks on its queue and takes the scheduler's lock, both of which a
parent thread may have held at fork time (read in psycopg_pool 3.3.3); an
inherited MySQLdb or sqlite3 connection may not be collected (above). So every
inherited pool and connection is kept referenced for the life of the process
in ``graveyard()``: at most one pool and one connection per alias and thread
per fork generation (a Gunicorn or Celery child forked from a master that
released properly inherits none from the forking thread: the graveyard only
fills when something forked without forkpool's master hooks, or while other
threads held connections). Marking the pool closed instead (``pool._closed =
True``, which makes ``__del__`` return early) would free the memory but writes
a private attribute of psycopg_pool whose meaning may change; a few kilobytes
per fork is the cheaper risk.

Identity: Django builds connection parameters from ``OPTIONS`` at every
classic connect, and once per pool (psycopg_pool keeps the kwargs it was made
with). So the backend's name option is set to ``<suite>:<role>:<pid>``
whenever this process's identity may have changed: at protect time, in the
forked child (a dict write: no lock), and at ``warm`` once the server hooks
have named the role, before the child's pool is built. A name the project set
itself is never overwritten. PostgreSQL: ``OPTIONS["application_name"]``.
MySQL through PyMySQL: ``OPTIONS["program_name"]`` (a connection attribute,
``performance_schema.session_connect_attrs``). mysqlclient has no way to set
connection attributes (no ``connect()`` keyword, and MariaDB Connector/C 3.3
reads none from option files; read in mysqlclient 2.2.7 and 2.3.1): nothing
is set, and the server still sees which process connected through the
attribute ``_pid`` that libmariadb / libmysqlclient send by themselves.
SQLite: none.

Private API: ``DatabaseWrapper._connection_pools`` (a class attribute, no
public accessor: ``close_pool()`` closes, which a child must not do), and
PyMySQL's ``Connection._sock`` (PyMySQL's connection has no ``fileno()``).
Read in Django 5.1.15 and 5.2.19 (the same code), run with 5.2.19,
mysqlclient 2.3.1 (MariaDB Connector/C 3.3.20, server MariaDB 10.11) and
SQLite 3.40; Django 6 (Python 3.12+) not tried.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, postgres, resolve
from .._failover import follow_primary_django
from .._integrations.dbapi import drop_without_io
from .._process import home, install_fork_hooks
from .._sockets import devnull_fd
from ..identity import application_name

logger = logging.getLogger("forkpool.django")

# Where MariaDB Connector/C (Debian, MariaDB's own builds) and libmysqlclient look
# for the server when no host (or "localhost") is named and no socket is set.
MYSQL_DEFAULT_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
MYSQL_DEFAULT_PORT = 3306


def graveyard() -> list[Any]:
    """What children inherited and may neither close nor drop: kept referenced for the life of the process."""
    holder = home()
    if not hasattr(holder, "django_graveyard"):
        holder.django_graveyard = []
    return holder.django_graveyard


@dataclass(eq=False)
class DjangoDatabases:
    """The object forkpool protects: the project's database aliases, resolved at ``attach``."""

    aliases: tuple[str, ...] = ()
    vendors: dict[str, str] = field(default_factory=dict)  # alias -> "postgresql", "mysql", "sqlite", ...
    pooled: frozenset[str] = frozenset()
    persistent: frozenset[str] = frozenset()  # CONN_MAX_AGE != 0
    pool_dicts: list[dict[str, Any]] = field(default_factory=list)  # each backend class's _connection_pools
    name_keys: dict[str, str] = field(default_factory=dict)  # alias -> OPTIONS key naming a connection
    identities: dict[str, str] = field(default_factory=dict)  # alias -> the name we set last
    # False when a server closes classic connections between units of work anyway
    # (Celery's Django fixup, by default): opening one at worker start would be wasted.
    warm_classic: bool = True
    # Every thread's wrapper that connected (connection_created), weakly: what a fork may inherit.
    wrappers: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    # Between the parent's before-fork hook and the end of the fork: each thread's connection.
    held: list[Any] = field(default_factory=list)

    def holds_connections(self) -> bool:
        """Does this process (this thread's wrappers, any pool) hold anything now?"""
        from django.db import connections

        if any(pools.keys() & set(self.aliases) for pools in self.pool_dicts):
            return True
        return any(
            conn.connection is not None for conn in connections.all(initialized_only=True) if conn.alias in self.aliases
        )

    def open_connections(self, alias: str) -> int:
        """Classic connections of `alias` open in this process, every thread's."""
        return sum(1 for wrapper in list(self.wrappers) if wrapper.alias == alias and wrapper.connection is not None)


class DjangoIntegration:
    name = "django"

    def attach(self, obj: DjangoDatabases) -> Endpoints:
        from django.db import connections
        from django.db.backends.signals import connection_created

        found = Endpoints()
        aliases: list[str] = []
        vendors: dict[str, str] = {}
        pooled: set[str] = set()
        persistent: set[str] = set()
        pool_dicts: list[dict[str, Any]] = []
        name_keys: dict[str, str] = {}
        settings_dicts: dict[str, dict[str, Any]] = {}
        # Everything that can fail (a PORT that is not a number, a host that does not
        # resolve) runs before the first write to a settings dict: a refused protect()
        # leaves the project's DATABASES as they were.
        for alias in connections:
            wrapper = connections[alias]  # this thread's wrapper: made, not connected
            aliases.append(alias)
            vendors[alias] = vendor = wrapper.vendor
            settings_dict = wrapper.settings_dict
            if (settings_dict.get("OPTIONS") or {}).get("pool"):
                pooled.add(alias)
            if settings_dict.get("CONN_MAX_AGE") != 0:
                persistent.add(alias)
            pools = getattr(type(wrapper), "_connection_pools", None)  # PostgreSQL, Django >= 5.1
            if isinstance(pools, dict) and not any(pools is known for known in pool_dicts):
                pool_dicts.append(pools)
            key = identity_option(vendor, wrapper)
            if key:
                name_keys[alias] = key
            settings_dicts[alias] = settings_dict
            found |= endpoints_of(vendor, settings_dict)
        obj.name_keys.update(name_keys)
        for alias, settings_dict in settings_dicts.items():
            set_identity(obj, alias, settings_dict)
            wrapper = connections[alias]
            if wrapper.connection is not None:  # connected before ready(): tracked from now on
                obj.wrappers.add(wrapper)
        obj.aliases, obj.vendors = tuple(aliases), vendors
        obj.pooled, obj.persistent, obj.pool_dicts = frozenset(pooled), frozenset(persistent), pool_dicts
        connection_created.connect(_track, weak=False, dispatch_uid="forkpool.django.connection_created")
        follow_primary_django()  # a connection on a demoted primary is closed between requests: _failover.py
        install_fork_hooks("forkpool.django", before=_hold_every_thread_connection, after_in_parent=_let_go_of_held)
        return found

    def detach(self, obj: DjangoDatabases) -> None:
        # In the child, in the at-fork hook: dict, list and attribute writes, dup2 only.
        from django.db import connections

        buried = graveyard()
        seen: set[int] = set()

        def bury(raw: Any) -> None:
            if id(raw) not in seen:
                seen.add(id(raw))
                drop_socket(raw)
                buried.append(raw)

        held, obj.held = obj.held, []
        for raw in held:  # other threads' connections, referenced by the parent just before the fork
            bury(raw)
        for conn in connections.all(initialized_only=True):  # this thread's wrappers; no wrapper is made
            if conn.alias in obj.aliases and conn.connection is not None:
                bury(conn.connection)
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
                except Exception:  # a broken connection must not keep the others open
                    logger.warning("closing Django connection %r failed", conn.alias, exc_info=True)
        for pools in obj.pool_dicts:
            for alias in [a for a in obj.pooled if a in pools]:
                try:
                    connections[alias].close_pool()  # closes the pool's connections, stops its threads
                except Exception:
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
            label, backend = f"django database {alias!r}", obj.vendors.get(alias, "unknown")
            if alias in obj.pooled:
                options = settings_dict.get("OPTIONS") or {}
                pool_options = options["pool"] if isinstance(options.get("pool"), dict) else {}
                # Django passes OPTIONS["pool"] to psycopg_pool's ConnectionPool: min_size 4 by
                # default, max_size None meaning min_size.
                bound = int(pool_options.get("max_size") or pool_options.get("min_size") or 4)
                size = available = waiting = 0
                pool = next((pools[alias] for pools in obj.pool_dicts if alias in pools), None)
                if pool is not None:  # built in this process: psycopg_pool's public stats
                    stats = pool.get_stats()
                    size, available = int(stats.get("pool_size", 0)), int(stats.get("pool_available", 0))
                    waiting = int(stats.get("requests_waiting", 0))
                found.append(
                    PoolReport(
                        label,
                        backend,
                        bound,
                        f"OPTIONS['pool'] max_size {bound}",
                        open=size,
                        in_use=size - available,
                        waiting=waiting,
                    )
                )
            else:
                # A classic connection for each thread that uses the alias: as many as threads, no bound.
                held = obj.open_connections(alias)
                found.append(
                    PoolReport(label, backend, None, "one connection per thread (no pool)", open=held, in_use=held)
                )
        return found


def _track(sender: Any = None, connection: Any = None, **_: Any) -> None:
    """``connection_created``: remember the wrapper (weakly), whichever thread connected."""
    if connection is not None and connection.alias in DATABASES.aliases:
        DATABASES.wrappers.add(connection)


def _hold_every_thread_connection() -> None:
    # Parent, just before fork: keep every thread's connection alive through the child's
    # thread-state cleanup (module docstring). Never raises: an at-fork hook must not break the fork.
    try:
        DATABASES.held = [w.connection for w in list(DATABASES.wrappers) if w.connection is not None]
    except Exception:  # noqa: BLE001
        DATABASES.held = []


def _let_go_of_held() -> None:
    DATABASES.held = []


def drop_socket(raw: Any) -> None:
    """Point a DB-API connection made in another process at /dev/null, never closing it (no I/O, no lock)."""
    # psycopg2, psycopg, mysqlclient: fileno() reads a field (mysqlclient 2.3 under a non-blocking
    # try-lock of its own: it raises when a parent thread held the connection at fork, and the
    # endpoints have pointed that socket at /dev/null already).
    if hasattr(raw, "fileno"):
        drop_without_io(raw)
        return
    sock = getattr(raw, "_sock", None)  # PyMySQL: the socket object, no fileno() on the connection
    try:
        fd = sock.fileno() if sock is not None else -1
    except Exception:  # noqa: BLE001 - closed already: nothing to protect
        return
    if isinstance(fd, int) and fd >= 0:
        os.dup2(devnull_fd(), fd)


def endpoints_of(vendor: str, settings_dict: dict[str, Any]) -> Endpoints:
    """Where an alias's connections go, as the kernel's socket tables show them (none for SQLite)."""
    if vendor == "postgresql":
        return postgres(dsn_of(settings_dict))
    if vendor == "mysql":
        return mysql_endpoints(settings_dict)
    return Endpoints()


def mysql_endpoints(settings_dict: dict[str, Any]) -> Endpoints:
    """A MySQL alias's server, as Django's backend passes it to the driver (OPTIONS over HOST/PORT)."""
    options = settings_dict.get("OPTIONS") or {}
    host = str(settings_dict.get("HOST") or "")
    socket_path = str(options.get("unix_socket") or (host if host.startswith("/") else ""))
    if socket_path:
        return Endpoints(unix=frozenset({socket_path}))
    host = str(options.get("host") or host)
    port = int(
        options.get("port") or settings_dict.get("PORT") or os.environ.get("MYSQL_TCP_PORT") or MYSQL_DEFAULT_PORT
    )
    if host in ("", "localhost"):
        # mysqlclient: the client library's Unix socket; PyMySQL: TCP to localhost.
        paths = {os.environ["MYSQL_UNIX_PORT"]} if os.environ.get("MYSQL_UNIX_PORT") else set(MYSQL_DEFAULT_SOCKETS)
        return Endpoints(tcp=frozenset(resolve("localhost", port)), unix=frozenset(paths))
    return Endpoints(tcp=frozenset(resolve(host, port)))


def identity_option(vendor: str, wrapper: Any) -> str | None:
    """The OPTIONS key under which this backend's driver names a connection, or None."""
    if vendor == "postgresql":
        return "application_name"
    if vendor == "mysql" and getattr(getattr(wrapper, "Database", None), "__name__", "") == "pymysql":
        return "program_name"  # PyMySQL's connect(program_name=...): a connection attribute
    return None  # mysqlclient: no connection attributes (module docstring); SQLite: nothing to name


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


def set_identity(obj: DjangoDatabases, alias: str, settings_dict: dict[str, Any]) -> None:
    """Name `alias`'s next connections after this process, unless the project named them itself."""
    key = obj.name_keys.get(alias)
    if key is None:  # the backend has no place for a name
        return
    options = settings_dict.get("OPTIONS")
    if options is None:
        options = settings_dict["OPTIONS"] = {}
    current = options.get(key)
    if current is None or current == obj.identities.get(alias):
        options[key] = obj.identities[alias] = application_name()


def dsn_of(settings_dict: dict[str, Any]) -> str:
    """A libpq DSN naming the servers of one alias (as Django merges HOST/PORT over OPTIONS)."""
    from .._drivers import make_conninfo

    options = settings_dict.get("OPTIONS") or {}
    params = {key: str(options[key]) for key in ("host", "hostaddr", "port") if options.get(key)}
    if settings_dict.get("HOST"):
        params["host"] = str(settings_dict["HOST"])
    if settings_dict.get("PORT"):
        params["port"] = str(settings_dict["PORT"])
    for key, env in (("host", "PGHOST"), ("port", "PGPORT")):
        if key not in params and os.environ.get(env):
            params[key] = os.environ[env]
    return make_conninfo(**params) if params else ""


DATABASES = DjangoDatabases()
INTEGRATION = DjangoIntegration()
