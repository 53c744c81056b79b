"""The drivers the asyncio pool speaks (psycopg 3, asyncpg), behind one small interface the pool calls.

    driver = async_driver(settings.driver)   # "asyncpg", else psycopg 3

As psycopg_pool shares one pool between its connection classes, ``AsyncPool``
keeps one body of logic (waiters, maintainer, failover, stats, fork handling)
and asks its driver only what differs: how to connect, whether a returned
connection is clean (the hot path, no I/O), how to bring a dirty one back, the
round-trip check, what a ``connection()`` block does at its end, closing, and
letting go of one inherited across fork.

asyncpg differs from psycopg 3 in four ways that shape its driver:

- No implicit transaction: statements outside ``conn.transaction()`` commit on
  their own, so a ``connection()`` block neither commits nor rolls back; a
  transaction left open is rolled back when the connection comes back.
- Session characteristics live on the server, not the client: the pool's
  isolation level, read only and deferrable are the session's defaults
  (``default_transaction_*`` in ``server_settings``, sent in the startup
  packet: no round trip), which ``conn.transaction(...)`` overrides per
  transaction, and which a return never needs to restore. ``autocommit`` has
  no meaning there: asyncpg's statements always autocommit outside a
  transaction.
- No ``fileno()``, and no fork guard: asyncpg's ``Connection.__del__`` calls
  ``terminate()``, which writes the protocol's Terminate message and
  unregisters the socket from the connection's loop, whose epoll instance an
  inherited loop shares with the parent. An inherited connection is therefore
  never dropped in the child: its socket goes to /dev/null and the object is
  kept for the life of the process (as ``_integrations/asyncpg.py`` keeps an
  inherited asyncpg pool's state).
- No libpq: the DSN is read here (``_drivers.asyncpg_arguments``), and the TCP
  options libpq would set (keepalives, ``tcp_user_timeout``) are set on the
  socket after connecting.

Private asyncpg API, where nothing public says it without I/O (asyncpg 0.32.0):
a connection's ``_transport`` (its socket), ``_protocol._is_cancelling()`` (a
cancelled query still running; asyncpg's own pool reads it at release),
``_top_xact`` (its mark of an open ``conn.transaction()``), ``_listeners`` and
``_log_listeners`` (callbacks left by ``add_listener``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from ._base import connect_params, drop_without_io
from ._drivers import ASYNCPG, PSYCOPG, PsycopgDriver, Session, SetupFailed, asyncpg_arguments, get_driver
from ._drivers import parse_conninfo as _parse_conninfo
from ._process import home
from ._sockets import devnull_fd
from .errors import import_extra
from .settings import PoolSettings

ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]
CLOSE_TIMEOUT = 2.0  # seconds asyncpg's close() may wait for the server to end the session


class AsyncDriver:
    """What ``AsyncPool`` asks of a driver. Nothing here touches pool state."""

    name = ""
    Error: ErrorTypes = Exception  # anything the server, the network or the driver raises for them
    SetupFailed: type[Exception] = SetupFailed  # caught as an Error by the pool's connect paths
    # A ``connection()`` block's end: None, nothing to do (the return path deals with what is left).
    commit: Callable[[Any], Awaitable[Any]] | None = None
    rollback: Callable[[Any], Awaitable[Any]] | None = None
    # The driver already knows the connection ended (no I/O); None: it cannot know while the connection is
    # idle, and the pool's poll() of the socket finds what the server sent (psycopg 3 reads only during an
    # operation). asyncpg's loop reads every byte as it comes: the server's goodbye never waits in the socket.
    ended: Callable[[Any], bool] | None = None

    async def connect(self, settings: PoolSettings, session: Session, seconds: float) -> Any:
        """One connection named after this process, in `session`'s state; raises one of ``Error``."""
        raise NotImplementedError

    def socket_fd(self, conn: Any) -> int:
        raise NotImplementedError

    def clean_check(self, session: Session) -> Callable[[Any], bool]:
        """The return's one question, no I/O: idle, and in `session`'s state?"""
        raise NotImplementedError

    def in_transaction(self, conn: Any) -> bool:
        """Inside a transaction (or closed: no longer idle), no I/O."""
        raise NotImplementedError

    async def reset(self, conn: Any, session: Session) -> bool:
        """Bring a returned connection back to idle and `session`'s state; False: it cannot be reused."""
        raise NotImplementedError

    async def ping(self, conn: Any) -> None:
        """One round trip on an idle connection; raises one of ``Error`` if the server does not answer."""
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        """Close a connection this process opened: the protocol's goodbye."""
        await conn.close()

    def drop_without_io(self, conn: Any) -> None:
        """In a forked child: let go of a connection inherited from the parent, with no I/O and no lock."""
        raise NotImplementedError


