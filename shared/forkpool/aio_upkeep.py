"""The asyncio pool's maintainer: a task that refills with backoff, trims, reports leaks, publishes stats.

A mixin of ``AsyncPool``, split out for size; the same invariant holds: pool
state changes only between awaits, and is checked again after each one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from . import _base as keys
from .errors import ConnectError
from .maintenance import INTERVAL, next_backoff, stats_listeners
from .upkeep import sort_idle

if TYPE_CHECKING:
    from .connections import Entry
    from .settings import PoolSettings

logger = logging.getLogger("forkpool.pool")


class AsyncPoolUpkeep:
    # Provided by AsyncPool.
    settings: PoolSettings
    loop: asyncio.AbstractEventLoop
    _idle: deque[Entry]
    _in_use: dict[Any, Entry]
    _waiting: deque[tuple[asyncio.Future[Entry], float]]
    _opening: int
    _closed: bool
    _counts: dict[str, float]
    _wait_times: deque[float]
    _size_changed: asyncio.Event
    _last_connect_error: str
    _suspect_before: float
    _psycopg: Any

    if TYPE_CHECKING:  # implemented by AsyncPool

        def _size(self) -> int: ...
        def _hand_over(self, entry: Entry) -> None: ...
        def _describe(self, exc: BaseException) -> str: ...
        async def connect(self, timeout: float | None = None) -> Entry: ...

    def _init_upkeep(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._back = asyncio.Event()  # a caller connected: end a backoff early
        self._closing: set[asyncio.Task[None]] = set()  # background closes, awaited by close()

    @property
    def last_connect_error(self) -> str:
        return self._last_connect_error

    async def fill(self, deadline: float | None = None) -> bool:
        """Open connections up to the deficit; False on the first failure (the caller backs off)."""
        total = self._size() + self._opening
        waiting = sum(1 for f, _ in self._waiting if not f.done())
        wanted = (
            0 if self._closed else max(self.settings.min_size - total, min(waiting, self.settings.max_size - total), 0)
        )
        self._opening += wanted  # reserved before the first await
        for done in range(wanted):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._opening -= wanted - done
                return False
            try:
                entry = await self.connect(left)
            except self._psycopg.Error as exc:
                self._last_connect_error = self._describe(exc)
                self._connect_failed(wanted - done)
                return False
            except BaseException:
                self._opening -= wanted - done
                raise
            self._opening -= 1
            self._counts[keys.CONNECTIONS_OPENED] += 1
            if self._closed:
                self._counts[keys.CONNECTIONS_CLOSED] += 1
                await _close_quietly(entry.conn)
                continue
            self._hand_over(entry)
            self._size_changed.set()
        return True

    def _connect_failed(self, unopened: int) -> None:
        """A refill failed: with no connection open that could come back, waiting is futile."""
        self._opening -= unopened
        self._counts[keys.CONNECT_ERRORS] += 1
        if self._size() == 0:
            stranded, self._waiting = list(self._waiting), deque()
            for future, _ in stranded:
                if not future.done():
                    future.set_exception(ConnectError(f"{self!r}: cannot connect: {self._last_connect_error}"))

    def take_expired_idle(self) -> list[Entry]:
        """Idle connections past max_lifetime, past max_idle above min_size, or already ended by the
        kernel: removed, for closing (as the threaded pool's upkeep does)."""
        self._idle, dropped, dead = sort_idle(self._idle, self.settings, self._size())
        self._counts[keys.CONNECTIONS_CLOSED] += len(dropped)
        if dead:
            self._counts[keys.CONNECTIONS_DISCARDED] += dead
            self._suspect_before = time.monotonic()
        return dropped

    def drain_wait_times(self) -> list[float]:
        waits = list(self._wait_times)
        self._wait_times.clear()
        return waits

    def _report_leaks(self) -> None:
        limit = self.settings.leak_timeout
        if not limit:
            return
        now = time.monotonic()
        for entry in self._in_use.values():
            if not entry.leak_reported and now - entry.checked_out_at > limit:
                entry.leak_reported = True
                self._counts[keys.LEAK_WARNINGS] += 1
                stack = "".join(entry.checkout_stack or ["  (stack not recorded)\n"])
                logger.warning(
                    "%r: a connection has been checked out for %.1f s (leak_timeout %.1f s); checked out at:\n%s",
                    self,
                    now - entry.checked_out_at,
                    limit,
                    stack,
                )

    def _start_maintainer(self) -> None:
        if self._task is None and not self._closed:
            self._task = self.loop.create_task(self._maintain(), name=f"forkpool-maintainer[{self!r}]")

    def _wake_maintainer(self) -> None:
        self._wake.set()

    def _server_is_back(self) -> None:
        self._back.set()

    async def _stop_maintainer(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._publish()
        for _, forget in list(stats_listeners().values()):
            forget(self)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _forget_maintainer(self) -> None:
        # In a forked child: the task belongs to the parent's loop, which is not this process's.
        self._task = None
        self._closing = set()

    async def _maintain(self) -> None:
        backoff = 0.0
        while not self._closed:
            try:
                for entry in self.take_expired_idle():
                    await _close_quietly(entry.conn)
                filled = await self.fill()
                self._report_leaks()
                self._publish()
            except asyncio.CancelledError:
                raise
            except Exception:  # the task must outlive any one bad round
                logger.exception("%r: maintenance round failed", self)
                filled = False
            if filled:
                if backoff:
                    logger.info("%r: connected again", self)
                backoff = 0.0
                await _wait_event(self._wake, INTERVAL)
            else:
                backoff = next_backoff(backoff)
                logger.warning("%r: cannot connect: %s; retrying in %.1f s", self, self._last_connect_error, backoff)
                await _wait_event(self._back, backoff)
            self._wake.clear()
            self._back.clear()

    def _publish(self) -> None:
        for publish, _ in list(stats_listeners().values()):
            try:
                publish(self)
            except Exception:  # metrics are best effort
                logger.debug("%r: exporting metrics failed", self, exc_info=True)


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - it is gone either way
        pass
