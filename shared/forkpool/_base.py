"""What the threaded and the asyncio pool share: stats keys, one pooled connection, and ``BasePool``'s logic.

``Pool`` (_pool.py) and ``AsyncPool`` (_pool_async.py) differ in how they wait
and guard their state (a lock; the event loop's thread); what they decide is
here, once: the settings and counters, the stats snapshot, how many connections
to open, which idle ones to drop, which checkouts are overdue, what a failed
refill does to the queue, and how a forked child lets go of its connections.
The keys of ``Pool.stats()`` are in ``forkpool.stats``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import select
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._drivers import Driver, Session, get_driver, parse_conninfo
from ._process import end_threads, home, install_fork_hooks
from ._sockets import devnull_fd
from .identity import application_name
from .settings import SESSION_KWARGS, PoolSettings, describe_error, session_of
from .stats import (
    CHECKOUTS,
    CONNECT_ERRORS,
    CONNECTIONS_CLOSED,
    CONNECTIONS_DISCARDED,
    COUNTERS,
    IDLE,
    IN_USE,
    LEAK_WARNINGS,
    MAX_SIZE,
    MIN_SIZE,
    NAME,
    OPENING,
    PID,
    SERVER,
    SIZE,
    WAIT_MS_TOTAL,
    WAITING,
)

T = TypeVar("T")

logger = logging.getLogger("forkpool.pool")


def snapshot(pool: Any, idle: int, in_use: int, waiting: int, opening: int, counts: dict[str, float]) -> dict[str, Any]:
    """One stats dict for a pool of either kind (the threaded pool calls it under its lock)."""
    found: dict[str, Any] = {
        PID: pool.pid,
        NAME: pool.name,
        SERVER: pool.identity,
        MIN_SIZE: pool.settings.min_size,
        MAX_SIZE: pool.settings.max_size,
        SIZE: idle + in_use,
        IDLE: idle,
        IN_USE: in_use,
        WAITING: waiting,
        OPENING: opening,
    }
    found.update(counts)
    found[WAIT_MS_TOTAL] = round(found[WAIT_MS_TOTAL], 3)
    return found


@dataclass(frozen=True)
class PoolReport:
    """One pool a protected object keeps in a process: how many connections it may hold, and holds now."""

    label: str  # what the user calls it, never with a password: "engine mysql+pymysql://app@db/shop"
    backend: str  # "postgresql", "mysql", "sqlite", "redis"
    max_size: int | None  # connections it may hold at once; None: no bound
    source: str  # where max_size comes from: "pool_size 5 + max_overflow 10"
    open: int | None = None  # connections it holds now; None where the library does not say
    in_use: int | None = None
    waiting: int | None = None


# -- one pooled connection: its bookkeeping, how it is opened, checked and let go ----------------------------
# One pooled connection: its bookkeeping, how it is opened, checked and let go.
#
# Nothing here takes the pool lock: these are the slow, networked steps the pool
# runs outside it.

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

    def __init__(self, conn: connection, max_lifetime: float, fd: int | None = None) -> None:
        """`fd`: the connection's socket, for a driver whose connection has no ``fileno()`` (asyncpg)."""
        now = time.monotonic()
        self.conn = conn
        self._poller = select.poll()
        self._poller.register(conn.fileno() if fd is None else fd, select.POLLIN | select.POLLPRI | _POLLRDHUP)
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
    try:
        return frozenset(parse_conninfo(dsn))
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


def drop_without_io(conn: connection) -> None:
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


# -- what both pools share -----------------------------------------------------------------------------------

# A connection back for less than this long was in use a moment ago: a termination
# landing in that moment goes unseen, as one landing while the caller held it does.
# Polling it would cost more than the rest of the checkout (see BENCHMARKS.md).
JUST_RETURNED = 0.001

INTERVAL = 1.0  # seconds between maintenance rounds when nothing wakes the maintainer
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0
# Each backoff is scaled by a random factor in [1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER]. Not a
# setting: the reconnect-storm measurement (harness/storm.py) sets it to 0 in its own processes to
# show what lockstep retries do to a server; nothing else should.
BACKOFF_JITTER = 0.2


def next_backoff(previous: float) -> float:
    """Exponential backoff with jitter, so many processes do not retry in lockstep."""
    base = FIRST_BACKOFF if previous <= 0 else min(previous * 2, MAX_BACKOFF)
    return base * random.uniform(1.0 - BACKOFF_JITTER, 1.0 + BACKOFF_JITTER)


def add_stats_listener(name: str, publish: Callable[[Any], None], forget: Callable[[Any], None]) -> None:
    """Have every pool's stats published once a round, and forgotten when it closes.

    forkpool.metrics registers itself here when imported: the pool never imports
    an exporter, so prometheus_client stays optional. Keyed by `name`, so a
    reloaded listener replaces itself.
    """
    stats_listeners()[name] = (publish, forget)