class PsycopgAsync(AsyncDriver):
    """psycopg 3's ``AsyncConnection``: the pool's behaviour before asyncpg, unchanged."""

    name = PSYCOPG

    def __init__(self) -> None:
        psycopg = import_extra("psycopg", "psycopg", "forkpool's asyncio pool")
        self._psycopg = psycopg
        sync = get_driver(PSYCOPG)
        assert isinstance(sync, PsycopgDriver)  # get_driver(PSYCOPG) makes one
        self._sync = sync
        self.Error = psycopg.Error
        self.SetupFailed = sync.SetupFailed
        self._idle = int(psycopg.pq.TransactionStatus.IDLE)
        self._intrans = (int(psycopg.pq.TransactionStatus.INTRANS), int(psycopg.pq.TransactionStatus.INERROR))
        # Bound once: the block's end awaits the connection's own coroutine, no frame of ours between.
        self.commit = psycopg.AsyncConnection.commit
        self.rollback = psycopg.AsyncConnection.rollback

    async def connect(self, settings: PoolSettings, session: Session, seconds: float) -> Any:
        kwargs = connect_params(settings, seconds)
        if not settings.prepare:
            kwargs["prepare_threshold"] = None  # PgBouncer < 1.21: see PoolSettings.prepare
        conn = await self._psycopg.AsyncConnection.connect(settings.dsn, **kwargs)
        try:
            await self.apply_session(conn, session)
        except BaseException:
            await _quietly(conn.close())
            raise
        return conn

    def socket_fd(self, conn: Any) -> int:
        return int(conn.fileno())

    def clean_check(self, session: Session) -> Callable[[Any], bool]:
        return self._sync.clean_check(session)  # the same question as the threaded pool's

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.pgconn.transaction_status != self._idle)

    async def apply_session(self, conn: Any, session: Session) -> None:
        # The async connection's setters are coroutines (they take its lock); none does I/O.
        level = self._sync.level(session)
        if conn.autocommit is not session.autocommit:
            await conn.set_autocommit(session.autocommit)
        if conn.isolation_level is not level:
            await conn.set_isolation_level(level)
        if conn.read_only is not session.read_only:
            await conn.set_read_only(session.read_only)
        if conn.deferrable is not session.deferrable:
            await conn.set_deferrable(session.deferrable)

    async def reset(self, conn: Any, session: Session) -> bool:
        status = conn.pgconn.transaction_status
        if conn.closed or status not in (self._idle, *self._intrans):
            return False  # closed, broken, or a cancelled query still running on it
        try:
            if status != self._idle:
                await conn.rollback()
            await self.apply_session(conn, session)
        except self._psycopg.Error:
            return False
        return not conn.closed

    async def ping(self, conn: Any) -> None:
        await conn.execute("SELECT 1")
        await conn.rollback()

    def drop_without_io(self, conn: Any) -> None:
        drop_without_io(conn)  # psycopg 3's PGconn.__del__ skips PQfinish in another process


