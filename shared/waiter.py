"""A caller queued for a connection, with its own condition.

The pool keeps waiters in a FIFO deque under the pool lock; each waiter sleeps
on its own condition, outside the pool lock, so handing a connection to the
longest-waiting caller wakes exactly that caller.

Lock order: pool lock, then waiter lock. A waiter never takes the pool lock
while holding its own.
"""

from __future__ import annotations

import threading
import time

from .connections import Entry


class Waiter:
    __slots__ = ("_cond", "entry", "error", "gave_up", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._cond = threading.Condition(threading.Lock())
        self.entry: Entry | None = None
        self.error: BaseException | None = None
        self.gave_up = False

    def wait(self, timeout: float) -> Entry | None:
        """Sleep until served; None on timeout, after which nobody can serve us."""
        with self._cond:
            if self.entry is None and self.error is None:
                self._cond.wait(timeout)
            if self.error is not None:
                raise self.error
            if self.entry is None:
                self.gave_up = True
            return self.entry

    def serve(self, entry: Entry) -> bool:
        """Hand `entry` over; False if the waiter already gave up (keep the entry)."""
        with self._cond:
            if self.gave_up:
                return False
            self.entry = entry
            self._cond.notify()
            return True

    def fail(self, error: BaseException) -> bool:
        """Wake the waiter with an error (pool closing); False if it already gave up."""
        with self._cond:
            if self.gave_up:
                return False
            self.error = error
            self._cond.notify()
            return True