def stats_listeners() -> dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]]:
    holder = home()
    if not hasattr(holder, "stats_listeners"):
        holder.stats_listeners = {}
    return holder.stats_listeners


def sort_idle(idle: deque[Entry], settings: PoolSettings, size: int) -> tuple[deque[Entry], list[Entry], int]:
    """(kept, dropped, how many of the dropped were dead): the upkeep's one pass over the idle deque.

    Shared by the threaded pool (under its lock) and the asyncio pool (between awaits).
    """
    now = time.monotonic()
    keep: deque[Entry] = deque()
    dropped: list[Entry] = []
    dead = 0
    surplus = size - settings.min_size
    for entry in idle:  # least recently returned first
        idle_too_long = settings.max_idle and now - entry.returned_at > settings.max_idle and surplus > 0
        if entry.socket_is_dead():  # one poll() per idle connection per round: no round trip
            dropped.append(entry)
            dead += 1
        elif now >= entry.expires_at or idle_too_long:
            dropped.append(entry)
            surplus -= 1
        else:
            keep.append(entry)
    return keep, dropped, dead


class BasePool:
    """The state and decisions the threaded and the asyncio pool share (psycopg_pool's ``BasePool`` shows the way).

    Every method that reads or changes pool state is called under the pool lock
    (``Pool``) or between two awaits in the loop's thread (``AsyncPool``): the
    subclass provides the guard, this class the logic.
    """

    _kind = "Pool"  # what repr() calls it

    def __init__(self, settings: PoolSettings, name: str) -> None:
        self.name = name
        self.settings = settings
        self.identity = settings.identity
        self.pid = os.getpid()
        self.session = session_of(settings)  # the state every connection is lent in
        self._idle: deque[Entry] = deque()  # LIFO: hot connections stay hot, cold ones age out
        self._in_use: dict[Any, Entry] = {}
        self._opening = 0
        self._closed = False
        self._inherited = False
        # Connections last verified before this moment must be checked before use.
        self._suspect_before = 0.0
        self._last_connect_error = ""  # the latest refill failure, for the maintainer's log line
        # The checkout count is an int attribute, the cheapest count per checkout; no CHECKOUTS entry here,
        # so a write to one fails loudly instead of being lost.
        self._counts: dict[str, float] = dict.fromkeys((key for key in COUNTERS if key != CHECKOUTS), 0)
        self._checkouts = 0
        self._wait_times: deque[float] = deque(maxlen=1000)  # queued waits, drained by the metrics export
        self.last_active = time.monotonic()  # last checkout: what least-recently-used eviction goes by

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_connect_error(self) -> str:
        """The latest failure to open a connection (redacted), "" if none yet."""
        return self._last_connect_error

    def __repr__(self) -> str:
        state = "inherited" if self._inherited else "closed" if self._closed else "open"
        return f"<{self._kind} {self.name!r} {self.identity} pid={self.pid} {state}>"

    def _size(self) -> int:
        return len(self._idle) + len(self._in_use)

    def _describe(self, exc: BaseException) -> str:
        return self.settings.redact(describe_error(exc))

    def _snapshot(self, waiting: int) -> dict[str, Any]:
        counts = {key: self._checkouts if key == CHECKOUTS else self._counts[key] for key in COUNTERS}
        return snapshot(self, len(self._idle), len(self._in_use), waiting, self._opening, counts)

    def _lend(self, entry: Entry) -> Entry:
        # Inlined in Pool.getconn(): keep the two alike.
        entry.checked_out_at = self.last_active = time.monotonic()
        entry.leak_reported = False
        self._in_use[entry.conn] = entry
        self._checkouts += 1
        return entry

    def _count_wait(self, waited: float) -> None:
        self._counts[WAIT_MS_TOTAL] += max(waited, 0.0) * 1000.0
        self._wait_times.append(max(waited, 0.0))

    def _reserve_deficit(self, waiting: int) -> int:
        """How many connections to open now (reserved in ``_opening``): up to ``min_size``, and one per waiter
        up to ``max_size``."""
        if self._closed:
            return 0
        total = self._size() + self._opening
        wanted = max(self.settings.min_size - total, min(waiting, self.settings.max_size - total), 0)
        self._opening += wanted
        return wanted

    def _strand_after_failed_refill(self, unopened: int, waiting: deque[T]) -> list[T]:
        """A refill failed: its reservations go, and with no connection open that could come back, the
        waiters (returned, for the caller to fail) have nothing to wait for."""
        self._opening -= unopened
        self._counts[CONNECT_ERRORS] += 1
        if self._size() == 0:
            stranded = list(waiting)
            waiting.clear()
            return stranded
        return []

    def _take_expired_idle(self) -> list[Entry]:
        """Remove (for the caller to close) idle connections past ``max_lifetime``, those idle past
        ``max_idle`` while the pool is above ``min_size``, and those the kernel already ended (a server
        that hung up, a silent network that keepalives caught): replaced now, not found dead by the next
        caller, and the pool is full again."""
        self._idle, dropped, dead = sort_idle(self._idle, self.settings, self._size())
        self._counts[CONNECTIONS_CLOSED] += len(dropped)
        if dead:
            self._counts[CONNECTIONS_DISCARDED] += dead
            self._suspect_before = time.monotonic()  # the others may be gone too: checked before reuse
        return dropped

    def _drain_wait_times(self) -> list[float]:
        waits = list(self._wait_times)
        self._wait_times.clear()
        return waits

    def _take_overdue_checkouts(self) -> list[Entry]:
        """Checked-out connections held past ``leak_timeout`` and not yet reported (now marked, and counted)."""
        limit = self.settings.leak_timeout
        if not limit:
            return []
        now = time.monotonic()
        late = [e for e in self._in_use.values() if not e.leak_reported and now - e.checked_out_at > limit]
        for entry in late:
            entry.leak_reported = True
        self._counts[LEAK_WARNINGS] += len(late)
        return late

    def _forget_retired(self, entry: Entry, broken: bool, checked_out: bool) -> None:
        """A lent connection closed for good: off the books. `checked_out` False: it failed its check inside
        getconn(), so the caller never had it and it does not count as a checkout."""
        self._in_use.pop(entry.conn, None)
        if not checked_out:
            self._checkouts -= 1
        self._counts[CONNECTIONS_CLOSED] += 1
        if broken:
            self._counts[CONNECTIONS_DISCARDED] += 1
            # One dead connection suggests the others may be too (server restart):
            # everything verified before now gets a round trip before reuse.
            self._suspect_before = time.monotonic()

    def _drop_inherited(self, conn: connection) -> None:
        """Let go of one connection inherited across fork (no I/O, no lock); a driver may need its own way."""
        drop_without_io(conn)

    def _let_go_after_fork(self) -> None:
        """In a forked child: closed for good, every connection dropped with no network I/O and no lock."""
        self._closed = self._inherited = True
        for entry in [*self._idle, *self._in_use.values()]:
            self._drop_inherited(entry.conn)
        self._idle = deque()
        self._in_use = {}


