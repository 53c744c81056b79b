"""A thread-safe PostgreSQL connection pool owned by exactly one process.

One lock guards the deques and counters. Callers that find no free connection
queue FIFO, each sleeping on its own lock outside the pool lock (see waiter.py).
Connecting, health checks, rollbacks and closing happen outside the lock.
A background maintainer (maintenance.py) refills to ``min_size`` with
backoff, trims idle and expired connections and reports leaks.

After ``fork()`` a pool is dead in the child: the at-fork hook at the end of
this module calls ``detach_after_fork`` on every pool the child inherited, which
lets go of its connections without network I/O and without taking any lock (the
parent still uses them, and a parent thread may have held any of their locks at
fork time). The child builds its own pool through ``get_pool()``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import stats as keys
from ._failover import PrimaryWatch, take_stale, wants_primary
from .connections import (
    Entry,
    close_quietly,
    connect,
    connection,
    detach_inherited,
    format_checkout_stack,
    hook_name,
    rollback_quietly,
)
from .drivers import get_driver
from .errors import ConnectError, PoolClosed, PoolError, PoolTimeout, TooManyWaiting
from .live_pools import all_pools
from .maintenance import Maintainer
from .per_process import notice_fork
from .redact import describe_error
from .settings import PoolSettings, session_of, with_hooks
from .upkeep import PoolUpkeep
from .waiter import Waiter

logger = logging.getLogger("forkpool.pool")

# A connection back for less than this long was in use a moment ago: a termination
# landing in that moment goes unseen, as one landing while the caller held it does.
# Polling it would cost more than the rest of the checkout (see BENCHMARKS.md).
JUST_RETURNED = 0.001

_monotonic = time.monotonic  # the hot path's clock, without two attribute lookups per call
_getpid = os.getpid


class Pool(PoolUpkeep):
    """Connections to one server and database, for the threads of one process."""

    def __init__(
        self,
        settings: PoolSettings,
        name: str = "default",
        *,
        configure: Callable[[connection], Any] | None = None,
        reset: Callable[[connection], Any] | None = None,
    ) -> None:
        """`configure` / `reset`: per-connection hooks, as ``PoolSettings.configure`` / ``reset`` (which they replace)."""
        settings = with_hooks(settings, configure, reset)
        self.name = name
        self.settings = settings
        self.identity = settings.identity
        self.pid = os.getpid()
        self.driver = get_driver(settings.driver)
        self.session = session_of(settings)  # the state every connection is lent in
        self._is_clean = self.driver.clean_check(self.session)  # putconn's one question, made once
        # A pool whose DSN asks for the primary drops connections to a server demoted under it (_failover.py).
        self._primary = PrimaryWatch(
            wants_primary(settings.dsn, settings.connect_kwargs) and not self.session.read_only
        )
        self._lock = threading.Lock()
        self._size_changed = threading.Condition(self._lock)
        self._idle: deque[Entry] = deque()  # LIFO: hot connections stay hot, cold ones age out
        self._in_use: dict[connection, Entry] = {}
        self._waiting: deque[Waiter] = deque()
        self._opening = 0
        self._closed = False
        self._inherited = False
        # Connections last verified before this moment must be checked before use.
        self._suspect_before = 0.0
        self._last_connect_error = ""  # the latest refill failure, for the maintainer's log line
        self._counts = dict.fromkeys(keys.COUNTERS, 0)
        self._wait_times: deque[float] = deque(maxlen=1000)  # queued waits, drained by the metrics export
        self.last_active = time.monotonic()  # last checkout: what least-recently-used eviction goes by
        self._maintainer = Maintainer(self)
        all_pools().add(self)

    # -- public API -----------------------------------------------------------------

    def open(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Start filling the pool to ``min_size``; with `wait`, fill in this thread first.

        Returns True once ``min_size`` connections are open. A failure to connect
        is logged, not raised: the maintainer keeps retrying with backoff, so a
        process starts even while its database is down.
        """
        self._raise_if_unusable()
        if not wait:
            self._maintainer.start()
            return False
        deadline = time.monotonic() + (self.settings.connect_timeout if timeout is None else timeout)
        filled = self.fill(deadline)  # connections the maintainer already reserved are not opened twice
        self._maintainer.start()
        # A refused connection will not be accepted a moment later: do not sit out the budget.
        return filled and self.wait(max(deadline - time.monotonic(), 0.0))

    def wait(self, timeout: float) -> bool:
        """Block until ``min_size`` connections are open, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._size_changed:
            while self._size() < self.settings.min_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._size_changed.wait(left)
            return not self._closed

    def getconn(self, timeout: float | None = None) -> connection:
        """Check a connection out; wait (FIFO) up to `timeout` seconds for a free one."""
        if self.pid != _getpid():
            # Inherited across a fork no Python hook saw (uWSGI forks in C): release what the
            # process inherited first; this pool is then detached and refuses (PoolClosed).
            notice_fork()
        if self._maintainer.paused:  # ended for a fork and not restarted by the hook (fork_quiet.py)
            self._maintainer.resume()
        entry = self._take_idle()
        if entry is None or not self._usable(entry):
            if entry is not None:
                self._retire(entry, broken=True, checked_out=False)
            entry = self._checkout_slow(timeout)
        if self.settings.leak_timeout:
            entry.checkout_stack = format_checkout_stack()
        return entry.conn

    def putconn(self, conn: connection) -> None:
        """Give a connection back: rolled back if mid-transaction, put back in the pool's session
        state (autocommit, isolation level, read only, deferrable), through the ``reset`` hook if
        there is one; replaced if broken or if the hook fails."""
        entry = self._in_use.get(conn)  # only the borrowing thread returns it: no race
        if entry is None:
            raise PoolError(f"{self!r}: putconn() of a connection not checked out from this pool")
        if self._primary.enabled and self._primary.check(conn, entry.created_at):
            self._retire(entry, broken=True)
            self._drop_demoted_idle()
            return
        # The common case asks the driver one question; anything else takes the full reset.
        reusable = self._is_clean(conn) or self.driver.reset_for_reuse(conn, self.session)
        if reusable and self.settings.reset is not None:
            try:
                reusable = self._run_reset_hook(conn)
            except BaseException:  # KeyboardInterrupt in the hook: the connection is not left lent forever
                self._retire(entry, broken=False)
                raise
        now = _monotonic()
        if not reusable or now >= entry.expires_at or self._closed:
            self._retire(entry, broken=not reusable)
            return
        entry.returned_at = now
        with self._lock:
            del self._in_use[conn]
            if self._waiting:
                self._hand_over(entry)
            else:
                self._idle.append(entry)  # _hand_over()'s common case, without the call
        if self._primary.enabled and self._primary.stale(conn, entry.created_at):
            self._drop_demoted_idle()  # its host was seen demoted while it came back, after that purge

    def _run_reset_hook(self, conn: connection) -> bool:
        """The user's ``reset`` on a returned, idle connection (outside the pool lock); False: discard it."""
        hook = self.settings.reset
        try:
            hook(conn)  # type: ignore[misc]  # checked by the caller
        except Exception as exc:  # noqa: BLE001 - any failure of the hook discards the connection, the caller goes on
            logger.warning(
                "%r: reset hook %s failed, connection discarded: %s",
                self,
                hook_name(hook),
                self._describe(exc) if isinstance(exc, self.driver.Error) else type(exc).__name__,
            )
            return False
        if not self.driver.is_idle(conn):
            logger.warning("%r: reset hook %s left a transaction open: connection discarded", self, hook_name(hook))
            return False
        return self._is_clean(conn) or self.driver.reset_for_reuse(conn, self.session)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[connection]:
        """A connection for a block: committed on success, rolled back on error, always returned."""
        conn = self.getconn(timeout)
        try:
            yield conn
        except BaseException as exc:
            rollback_quietly(conn)
            if self._primary.enabled:
                self._primary.check(conn, 0.0, exc)  # a 25006 from a server too old to report read-only
            raise
        else:
            conn.commit()
        finally:
            self.putconn(conn)

    def stats(self) -> dict[str, Any]:
        """A consistent snapshot; keys are the constants of ``forkpool.stats``."""
        with self._lock:
            return keys.snapshot(
                self, len(self._idle), len(self._in_use), len(self._waiting), self._opening, self._counts
            )

    def close(self) -> None:
        """Close idle connections now, in-use ones as they come back; wake waiters with PoolClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._counts[keys.CONNECTIONS_CLOSED] += len(idle)
            waiters = list(self._waiting)
            self._waiting.clear()
            self._size_changed.notify_all()
        for waiter in waiters:
            waiter.fail(PoolClosed(f"{self!r} was closed while waiting"))
        self._maintainer.stop()
        for entry in idle:
            close_quietly(entry.conn)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_connect_error(self) -> str:
        """The latest failure to open a connection (redacted), "" if none yet."""
        return self._last_connect_error

    def __repr__(self) -> str:
        state = "inherited" if self._inherited else "closed" if self._closed else "open"
        return f"<Pool {self.name!r} {self.identity} pid={self.pid} {state}>"

    def detach_after_fork(self) -> None:
        """In a forked child: drop inherited connections with no network I/O. Idempotent.

        No lock is taken, the pool's or a connection's: any of them may have been
        held at fork time by a parent thread that does not exist in the child.
        """
        if self._inherited:
            return
        self._lock = threading.Lock()
        self._size_changed = threading.Condition(self._lock)
        self._closed = self._inherited = True
        for entry in [*self._idle, *self._in_use.values()]:
            detach_inherited(entry.conn)
        self._idle.clear()
        self._in_use.clear()
        self._waiting.clear()
        self._maintainer.forget_after_fork()

    def _take_idle(self) -> Entry | None:
        """The common case in one lock section: an idle connection is there to take."""
        with self._lock:
            if self._idle and not self._closed:
                entry = self._idle.pop()
                # _lend() inline: this is the path every checkout of a busy pool takes.
                entry.checked_out_at = self.last_active = _monotonic()
                entry.leak_reported = False
                self._in_use[entry.conn] = entry
                self._counts[keys.CHECKOUTS] += 1
                return entry
        return None

    def _checkout_slow(self, timeout: float | None) -> Entry:
        wait = self.settings.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            entry, fresh = self._checkout(deadline, wait)
            # A connection just opened, or handed over by the thread that returned it,
            # never sat idle: there is nothing for the pre-use check to find.
            if fresh or self._usable(entry):
                return entry
            self._retire(entry, broken=True, checked_out=False)

    def _checkout(self, deadline: float, wait: float) -> tuple[Entry, bool]:
        with self._lock:
            self._raise_if_unusable()
            if self._idle:
                return self._lend(self._idle.pop()), False
            grow = self._size() + self._opening < self.settings.max_size
            if grow:
                self._opening += 1
            else:
                waiter = self._enqueue()
        if grow:
            return self._open_for_caller(deadline), True
        return self._wait_for(waiter, deadline, wait), True

    def _lend(self, entry: Entry) -> Entry:
        # Called with the pool lock held. Inlined in _take_idle(): keep the two alike.
        entry.checked_out_at = self.last_active = _monotonic()
        entry.leak_reported = False
        self._in_use[entry.conn] = entry
        self._counts[keys.CHECKOUTS] += 1
        return entry

    def _enqueue(self) -> Waiter:
        # Called with the pool lock held.
        limit = self.settings.max_waiting
        if limit and len(self._waiting) >= limit:
            raise TooManyWaiting(f"{self!r}: {len(self._waiting)} callers already waiting (max_waiting={limit})")
        waiter = Waiter()
        self._waiting.append(waiter)
        self._counts[keys.WAITS] += 1
        return waiter

    def _wait_for(self, waiter: Waiter, deadline: float, wait: float) -> Entry:
        try:
            woken = waiter.sleep(max(deadline - _monotonic(), 0.0))
        except BaseException:  # KeyboardInterrupt and the like: leave no ghost in the queue
            self._abandon(waiter)
            raise
        if not woken:
            with self._lock:
                # Still queued: nobody can serve us once we are off it. Not queued: a
                # server or close() took us off under this lock, and its wake-up is due.
                timed_out = waiter in self._waiting
                if timed_out:
                    self._waiting.remove(waiter)
                    self._count_wait(_monotonic() - waiter.started)
                    self._counts[keys.TIMEOUTS] += 1
                in_use, size = len(self._in_use), self.settings.max_size
            if timed_out:
                raise PoolTimeout(f"{self!r}: no connection free after {wait:.3g} s (max_size {size}, {in_use} in use)")
            waiter.sleep_until_woken()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.entry is not None  # woken without an error: served
        return waiter.entry  # _hand_over counted the wait while it held the lock

    def _abandon(self, waiter: Waiter) -> None:
        """An interrupted waiter: off the queue, or the connection it was just served given back."""
        with self._lock:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
                return
            served = waiter.entry  # _hand_over sets it under this lock
        if served is not None:
            self.putconn(served.conn)

    def _count_wait(self, waited: float) -> None:
        # Called with the pool lock held.
        self._counts[keys.WAIT_MS_TOTAL] += waited * 1000.0
        self._wait_times.append(waited)

    def _open_for_caller(self, deadline: float) -> Entry:
        try:
            entry = connect(self.settings, max(deadline - time.monotonic(), 0.0))
        except self.driver.Error as exc:
            with self._lock:
                self._opening -= 1
                self._counts[keys.CONNECT_ERRORS] += 1
            raise ConnectError(f"{self!r}: cannot connect: {self._describe(exc)}") from None
        self._maintainer.server_is_back()
        with self._lock:
            self._opening -= 1
            self._counts[keys.CONNECTIONS_OPENED] += 1
            if not self._closed:
                return self._lend(entry)
            self._counts[keys.CONNECTIONS_CLOSED] += 1
        close_quietly(entry.conn)
        raise PoolClosed(f"{self!r} was closed while connecting")

    def _usable(self, entry: Entry) -> bool:
        """Check the connection first if it sat idle long, predates a failure, or heard from the server."""
        if self._primary.enabled and self._primary.stale(entry.conn, entry.created_at):
            return False  # on a server seen demoted since it was opened: the primary changed
        idle_for = entry.checked_out_at - entry.returned_at
        if (
            idle_for < self.settings.check_idle
            and entry.verified_at >= self._suspect_before
            and (idle_for < JUST_RETURNED or not entry.socket_has_news())
        ):
            return True
        self._counts[keys.CHECKS] += 1  # a lost increment under a race only blurs a counter
        if self.driver.is_alive(entry.conn):
            entry.verified_at = time.monotonic()
            return True
        return False

    def _hand_over(self, entry: Entry) -> None:
        # Called with the pool lock held: the longest waiter gets it, else it goes idle.
        # A queued waiter has not given up (it leaves the queue under this lock to do so).
        if self._waiting:
            waiter = self._waiting.popleft()
            self._lend(entry)
            self._count_wait(entry.checked_out_at - waiter.started)
            waiter.serve(entry)
            return
        self._idle.append(entry)

    def _retire(self, entry: Entry, broken: bool, checked_out: bool = True) -> None:
        """Close a lent connection for good; the maintainer replaces it.

        `checked_out` False: it failed its check inside getconn(), so the caller
        never had it and it does not count as a checkout.
        """
        with self._lock:
            self._in_use.pop(entry.conn, None)
            if not checked_out:
                self._counts[keys.CHECKOUTS] -= 1
            self._counts[keys.CONNECTIONS_CLOSED] += 1
            if broken:
                self._counts[keys.CONNECTIONS_DISCARDED] += 1
                # One dead connection suggests the others may be too (server restart):
                # everything verified before now gets a round trip before reuse.
                self._suspect_before = time.monotonic()
            self._size_changed.notify_all()
        close_quietly(entry.conn)
        if broken:
            logger.info("%r: discarded a broken connection", self)
        self._maintainer.wake()

    def _drop_demoted_idle(self) -> None:
        """Close the idle siblings of a connection found on a demoted server: the next checkouts
        connect again, through the DSN's host list, to the server that now takes writes."""
        with self._lock:
            stale = take_stale(self._idle, self._primary)
            self._counts[keys.CONNECTIONS_CLOSED] += len(stale)
            self._counts[keys.CONNECTIONS_DISCARDED] += len(stale)
            self._size_changed.notify_all()
        for entry in stale:
            close_quietly(entry.conn)
        if stale:
            logger.info("%r: closed %d idle connections to a demoted server", self, len(stale))
        self._maintainer.wake()

    def _size(self) -> int:
        return len(self._idle) + len(self._in_use)

    def _raise_if_unusable(self) -> None:
        if self._inherited:
            raise PoolClosed(
                f"{self!r} belongs to process {self.pid}, not {os.getpid()} (inherited across fork); "
                "call get_pool() in this process"
            )
        if self._closed:
            raise PoolClosed(f"{self!r} is closed")

    def _describe(self, exc: BaseException) -> str:
        return self.settings.redact(describe_error(exc))
