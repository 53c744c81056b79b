"""What the maintainer asks of a pool: refill, expire, report leaks, hand over wait times.

A mixin of ``Pool``, split out for size: the same lock discipline holds here.
Each operation decides under the pool lock and does its slow part (connecting,
closing, logging) outside it, or leaves that to the caller.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from . import _base as keys
from .connections import Entry, close_quietly, connect
from .errors import ConnectError

if TYPE_CHECKING:
    import threading

    from ._drivers import Driver
    from .maintenance import Maintainer
    from .settings import PoolSettings
    from .waiter import Waiter


class PoolUpkeep:
    # Provided by Pool.
    settings: PoolSettings
    _lock: threading.Lock
    _size_changed: threading.Condition
    _idle: deque[Entry]
    _in_use: dict[Any, Entry]
    _waiting: deque[Waiter]
    _opening: int
    _closed: bool
    _suspect_before: float
    _counts: dict[str, float]
    _wait_times: deque[float]
    _maintainer: Maintainer
    _last_connect_error: str
    driver: Driver

    if TYPE_CHECKING:  # implemented by Pool

        def _size(self) -> int: ...
        def _hand_over(self, entry: Entry) -> None: ...
        def _describe(self, exc: BaseException) -> str: ...

    def fill(self, deadline: float | None = None) -> bool:
        """Open connections up to the deficit; False on the first failure (caller backs off)."""
        wanted = self._reserve_deficit()
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

    def _reserve_deficit(self) -> int:
        with self._lock:
            if self._closed:
                return 0
            total = self._size() + self._opening
            for_waiters = min(len(self._waiting), self.settings.max_size - total)
            wanted = max(self.settings.min_size - total, for_waiters, 0)
            self._opening += wanted
            return wanted

    def _release_reservations(self, count: int) -> None:
        with self._lock:
            self._opening -= count

    def _connect_failed(self, unopened: int) -> None:
        """A refill failed: with no connection open that could come back, waiting is futile."""
        with self._lock:
            self._opening -= unopened
            self._counts[keys.CONNECT_ERRORS] += 1
            stranded: list[Waiter] = []
            if self._size() == 0:
                stranded, self._waiting = list(self._waiting), deque()
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
            self._idle, dropped, dead = sort_idle(self._idle, self.settings, self._size())
            self._counts[keys.CONNECTIONS_CLOSED] += len(dropped)
            if dead:
                self._counts[keys.CONNECTIONS_DISCARDED] += dead
                self._suspect_before = time.monotonic()  # the others may be gone too: checked before reuse
        return dropped

    def drain_wait_times(self) -> list[float]:
        """Seconds each queued caller waited since the last drain (for the wait histogram)."""
        with self._lock:
            waits = list(self._wait_times)
            self._wait_times.clear()
        return waits

    def take_overdue_checkouts(self) -> list[Entry]:
        """Checked-out connections held past ``leak_timeout`` and not yet reported (now marked)."""
        limit = self.settings.leak_timeout
        if not limit:
            return []
        now = time.monotonic()
        with self._lock:
            late = [e for e in self._in_use.values() if not e.leak_reported and now - e.checked_out_at > limit]
            for entry in late:
                entry.leak_reported = True
            self._counts[keys.LEAK_WARNINGS] += len(late)
        return late


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
