"""A caller queued for a connection, with a wake-up of its own.

The pool keeps waiters in a FIFO deque under the pool lock; each waiter sleeps
on its own lock, outside the pool lock, so handing a connection to the
longest-waiting caller wakes exactly that caller.

The lock is created held and released once, by whoever takes the waiter off the
queue: that is the one-sleeper case of a ``threading.Condition`` without the
Condition's bookkeeping (a lock allocated and taken twice per wait), and it
makes a contended checkout 11-22 % cheaper (``benchmarks/hotpath.py``, S5).

Invariant: only the thread that removed a waiter from the pool's queue, under
the pool lock, may serve or fail it; a waiter that times out gives up only if
it is still queued, checked under the pool lock. So the lock is released exactly
once, and a served waiter never misses its connection.
"""

from __future__ import annotations

import threading
import time

from .connections import Entry


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
