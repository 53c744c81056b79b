"""Following the primary: which pooled connections sit on a server that no longer takes writes."""

from __future__ import annotations

import inspect
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar


class _Entry(Protocol):
    conn: Any
    created_at: float


E = TypeVar("E", bound=_Entry)

READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction: "cannot execute INSERT in a read-only transaction"
# target_session_attrs values with which libpq connects only to a server that takes writes.
WRITABLE_TARGETS = frozenset({"read-write", "primary"})
# PostgreSQL >= 14 reports it to the client whenever it changes (ParameterStatus, before the next
# ReadyForQuery): a session learns its server was made read-only with no round trip of its own.
# libpq's target_session_attrs check reads it (and in_hot_standby) at connect time. in_hot_standby
# never turns on under an open session: a server becomes a standby only through a restart, which
# ends every session.
_READ_ONLY_PARAMETER = "default_transaction_read_only"
_READ_ONLY_PARAMETER_BYTES = _READ_ONLY_PARAMETER.encode()
_CAUSE_DEPTH = 5  # SQLAlchemy's .orig, Django's __cause__: a wrapped driver error is a level or two down


def wants_primary(dsn: str, connect_kwargs: Mapping[str, Any] | None = None) -> bool:
    """True if connections made from `dsn` (and keywords) must be to a server that takes writes:
    ``target_session_attrs`` read-write or primary, from the keywords, the DSN or PGTARGETSESSIONATTRS."""
    target = (connect_kwargs or {}).get("target_session_attrs")
    if target is None:
        target = _dsn_params(dsn).get("target_session_attrs")
    if target is None:
        target = os.environ.get("PGTARGETSESSIONATTRS")
    return str(target).strip().lower() in WRITABLE_TARGETS


def conn_wants_primary(conn: Any) -> bool:
    """The same question asked of an open libpq connection (psycopg2, psycopg 3): its own options, no I/O."""
    info = getattr(conn, "info", None)
    params = getattr(info, "dsn_parameters", None)  # psycopg2
    if params is None:
        get = getattr(info, "get_parameters", None)  # psycopg 3
        params = get() if callable(get) else {}
    return str(params.get("target_session_attrs", "")).lower() in WRITABLE_TARGETS


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error, or of the driver error it wraps (SQLAlchemy, Django)."""
    for _ in range(_CAUSE_DEPTH):
        if exc is None:
            return None
        # psycopg2: pgcode; psycopg 3 and asyncpg: sqlstate.
        code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
        if isinstance(code, str):
            return code
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError
        exc = orig if isinstance(orig, BaseException) else exc.__cause__
    return None


def is_read_only_error(exc: BaseException | None) -> bool:
    return sqlstate(exc) == READ_ONLY_SQLSTATE


def _psycopg2_status(conn: Any) -> str | None:
    value = conn.get_parameter_status(_READ_ONLY_PARAMETER)  # one C call: PQparameterStatus
    return value if isinstance(value, str) else None


def _psycopg_status(conn: Any) -> str | None:
    raw = conn.pgconn.parameter_status(_READ_ONLY_PARAMETER_BYTES)  # libpq's own, no object made
    return raw.decode() if isinstance(raw, bytes) else None


def _asyncpg_status(conn: Any) -> str | None:
    value = getattr(conn.get_settings(), _READ_ONLY_PARAMETER, None)  # its ParameterStatus values
    return value if isinstance(value, str) else None


def _no_status(conn: Any) -> str | None:
    return None


_STATUS_READERS: dict[type, Callable[[Any], str | None]] = {}  # per connection class: chosen once


def _status_reader(conn: Any) -> Callable[[Any], str | None]:
    cls = type(conn)
    reader = _STATUS_READERS.get(cls)
    if reader is None:  # asked of the instance: psycopg 3 sets pgconn in __init__, not on the class
        if hasattr(conn, "get_parameter_status"):
            reader = _psycopg2_status
        elif hasattr(conn, "pgconn"):
            reader = _psycopg_status
        elif hasattr(conn, "get_settings"):
            reader = _asyncpg_status
        else:
            reader = _no_status
        _STATUS_READERS[cls] = reader
    return reader


def read_only_status(conn: Any) -> str | None:
    """``default_transaction_read_only`` as `conn`'s server last reported it ("on" / "off"), None if it
    reports nothing (PostgreSQL < 14) or the connection is closed. No I/O."""
    try:
        return _status_reader(conn)(conn)
    except Exception:  # noqa: BLE001 - a closed connection reports nothing
        return None


def reports_read_only(conn: Any) -> bool | None:
    """True if `conn`'s server said it is read-only now; None if the server reports nothing of the
    kind (PostgreSQL < 14: only an error tells)."""
    value = read_only_status(conn)
    return None if value is None else value == "on"


def host_of(conn: Any) -> tuple[str, str] | None:
    """The server `conn` reached, of the DSN's several: libpq's PQhost / PQport (asyncpg: its address)."""
    info = getattr(conn, "info", None)
    try:
        if info is not None:
            return str(info.host), str(info.port)
        addr = getattr(conn, "_addr", None)  # asyncpg keeps the address it reached nowhere public (0.29, 0.30)
        if isinstance(addr, tuple):
            return str(addr[0]), str(addr[1])
        if isinstance(addr, str):
            return addr, ""
    except Exception:  # noqa: BLE001 - a closed connection: nothing to compare
        return None
    return None


def on_demoted_server(conn: Any, exc: BaseException | None = None) -> bool:
    """True if `conn`'s server no longer takes writes: it reports itself read-only, or, on a
    server too old to report it, a statement failed with SQLSTATE 25006. A 25006 from a transaction
    the application made read-only itself, on a server that reports read-write, is not a demotion."""
    reported = reports_read_only(conn)
    if reported is None:
        return is_read_only_error(exc)
    return reported


class PrimaryWatch:
    """One pool's record of the servers it saw demoted: a connection opened to such a server before
    it was seen demoted is stale, and is discarded at its next return instead of being reused."""

    __slots__ = ("_demoted", "_lock", "enabled")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._demoted: dict[tuple[str, str], float] = {}  # host -> when it was last seen demoted
        self._lock = threading.Lock()  # only for writes; reading a dict entry is atomic

    def check(self, conn: Any, opened_at: float, exc: BaseException | None = None) -> bool:
        """True if `conn` must go: its server is demoted now, or was seen so since `opened_at`.
        Costs no I/O: the server's reported parameters are already in the client."""
        if not self.enabled:
            return False
        # on_demoted_server() inlined: this runs at every return of a pool that asks for the primary.
        status = read_only_status(conn)
        if status == "on" or (status is None and exc is not None and is_read_only_error(exc)):
            host = host_of(conn)
            if host is not None:
                with self._lock:
                    self._demoted[host] = time.monotonic()
            return True
        return bool(self._demoted) and self.stale(conn, opened_at)

    def stale(self, conn: Any, opened_at: float) -> bool:
        """`conn`, opened at `opened_at`, is on a host seen demoted since: a sibling of one that
        failed. Asks nothing of the connection's own parameters (it may not have talked since)."""
        if not self._demoted:
            return False
        host = host_of(conn)
        seen = self._demoted.get(host) if host is not None else None
        return seen is not None and opened_at <= seen

    @property
    def demoted_hosts(self) -> list[tuple[str, str]]:
        return list(self._demoted)