class AsyncpgDriver(AsyncDriver):
    """asyncpg's ``Connection`` (see the module docstring for how it differs)."""

    name = ASYNCPG

    def __init__(self) -> None:
        asyncpg = import_extra("asyncpg", "asyncpg", "forkpool's asyncio pool on asyncpg (driver='asyncpg')")
        self._asyncpg = asyncpg
        self.ended = asyncpg.Connection.is_closed
        # ClientConfigurationError is an InterfaceError; TargetServerAttributeNotMatched (no host took
        # target_session_attrs) an InternalClientError; refusals and resets OSErrors; asyncpg's connect
        # timeout a TimeoutError. SetupFailed: a configure hook that failed.
        self.Error = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
            TimeoutError,
            SetupFailed,
        )

    async def connect(self, settings: PoolSettings, session: Session, seconds: float) -> Any:
        params = connect_params(settings, seconds)
        kwargs, options = asyncpg_arguments({**_parse_conninfo(settings.dsn), **params})
        # As libpq's connect_timeout keyword wins over the DSN's for psycopg; asyncpg takes fractions.
        kwargs["timeout"] = max(seconds, 0.001)
        if not settings.prepare:
            kwargs.setdefault("statement_cache_size", 0)  # PgBouncer < 1.21: see PoolSettings.prepare
        server_settings = kwargs.setdefault("server_settings", {})
        # The session state as the session's defaults, in the startup packet (see the module docstring).
        if session.isolation_level:
            server_settings["default_transaction_isolation"] = session.isolation_level
        if session.read_only is not None:
            server_settings["default_transaction_read_only"] = "on" if session.read_only else "off"
        if session.deferrable is not None:
            server_settings["default_transaction_deferrable"] = "on" if session.deferrable else "off"
        conn = await self._asyncpg.connect(**kwargs)
        try:
            _set_socket_options(self.socket_fd(conn), options)
        except BaseException:
            await _quietly(conn.close())
            raise
        return conn

    def socket_fd(self, conn: Any) -> int:
        transport = conn._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return int(sock.fileno()) if sock is not None else -1

    def clean_check(self, session: Session) -> Callable[[Any], bool]:
        # The state the pool sets lives in the session's defaults, which nothing on the client can
        # see change: what the return checks is what a borrower leaves by accident.
        return lambda conn: (
            not conn.is_closed()
            and not conn._protocol.is_in_transaction()
            and conn._top_xact is None
            and not conn._protocol._is_cancelling()
            and not conn._listeners
            and not conn._log_listeners
        )

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.is_closed() or conn.is_in_transaction() or conn._top_xact is not None)

    async def reset(self, conn: Any, session: Session) -> bool:
        """A rollback if a transaction was left open and UNLISTEN if listeners were left, in one round trip;
        not asyncpg's whole ``Connection.reset()`` (RESET ALL would also undo what the configure hook set)."""
        if conn.is_closed() or conn._protocol._is_cancelling():
            return False  # a cancelled query still running on it: discarded, as the psycopg 3 driver does
        statements = []
        if conn.is_in_transaction() or conn._top_xact is not None:
            conn._top_xact = None  # the next conn.transaction() must start at the top, not as a savepoint
            statements.append("ROLLBACK")
        if conn._listeners:
            statements.append("UNLISTEN *")
        conn._listeners.clear()
        conn._log_listeners.clear()
        try:
            if statements:
                await conn.execute(";".join(statements))
        except self.Error:
            return False
        return not conn.is_closed() and not conn.is_in_transaction()

    async def ping(self, conn: Any) -> None:
        await conn.execute("SELECT 1")  # no transaction to end: asyncpg opened none

    async def close(self, conn: Any) -> None:
        # asyncpg's close() waits for the server to hang up: bounded, then the socket is closed anyway
        # (also when the connection is busy with a cancelled query, where close() refuses).
        try:
            await conn.close(timeout=CLOSE_TIMEOUT)
        except BaseException:
            conn.terminate()
            raise

    def drop_without_io(self, conn: Any) -> None:
        try:
            fd = self.socket_fd(conn)
        except Exception:  # noqa: BLE001 - closed already: nothing to protect
            fd = -1
        if fd >= 0:
            os.dup2(devnull_fd(), fd)
        # Kept, never collected here: its __del__ would terminate() it (see the module docstring).
        kept_after_fork().append(conn)


def kept_after_fork() -> list[Any]:
    """Every asyncpg connection this process inherited and let go of: kept (in forkpool's process-wide
    holder, which a reload of this module finds again) so that none is ever collected."""
    holder = home()
    if not hasattr(holder, "asyncpg_inherited"):
        holder.asyncpg_inherited = []
    return holder.asyncpg_inherited


def _set_socket_options(fd: int, options: dict[str, int]) -> None:
    """libpq's keepalive and tcp_user_timeout parameters (libpq's names and units) on a TCP socket."""
    if fd < 0 or not options:
        return
    sock = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it leaves the connection's own alone
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # a Unix socket: no TCP options
        if options.get("keepalives", 1) and "keepalives_idle" in options:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, options["keepalives_idle"])
            if "keepalives_interval" in options:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, options["keepalives_interval"])
            if "keepalives_count" in options:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, options["keepalives_count"])
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
        if user_timeout is not None and "tcp_user_timeout" in options:
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, options["tcp_user_timeout"])
    finally:
        sock.close()


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - a dying connection may fail any way; it is gone either way
        pass


_made: dict[str, AsyncDriver] = {}


def async_driver(name: str) -> AsyncDriver:
    """The asyncio pool's driver for the setting `name`: asyncpg for "asyncpg", psycopg 3 for any other."""
    key = ASYNCPG if name == ASYNCPG else PSYCOPG
    driver = _made.get(key)
    if driver is None:
        driver = _made.setdefault(key, AsyncpgDriver() if key == ASYNCPG else PsycopgAsync())
    return driver
