"""A thread-safe PostgreSQL connection pool owned by exactly one process.

One lock guards the deques and counters. Callers that find no free connection
queue FIFO, each sleeping on its own lock outside the pool lock (``Waiter``).
Connecting, health checks, rollbacks and closing happen outside the lock.
A background maintainer (``Maintainer``) refills to ``min_size`` with
backoff, trims idle and expired connections and reports leaks. What the pool
decides it shares with the asyncio pool (``_base.BasePool``); this module adds
the lock, the waiters and the thread.

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
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import _process as fork_quiet
from . import stats as keys
from ._base import (
    INTERVAL,
    JUST_RETURNED,
    BasePool,
    Entry,
    close_quietly,
    connect,
    connection,
    format_checkout_stack,
    hook_name,
    live_pools,
    next_backoff,
    rollback_quietly,
    stats_listeners,
)
from ._drivers import get_driver
from ._failover import PrimaryWatch, take_stale, wants_primary
from ._process import notice_fork, sentinel
from .errors import ConnectError, PoolClosed, PoolError, PoolTimeout, TooManyWaiting
from .settings import PoolSettings, with_hooks

if TYPE_CHECKING:
    import threading

    from .settings import PoolSettings

logger = logging.getLogger("forkpool.pool")

_monotonic = time.monotonic  # the hot path's clock, without two attribute lookups per call
_fork_sentinel = sentinel()  # read on every checkout: see _process.sentinel()


class Pool(BasePool):
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
        self.driver = get_driver(settings.driver)
        super().__init__(settings, name)
        self._is_clean = self.driver.clean_check(self.session)  # putconn's one question, made once
        # Read on every checkout and return: copied once (a pool's settings never change).
        self._no_check_below = min(settings.check_idle, JUST_RETURNED)  # see _usable()
        self._leak_timeout = settings.leak_timeout
        self._reset_hook = settings.reset
        # A pool whose DSN asks for the primary drops connections to a server demoted under it (_failover.py).
        self._primary = PrimaryWatch(
            wants_primary(settings.dsn, settings.connect_kwargs) and not self.session.read_only
        )
        self._follows_primary = self._primary.enabled  # the hot path's copy: one attribute read, not two
        self._lock = threading.Lock()
        self._size_changed = threading.Condition(self._lock)
        self._waiting: deque[Waiter] = deque()
        self._maintainer = Maintainer(self)
        live_pools().add(self)

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
        if not _fork_sentinel[0]:
            # A fork since this process released what it inherited, one no Python hook saw
            # (uWSGI forks in C): release it first; an inherited pool is then detached and
            # refuses (PoolClosed). The kernel wipes the byte in every child: no getpid() here.
            notice_fork()
        if self._maintainer.paused:
            # Ended for a fork and not restarted by the hook (_process.py, "background threads no fork sees").
            self._maintainer.resume()
        # Critical section: take an idle connection if there is one (_lend() inline: every checkout
        # of a busy pool comes this way).
        entry: Entry | None = None
        with self._lock:
            if self._idle and not self._closed:
                entry = self._idle.pop()
                entry.checked_out_at = self.last_active = now = _monotonic()
                entry.leak_reported = False
                self._in_use[entry.conn] = entry
                self._checkouts += 1
        if entry is None:
            entry = self._checkout_slow(timeout)
        elif (
            now - entry.returned_at >= self._no_check_below
            or entry.verified_at < self._suspect_before
            or self._follows_primary
        ) and not self._usable(entry):
            # _usable()'s no-check case is the test above: back within a millisecond, verified since
            # the last failure, no primary to follow; anything else asks it.
            self._retire(entry, broken=True, checked_out=False)
            entry = self._checkout_slow(timeout)
        if self._leak_timeout:
            entry.checkout_stack = format_checkout_stack()
        return entry.conn

    def putconn(self, conn: connection) -> None:
        """Give a connection back: rolled back if mid-transaction, put back in the pool's session
        state (autocommit, isolation level, read only, deferrable), through the ``reset`` hook if
        there is one; replaced if broken or if the hook fails."""
        entry = self._in_use.get(conn)  # only the borrowing thread returns it: no race
        if entry is None:
            raise PoolError(f"{self!r}: putconn() of a connection not checked out from this pool")
        if self._follows_primary and self._primary.check(conn, entry.created_at):
            self._retire(entry, broken=True)
            self._drop_demoted_idle()
            return
        # The common case asks the driver one question; anything else takes the full reset.
        reusable = self._is_clean(conn) or self.driver.reset_for_reuse(conn, self.session)
        if reusable and self._reset_hook is not None:
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
        if self._follows_primary and self._primary.stale(conn, entry.created_at):
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
            return self._snapshot(len(self._waiting))

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

    def detach_after_fork(self) -> None:
        """In a forked child: drop inherited connections with no network I/O. Idempotent.

        No lock is taken, the pool's or a connection's: any of them may have been
        held at fork time by a parent thread that does not exist in the child.
        """
        if self._inherited:
            return
        self._lock = threading.Lock()
        self._size_changed = threading.Condition(self._lock)
        self._let_go_after_fork()
        self._waiting.clear()
        self._maintainer.forget_after_fork()

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
            self._forget_retired(entry, broken, checked_out)
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

    def _raise_if_unusable(self) -> None:
        if self._inherited:
            raise PoolClosed(
                f"{self!r} belongs to process {self.pid}, not {os.getpid()} (inherited across fork); "
                "call get_pool() in this process"
            )
        if self._closed:
            raise PoolClosed(f"{self!r} is closed")

    def fill(self, deadline: float | None = None) -> bool:
        """Open connections up to the deficit; False on the first failure (caller backs off)."""
        with self._lock:
            wanted = self._reserve_deficit(len(self._waiting))
        for done in range(wanted):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._release_reservations(wanted - done)
                return False
            try:
                entry = connect(self.settings, left)
            except self.driver.Error as exc:
                self._last_connect_error = self._describe(exc)
                self._connect_failed(wanted - done)
                return False
            self._add_new(entry)
        return True

    def _release_reservations(self, count: int) -> None:
        with self._lock:
            self._opening -= count

    def _connect_failed(self, unopened: int) -> None:
        """A refill failed: with no connection open that could come back, waiting is futile."""
        with self._lock:
            stranded = self._strand_after_failed_refill(unopened, self._waiting)
        for waiter in stranded:
            waiter.fail(ConnectError(f"{self!r}: cannot connect: {self._last_connect_error}"))

    def _add_new(self, entry: Entry) -> None:
        with self._lock:
            self._opening -= 1
            self._counts[keys.CONNECTIONS_OPENED] += 1
            if not self._closed:
                self._hand_over(entry)
                self._size_changed.notify_all()
                return
            self._counts[keys.CONNECTIONS_CLOSED] += 1
        close_quietly(entry.conn)

    def take_expired_idle(self) -> list[Entry]:
        """Remove (for the caller to close) idle connections past ``max_lifetime``,
        those idle past ``max_idle`` while the pool is above ``min_size``, and those the
        kernel already ended (a server that hung up, a silent network that keepalives caught):
        replaced now, not found dead by the next caller, and the pool is full again."""
        with self._lock:
            return self._take_expired_idle()

    def drain_wait_times(self) -> list[float]:
        """Seconds each queued caller waited since the last drain (for the wait histogram)."""
        with self._lock:
            return self._drain_wait_times()

    def take_overdue_checkouts(self) -> list[Entry]:
        """Checked-out connections held past ``leak_timeout`` and not yet reported (now marked)."""
        if not self.settings.leak_timeout:
            return []
        with self._lock:
            return self._take_overdue_checkouts()


# -- a caller queued for a connection ------------------------------------------------------------------------
# A caller queued for a connection, with a wake-up of its own.
#
# The pool keeps waiters in a FIFO deque under the pool lock; each waiter sleeps
# on its own lock, outside the pool lock, so handing a connection to the
# longest-waiting caller wakes exactly that caller.
#
# The lock is created held and released once, by whoever takes the waiter off the
# queue: that is the one-sleeper case of a ``threading.Condition`` without the
# Condition's bookkeeping (a lock allocated and taken twice per wait), and it
# makes a contended checkout 11-22 % cheaper (``benchmarks/hotpath.py``, S5).
#
# Invariant: only the thread that removed a waiter from the pool's queue, under
# the pool lock, may serve or fail it; a waiter that times out gives up only if
# it is still queued, checked under the pool lock. So the lock is released exactly
# once, and a served waiter never misses its connection.


class Waiter:
    __slots__ = ("_wakeup", "entry", "error", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._wakeup = threading.Lock()
        self._wakeup.acquire()  # held until served or failed
        self.entry: Entry | None = None
        self.error: BaseException | None = None

    def sleep(self, timeout: float) -> bool:
        """Sleep until served or failed; False if `timeout` passed first."""
        return self._wakeup.acquire(timeout=timeout)

    def sleep_until_woken(self) -> None:
        """After a timeout lost the race: taken off the queue, the wake-up is on its way."""
        self._wakeup.acquire()

    def serve(self, entry: Entry) -> None:
        """Hand `entry` over (the caller took this waiter off the queue)."""
        self.entry = entry
        self._wakeup.release()

    def fail(self, error: BaseException) -> None:
        """Wake the waiter with an error, e.g. the pool closing (the caller took it off the queue)."""
        self.error = error
        self._wakeup.release()


# -- the maintainer: the pool's background thread ------------------------------------------------------------
# The pool's background thread: refill to min_size with backoff, trim, report leaks.
#
# It holds the pool by weak reference, so a pool nobody uses any more is
# collected and its thread ends. Threads do not survive fork: a child's pools
# are new objects with maintainers of their own. In the parent the thread is not
# alive across a fork either (Python 3.12+ warns about a fork with threads):
# _process.py ends it before and starts it again after (docs/maintainer.md).


class Maintainer:
    """One pool's upkeep thread. It is not alive across a fork (see _process.py): ended
    before, started again in the parent after, with its backoff kept."""

    def __init__(self, pool: Pool) -> None:
        self._pool = weakref.ref(pool)
        self._name = pool.name
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server_back = threading.Event()  # ends a backoff early: a caller just connected
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Invariants, under _start_lock: _thread is the running thread or None (a thread clears it
        # itself, under the lock, as it ends); a thread runs only while _wanted and not _paused.
        self._wanted = False  # start() was called: upkeep should run whenever no fork is under way
        self.paused = fork_quiet.forking()  # ended for a fork; Pool.getconn() resumes it if the hook did not
        # Both survive a pause: a fork neither resets a backoff in progress nor brings a round forward.
        self._backoff = 0.0
        self._next_round_at = 0.0
        self._woken = self._back = False  # wake() / server_is_back() called since the last round
        fork_quiet.register(self)

    def start(self) -> None:
        if self.paused and not fork_quiet.forking():
            self.resume()  # opened again after a fork whose hook left the threads ended
        with self._start_lock:
            self._wanted = True
            self._spawn_if_due()

    def _spawn_if_due(self) -> None:
        # Called with _start_lock held.
        if self._thread is None and self._wanted and not self.paused and not self._stopping.is_set():
            self._thread = threading.Thread(target=self._run, name=f"forkpool-maintainer[{self._name}]", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._woken = True
        self._wake.set()

    def server_is_back(self) -> None:
        """A caller connected while we were backing off: refill now, not at the end of the backoff."""
        self._back = True
        self._server_back.set()

    def pause_for_fork(self) -> threading.Thread | None:
        with self._start_lock:
            self.paused = True
            thread = self._thread
            if thread is not None:
                self._wake.set()
                self._server_back.set()
        return thread

    def resume_after_fork(self) -> None:
        with self._start_lock:
            self.paused = False
            self._spawn_if_due()

    def resume(self) -> None:
        """The first use of the pool after a fork whose hook did not restart the threads."""
        fork_quiet.resume_threads()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._server_back.set()
        with self._start_lock:
            thread = self._thread
            ran = self._wanted
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        pool = self._pool()
        if pool is not None and ran:
            _publish(pool)  # the last counts before the pool's gauges go to zero
            for _, forget in list(stats_listeners().values()):
                forget(pool)

    def forget_after_fork(self) -> None:
        """In a forked child the thread is gone and its events' locks may be stale."""
        self._wake = threading.Event()
        self._server_back = threading.Event()
        self._stopping = threading.Event()
        self._stopping.set()
        self._start_lock = threading.Lock()
        self._thread = None
        self._wanted = self.paused = False

    def _run(self) -> None:
        while True:
            self._rounds()
            with self._start_lock:
                if self._stopping.is_set() or self.paused or self._thread is not threading.current_thread():
                    if self.paused:
                        self._keep_pending_wakes()
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
            # Resumed between the last round and here: carry on as the same thread.

    def _rounds(self) -> None:
        while not self._stopping.is_set() and not self.paused:
            now = time.monotonic()
            if now < self._next_round_at:
                # wake() (a discard) must not cut a backoff short; proof that the server is back does.
                (self._server_back if self._backoff else self._wake).wait(self._next_round_at - now)
                if self.paused:
                    return
                self._woken = self._back = False
                self._wake.clear()
                self._server_back.clear()
            backoff = self._round(self._backoff)
            if backoff < 0:
                self._stopping.set()  # the pool is gone: nothing to resume
                return
            self._backoff = backoff
            self._next_round_at = time.monotonic() + (backoff or INTERVAL)

    def _keep_pending_wakes(self) -> None:
        # Called with _start_lock held. pause_for_fork() set both events (under that lock) to end
        # the wait: only real wake-ups survive the fork.
        self._wake.clear()
        self._server_back.clear()
        if self._woken:
            self._wake.set()
        if self._back:
            self._server_back.set()

    def _round(self, backoff: float) -> float:
        """One round of upkeep; returns the backoff before the next (-1: pool gone)."""
        pool = self._pool()
        if pool is None or pool.closed:
            return -1.0
        try:
            for entry in pool.take_expired_idle():
                close_quietly(entry.conn)
            filled = pool.fill()
            report_leaks(pool)
            _publish(pool)
        except Exception:  # the thread must outlive any one bad round
            logger.exception("%r: maintenance round failed", pool)
            return next_backoff(backoff)
        if filled:
            if backoff:
                logger.info("%r: connected again", pool)
            return 0.0
        delay = next_backoff(backoff)
        logger.warning("%r: cannot connect: %s; retrying in %.1f s", pool, pool.last_connect_error, delay)
        return delay


def report_leaks(pool: Pool) -> None:
    """Log, once per checkout, each connection held longer than ``leak_timeout``, with its stack."""
    now = time.monotonic()
    for entry in pool.take_overdue_checkouts():
        stack = "".join(entry.checkout_stack or ["  (stack not recorded)\n"])
        logger.warning(
            "%r: a connection has been checked out for %.1f s (leak_timeout %.1f s); checked out at:\n%s",
            pool,
            now - entry.checked_out_at,
            pool.settings.leak_timeout,
            stack,
        )


def _publish(pool: Pool) -> None:
    for publish, _ in list(stats_listeners().values()):
        try:
            publish(pool)
        except Exception:  # metrics are best effort; the pool must go on
            logger.debug("%r: exporting metrics failed", pool, exc_info=True)
