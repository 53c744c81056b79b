"""One pooled connection: its bookkeeping, how it is opened, checked and let go.

Nothing here takes the pool lock: these are the slow, networked steps the pool
runs outside it.
"""

from __future__ import annotations

import functools
import os
import random
import select
import time
import traceback
import weakref
from typing import Any

from ._drivers import Driver, Session, get_driver
from ._redact import describe_error
from ._sockets import devnull_fd
from .identity import application_name
from .settings import SESSION_KWARGS, PoolSettings, session_of

_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # the peer's FIN (Linux): the server closed the session
_DEAD = select.POLLERR | select.POLLHUP | select.POLLNVAL | _POLLRDHUP

connection = Any  # a psycopg2 or psycopg 3 connection, whichever the pool's driver makes

# A lifetime is shortened by up to this fraction, so connections opened together
# (a pool filled at start-up) do not all expire, and reconnect, together.
LIFETIME_JITTER = 0.1


class Entry:
    """A connection and what the pool knows about it."""

    __slots__ = (
        "_poller",
        "checked_out_at",
        "checkout_stack",
        "conn",
        "created_at",
        "expires_at",
        "leak_reported",
        "returned_at",
        "verified_at",
    )

    def __init__(self, conn: connection, max_lifetime: float) -> None:
        now = time.monotonic()
        self.conn = conn
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLIN | select.POLLPRI | _POLLRDHUP)
        self.created_at = now
        self.verified_at = now  # last time the server is known to have answered
        self.returned_at = now
        self.checked_out_at = 0.0
        self.checkout_stack: list[str] | None = None
        self.leak_reported = False
        jitter = 1.0 - random.uniform(0.0, LIFETIME_JITTER)
        self.expires_at = now + max_lifetime * jitter if max_lifetime else float("inf")

    def socket_has_news(self) -> bool:
        """True if the server sent something (or hung up) while the connection sat idle.

        An idle session in our pool never receives data unprompted: readable
        means a termination notice, EOF from a restart, or a notification. One
        non-blocking poll() costs a syscall, not a round trip.
        """
        return bool(self._poller.poll(0))

    def socket_is_dead(self) -> bool:
        """True if the kernel already ended the connection: reset, timed out (keepalive,
        tcp_user_timeout) or hung up by the server. Unlike news, this needs no round trip to decide."""
        return any(events & _DEAD for _, events in self._poller.poll(0))


def connect(settings: PoolSettings, timeout: float | None = None) -> Entry:
    """Open one connection with the pool's driver, named after this process, in the pool's session
    state, through its ``configure`` hook; raises the driver's Error (a failed hook: ``driver.SetupFailed``)."""
    seconds = settings.connect_timeout if timeout is None else min(timeout, settings.connect_timeout)
    kwargs = connect_params(settings, seconds)
    driver = get_driver(settings.driver)
    if not settings.prepare:
        kwargs.update(driver.no_prepare)  # behind PgBouncer < 1.21: no server-side prepared statements
    conn = driver.connect(settings.dsn, kwargs)
    try:
        set_up(driver, conn, settings, session_of(settings))
    except BaseException:
        close_quietly(conn)  # this process opened it: a proper goodbye
        raise
    return Entry(conn, settings.max_lifetime)


def set_up(driver: Driver, conn: connection, settings: PoolSettings, session: Session) -> None:
    """A new connection: the session state, then the user's ``configure`` hook, which must leave it so."""
    driver.apply_session(conn, session)
    hook = settings.configure
    if hook is None:
        return
    try:
        hook(conn)
    except driver.Error as exc:
        raise driver.SetupFailed(f"configure hook {hook_name(hook)} failed: {describe_error(exc)}") from exc
    except Exception as exc:
        raise driver.SetupFailed(
            f"configure hook {hook_name(hook)} failed: {type(exc).__name__}: {describe_error(exc)}"
        ) from exc
    if not driver.clean_check(session)(conn):
        raise driver.SetupFailed(setup_left_dirty(hook, not driver.is_idle(conn)))


def setup_left_dirty(hook: object, in_transaction: bool) -> str:
    what = (
        "a transaction open (commit it, or run it in autocommit mode)"
        if in_transaction
        else "another session state (set autocommit, isolation_level, read_only, deferrable in the pool's settings)"
    )
    return f"configure hook {hook_name(hook)} left {what}"


def hook_name(hook: object) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__


