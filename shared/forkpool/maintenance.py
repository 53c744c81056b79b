"""The pool's background thread: refill to min_size with backoff, trim, report leaks.

It holds the pool by weak reference, so a pool nobody uses any more is
collected and its thread ends. Threads do not survive fork: a child's pools
are new objects with maintainers of their own. In the parent the thread is not
alive across a fork either (Python 3.12+ warns about a fork with threads):
fork_quiet.py ends it before and starts it again after (docs/maintainer.md).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import fork_quiet
from ._process import home
from .connections import close_quietly

if TYPE_CHECKING:
    from ._pool import Pool

logger = logging.getLogger("forkpool.pool")

INTERVAL = 1.0  # seconds between rounds when nothing wakes the thread
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0


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


# Each backoff is scaled by a random factor in [1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER]. Not a
# setting: the reconnect-storm measurement (harness/storm.py) sets it to 0 in its own processes to
# show what lockstep retries do to a server; nothing else should.
BACKOFF_JITTER = 0.2


def next_backoff(previous: float) -> float:
    """Exponential backoff with jitter, so many processes do not retry in lockstep."""
    base = FIRST_BACKOFF if previous <= 0 else min(previous * 2, MAX_BACKOFF)
    return base * random.uniform(1.0 - BACKOFF_JITTER, 1.0 + BACKOFF_JITTER)


class Maintainer:
    """One pool's upkeep thread. It is not alive across a fork (see fork_quiet.py): ended
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