def _dsn_params(dsn: str) -> dict[str, str]:
    try:
        import psycopg2.extensions
    except ImportError:  # psycopg 3 or asyncpg alone: the same reading, in Python
        from . import _conninfo

        try:
            return _conninfo.parse(dsn)
        except ValueError:  # a bad DSN is reported when connecting, not here
            return {}
    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except Exception:  # noqa: BLE001 - a bad DSN is reported when connecting, not here
        return {}


def take_stale(idle: deque[E], watch: PrimaryWatch) -> list[E]:
    """Remove from `idle` (under its pool's lock) and return the entries on a host `watch` saw demoted."""
    stale = [entry for entry in idle if watch.stale(entry.conn, entry.created_at)]
    for entry in stale:
        idle.remove(entry)
    return stale


def sqlalchemy_handle_error(context: Any) -> None:
    """SQLAlchemy's ``handle_error`` event: a write refused by a demoted primary, on a connection whose
    DSN asks for the primary, is made a disconnect (``is_disconnect``, the documented way): SQLAlchemy
    invalidates that connection and its pool (``invalidate_pool_on_disconnect``, on by default), so every
    connection opened before now reconnects, through the DSN's host list, at its next checkout."""
    if context.is_disconnect or not is_read_only_error(context.original_exception):
        return
    connection = context.connection  # None when the error came from connecting
    if connection is None or connection.invalidated:
        return
    dbapi_connection = getattr(connection.connection, "dbapi_connection", None)
    if dbapi_connection is None or not conn_wants_primary(dbapi_connection):
        return
    if on_demoted_server(dbapi_connection, context.original_exception):
        context.is_disconnect = True