def connect_params(settings: PoolSettings, connect_seconds: float) -> dict[str, Any]:
    """libpq parameters for one connection: the pool's network bounds, then the DSN's, then connect_kwargs.

    connect_kwargs' session keys (autocommit, isolation_level, read_only...) are not
    libpq's: they are the pool's session state (``settings.session_of``), applied after connecting.

    The same parameters work for psycopg2 and psycopg 3 (both hand them to libpq).
    A parameter the DSN names is left to the DSN: a keyword argument would override it.
    """
    kwargs: dict[str, Any] = {k: v for k, v in network_params(settings).items() if k not in _dsn_keys(settings.dsn)}
    kwargs.update((k, v) for k, v in (settings.connect_kwargs or {}).items() if k not in SESSION_KWARGS)
    kwargs["application_name"] = application_name()
    kwargs.setdefault("connect_timeout", max(1, round(connect_seconds)))  # libpq takes whole seconds, 1 at least
    return kwargs


def network_params(settings: PoolSettings) -> dict[str, int]:
    """TCP keepalives and tcp_user_timeout as libpq takes them (whole seconds; milliseconds for the latter)."""
    found: dict[str, int] = {}
    if settings.keepalives_idle > 0:
        found.update(
            keepalives=1,
            keepalives_idle=max(1, round(settings.keepalives_idle)),
            keepalives_interval=max(1, round(settings.keepalives_interval)),
            keepalives_count=settings.keepalives_count,
        )
    if settings.tcp_user_timeout > 0:
        found["tcp_user_timeout"] = max(1, round(settings.tcp_user_timeout * 1000))
    return found


@functools.lru_cache(maxsize=64)
def _dsn_keys(dsn: str) -> frozenset[str]:
    import psycopg2.extensions  # always installed: settings validates DSNs with it

    try:
        return frozenset(psycopg2.extensions.parse_dsn(dsn))
    except Exception:  # noqa: BLE001 - validated at configuration; libpq reports a bad one on connect
        return frozenset()


def rollback_quietly(conn: connection) -> None:
    """Roll back after a failed block; a broken connection fails here too, and putconn() discards it."""
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - either driver's error, or a closed connection: discarded on return
        pass


def close_quietly(conn: connection) -> None:
    """Close a connection this process opened (sends Terminate: only in the owner)."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a dying connection may fail any way; it is gone either way
        pass


def detach_inherited(conn: connection) -> None:
    """Let go of a connection inherited across fork: no network I/O, no lock.

    Never ``close()`` here. It would send libpq's Terminate on the socket the
    parent still uses (ending the parent's session), and it takes the
    connection's lock (psycopg2's per-connection mutex, held for a whole query;
    psycopg 3's ``Connection.lock``): a parent thread mid-query at fork time
    never releases it in the child, and the child hangs (40 of 40 forks under
    six busy threads did). Instead:

    - point the descriptor at /dev/null, so nothing this process does with the
      object (a stray query, an exec'd program) can reach the parent's socket;
    - drop the object: psycopg2 >= 2.8 skips PQfinish, and the mutex, when a
      connection is deallocated in a process other than its creator
      (``CONN_CHECK_PID`` in connection_type.c, psycopg2#829); psycopg 3's
      ``PGconn.__del__`` checks the pid the same way;
    - close the /dev/null descriptor once the object is gone (the driver never
      closes it then), unless that number no longer holds /dev/null.
    """
    try:
        fd = conn.fileno()  # PQsocket(): reads a field, takes no lock (either driver)
    except Exception:  # noqa: BLE001 - closed already (each driver says so its own way): nothing to protect
        return
    devnull = devnull_fd()
    os.dup2(devnull, fd)
    weakref.finalize(conn, _close_if_devnull, fd, os.fstat(devnull))


def _close_if_devnull(fd: int, devnull: os.stat_result) -> None:
    # If the object was closed explicitly in this process, libpq closed fd and the
    # number may now belong to someone else: leave it alone then.
    try:
        found = os.fstat(fd)
    except OSError:
        return
    if (found.st_dev, found.st_ino) == (devnull.st_dev, devnull.st_ino) and fd != devnull_fd():
        os.close(fd)


def format_checkout_stack() -> list[str]:
    """Where the caller checked a connection out, without the pool's own frames."""
    frames = traceback.extract_stack()
    own = os.path.dirname(__file__)
    return traceback.format_list([f for f in frames if not f.filename.startswith(own)])