# -- every live pool of this process, and what fork does to them ---------------------------------------------
# Every live Pool object of this process, and what fork does to them.
#
# Kept apart from pool.py so the pool reads as a pool; this module does not
# import it. Before fork the parent holds every pool's lock (the child inherits
# consistent deques); in the child, each inherited pool gets fresh locks and lets
# go of its connections without network I/O (``Pool.detach_after_fork``).


def live_pools() -> weakref.WeakSet[Any]:
    """Every live Pool object of this process, named or not (the fork hook detaches them all)."""
    holder = home()
    pools = getattr(holder, "live_pools", None)
    if pools is None:
        pools = holder.live_pools = weakref.WeakSet()
    return pools


def _hold_pool_locks() -> None:
    # Before fork, in the parent: hold every pool lock so the child inherits each
    # pool's deques consistent (no connection half-way between idle and in use).
    # Bounded: a lock not free within a second is left alone; the child never takes it.
    # forkpool's threads end first (_process.py, "background threads no fork sees"): a maintainer must not be left waiting for
    # a lock held here, and before-fork hooks run newest first, so fork_quiet's own may come later.
    end_threads()
    held = []
    for pool in list(live_pools()):
        lock = getattr(pool, "_lock", None)  # an asyncio pool has none: its loop's thread is its lock
        if lock is not None and lock.acquire(timeout=1.0):
            held.append(lock)
    home().held_at_fork = held


def _release_pool_locks() -> None:
    for lock in getattr(home(), "held_at_fork", ()):
        lock.release()
    home().held_at_fork = []


def _detach_inherited_pools() -> None:
    # In the child: only the forking thread exists. Each pool gets fresh locks and
    # lets go of its connections (detach_after_fork), whether or not a registry knows it.
    home().held_at_fork = []
    pid = os.getpid()
    for pool in list(live_pools()):
        if pool.pid != pid:
            try:
                pool.detach_after_fork()
            except Exception:  # an at-fork hook must never break the fork
                logger.warning("%r: detaching after fork failed", pool, exc_info=True)


install_fork_hooks(
    "pool", before=_hold_pool_locks, after_in_parent=_release_pool_locks, after_in_child=_detach_inherited_pools
)