class _PoolReset:
    """A psycopg_pool pool's ``reset`` callback, ours first: a connection returned from a demoted server
    drains the pool (``drain()``, psycopg_pool >= 3.2: idle connections closed now, lent ones when they
    come back, this one included); then the application's own ``reset``, if it gave one."""

    def __init__(self, pool: Any, own: Any) -> None:
        self.pool = weakref.ref(pool)
        self.own = own

    def _demoted(self, conn: Any, pool: Any) -> bool:
        """`conn` is on a demoted server and no drain since it was opened covers it. A connection opened
        before the last drain is discarded on its way back anyway: draining again for it would close
        the new primary's fresh connections too. (``_created_at``, ``_drained_at``: psycopg_pool's own
        marks for that very test, 3.2 and 3.3.)"""
        if not on_demoted_server(conn):
            return False
        created, drained = getattr(conn, "_created_at", None), getattr(pool, "_drained_at", None)
        return not (isinstance(created, float) and isinstance(drained, float) and created <= drained)


class _SyncPoolReset(_PoolReset):
    def __call__(self, conn: Any) -> None:
        pool = self.pool()
        if pool is not None and self._demoted(conn, pool):
            drain = getattr(pool, "drain", None)
            if drain is None:  # psycopg_pool < 3.2: an error in reset discards this connection only
                raise RuntimeError("connection to a demoted server")
            drain()
        if self.own is not None:
            self.own(conn)


class _AsyncPoolReset(_PoolReset):
    async def __call__(self, conn: Any) -> None:
        pool = self.pool()
        if pool is not None and self._demoted(conn, pool):
            drain = getattr(pool, "drain", None)
            if drain is None:
                raise RuntimeError("connection to a demoted server")
            await drain()
        if self.own is not None:
            result = self.own(conn)
            if inspect.isawaitable(result):
                await result


def follow_primary_psycopg_pool(pool: Any, asynchronous: bool) -> None:
    """Make a psycopg_pool pool whose conninfo asks for the primary follow it, through its ``reset``
    (``_reset``: where psycopg_pool keeps that argument, read by the rebuild in a child too). Idempotent;
    nothing for any other pool, whose returns stay as they were."""
    conninfo, kwargs = pool.conninfo, pool.kwargs
    if not isinstance(conninfo, str) or not (kwargs is None or isinstance(kwargs, dict)):
        return  # a callable conninfo or kwargs: nothing to read before connecting
    if not wants_primary(conninfo, kwargs) or isinstance(pool._reset, _PoolReset):
        return
    pool._reset = (_AsyncPoolReset if asynchronous else _SyncPoolReset)(pool, pool._reset)


def django_leave_demoted(**_: Any) -> None:
    """Django's ``request_started`` / ``request_finished``: this thread's connections on a demoted
    server are closed, so its next query connects through the host list. Django alone keeps a
    persistent connection (``CONN_MAX_AGE``) whose ``is_usable()`` (``SELECT 1``) works read-only or
    not. Each thread's connections are its own: another thread's go at its own next request."""
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        raw = wrapper.connection
        if raw is None or wrapper.in_atomic_block or (wrapper.settings_dict.get("OPTIONS") or {}).get("pool"):
            continue  # not connected; mid-transaction; Django's psycopg_pool (closing would only return it)
        if conn_wants_primary(raw) and on_demoted_server(raw):
            wrapper.close()


def follow_primary_django() -> None:
    """Connect `django_leave_demoted` to the request signals (idempotent: by dispatch uid)."""
    from django.core.signals import request_finished, request_started

    request_started.connect(django_leave_demoted, weak=False, dispatch_uid="forkpool.failover.started")
    request_finished.connect(django_leave_demoted, weak=False, dispatch_uid="forkpool.failover.finished")


class _AsyncpgReset:
    """An asyncpg pool's ``reset`` (run at each release), ours first: a connection released from a demoted
    server expires the pool's connections (``expire_connections()``: each is replaced at its next
    acquire, this one included); then the application's ``reset``, else asyncpg's default one."""

    def __init__(self, pool: Any, own: Any) -> None:
        self.pool = pool  # asyncpg's Pool has __slots__ without __weakref__; protect() holds it for life anyway
        self.own = own

    async def __call__(self, conn: Any) -> None:
        if on_demoted_server(conn):
            await self.pool.expire_connections()
        if self.own is not None:
            await self.own(conn)
        else:
            await conn.reset()  # what asyncpg runs when a pool has no reset of its own


def follow_primary_asyncpg(pool: Any, target_session_attrs: Any) -> None:
    """Make an asyncpg pool whose DSN asks for the primary follow it, through its ``_reset`` (where asyncpg
    keeps the ``reset`` argument, 0.30 - 0.32; the rebuild in a child reads it there too). Idempotent."""
    target = str(getattr(target_session_attrs, "value", target_session_attrs)).lower()
    if target in WRITABLE_TARGETS and not isinstance(pool._reset, _AsyncpgReset):
        pool._reset = _AsyncpgReset(pool, pool._reset)
