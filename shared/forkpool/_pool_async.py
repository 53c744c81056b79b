"""An asyncio PostgreSQL pool (psycopg 3 or asyncpg) owned by one process and one event loop.

The same semantics as the threaded ``Pool``, in asyncio terms. Every change to
the deques and counters happens in the loop's thread between two awaits, so no
lock is needed: that is the invariant, and nothing here mutates pool state
after an ``await`` without checking again. Callers that find no free
connection wait FIFO, each on a future of its own; connecting, checks,
rollbacks and closing happen outside any such section. A maintainer task
refills to ``min_size`` with backoff, trims and reports leaks. What the pool
decides it shares with the threaded pool (``_base.BasePool``); what differs
between psycopg 3 and asyncpg it asks its driver (``_drivers_async``).

Cancellation: a caller cancelled while waiting leaves the queue (or hands back
the connection it was served at that very moment); one cancelled while holding
a connection gets it rolled back and returned by ``connection()``, or discarded
when the cancelled query left it busy. No connection is lost, none handed out twice.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from . import stats as keys
from ._base import (
    INTERVAL,
    JUST_RETURNED,
    BasePool,
    Entry,
    format_checkout_stack,
    hook_name,
    live_pools,
    next_backoff,
    setup_left_dirty,
    stats_listeners,
)
from ._drivers_async import async_driver
from ._failover import PrimaryWatch, take_stale, wants_primary
from ._process import notice_fork, sentinel
from .errors import ConnectError, PoolClosed, PoolError, PoolTimeout, TooManyWaiting
from .settings import PoolSettings, describe_error, with_hooks

if TYPE_CHECKING:
    from ._base import Entry
    from .settings import PoolSettings

logger = logging.getLogger("forkpool.pool")
_monotonic = time.monotonic
_fork_sentinel = sentinel()  # read on every checkout: see _process.sentinel()


class AsyncPool(BasePool):
    """Connections to one server and database, for the coroutines of one event loop in one process."""

    def __init__(
        self,
        settings: PoolSettings,
        name: str = "default",
        *,
        configure: Callable[[Any], Any] | None = None,
        reset: Callable[[Any], Any] | None = None,
    ) -> None:
        """`configure` / `reset`: per-connection hooks, plain or coroutine functions (replacing the settings')."""
        settings = with_hooks(settings, configure, reset)
        self._driver = async_driver(settings.driver)  # asyncpg for "asyncpg", psycopg 3 for any other
        super().__init__(settings, name)
        self._is_clean = self._driver.clean_check(self.session)  # the return's one question, made once
        # A pool whose DSN asks for the primary drops connections to a server demoted under it (_failover.py).
        self._primary = PrimaryWatch(
            wants_primary(settings.dsn, settings.connect_kwargs) and not self.session.read_only
        )
        self.loop = asyncio.get_running_loop()
        self._waiting: deque[tuple[asyncio.Future[Entry], float]] = deque()  # (future, when it queued)
        self._size_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None  # the maintainer
        self._wake = asyncio.Event()
        self._back = asyncio.Event()  # a caller connected: end a backoff early
        self._closing: set[asyncio.Task[None]] = set()  # background closes, awaited by close()
        live_pools().add(self)  # the at-fork hook detaches it in a child, as it does the threaded pools

    # -- public API -----------------------------------------------------------------

    async def open(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Start the maintainer; with `wait`, fill to ``min_size`` first. True once full."""
        self._raise_if_unusable()
        if not wait:
            self._start_maintainer()
            return False
        deadline = _monotonic() + (self.settings.connect_timeout if timeout is None else timeout)
        filled = await self.fill(deadline)
        self._start_maintainer()
        return filled and await self.wait(max(deadline - _monotonic(), 0.0))

    async def wait(self, timeout: float) -> bool:
        """Until ``min_size`` connections are open, or `timeout` passes."""
        deadline = _monotonic() + timeout
        while self._size() < self.settings.min_size and not self._closed:
            left = deadline - _monotonic()
            if left <= 0:
                return False
            self._size_changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._size_changed.wait()
            except TimeoutError:
                return False
        return not self._closed

    async def getconn(self, timeout: float | None = None) -> Any:
        """Check a connection out; wait (FIFO) up to `timeout` seconds for a free one."""
        self._raise_if_unusable()
        wait = self.settings.timeout if timeout is None else timeout
        deadline = _monotonic() + wait
        while True:
            entry, fresh = await self._checkout(deadline, wait)
            try:
                if fresh or await self._usable(entry):
                    break
            except BaseException:
                # Cancelled mid-check: its SELECT 1 may still be running, so it cannot go back idle.
                self._retire(entry, broken=False, checked_out=False)
                raise
            self._retire(entry, broken=True, checked_out=False)
        if self.settings.leak_timeout:
            entry.checkout_stack = format_checkout_stack()
        return entry.conn

    async def putconn(self, conn: Any) -> None:
        """Give a connection back: rolled back if mid-transaction, discarded if broken or busy."""
        entry = self._in_use.get(conn)
        if entry is None:
            raise PoolError(f"{self!r}: putconn() of a connection not checked out from this pool")
        if self._return_if_clean(entry):
            return
        # The reset awaits: in a task of its own, so cancelling the caller cannot strand the connection.
        await asyncio.shield(self._background(self._reset_and_return(entry)))

    async def _reset_and_return(self, entry: Entry) -> None:
        reusable = await self._reset(entry.conn)
        if reusable and self.settings.reset is not None:
            reusable = await self._run_reset_hook(entry.conn)
        if reusable:
            self._return(entry)
        else:
            self._retire(entry, broken=True)

    async def _run_reset_hook(self, conn: Any) -> bool:
        """The user's ``reset`` on a returned, idle connection (awaited if it returns an awaitable)."""
        hook = self.settings.reset
        try:
            result = hook(conn)  # type: ignore[misc]  # checked by the caller
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - any failure of the hook discards the connection
            logger.warning(
                "%r: reset hook %s failed, connection discarded: %s",
                self,
                hook_name(hook),
                self._describe(exc) if isinstance(exc, self._driver.Error) else type(exc).__name__,
            )
            return False
        if self._driver.in_transaction(conn):
            logger.warning("%r: reset hook %s left a transaction open: connection discarded", self, hook_name(hook))
            return False
        return self._is_clean(conn) or await self._reset(conn)

    def _return_if_clean(self, entry: Entry) -> bool:
        """The common return, with no await: idle and in the pool's session state, and no reset hook
        to run. False: it needs a reset."""
        conn = entry.conn
        if self.settings.reset is not None or not self._is_clean(conn):
            return False
        self._return(entry)
        return True

    def _return(self, entry: Entry) -> None:
        now = _monotonic()
        if self._primary.enabled and self._primary.check(entry.conn, entry.created_at):
            self._retire(entry, broken=True)
            self._drop_demoted_idle()
            return
        if now >= entry.expires_at or self._closed:
            self._retire(entry, broken=False)
            return
        entry.returned_at = now
        del self._in_use[entry.conn]
        self._hand_over(entry)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """A connection for a block, always returned. psycopg 3: committed on success, rolled back on error or
        cancellation. asyncpg: neither (it opens no transaction; one left open is rolled back on return)."""
        conn = await self.getconn(timeout)
        try:
            yield conn
        except BaseException as exc:
            rollback = self._driver.rollback
            if rollback is not None:
                await _quietly(rollback(conn))
            if self._primary.enabled:
                self._primary.check(conn, 0.0, exc)  # a 25006 from a server too old to report read-only
            raise
        else:
            commit = self._driver.commit
            if commit is not None:
                await commit(conn)
        finally:
            entry = self._in_use.get(conn)
            # The common return has no await, so no cancellation can interrupt it; putconn()
            # shields a reset: a second cancellation must not lose the connection.
            if entry is not None and not self._return_if_clean(entry):
                await self.putconn(conn)

    def stats(self) -> dict[str, Any]:
        """A snapshot with the keys of ``forkpool.stats``, as the threaded pool's."""
        return self._snapshot(sum(1 for f, _ in self._waiting if not f.done()))

    async def close(self) -> None:
        """Close idle connections now, in-use ones as they come back; waiters get PoolClosed."""
        if self._closed:
            return
        self._closed = True
        idle, self._idle = list(self._idle), deque()
        self._counts[keys.CONNECTIONS_CLOSED] += len(idle)
        waiters, self._waiting = list(self._waiting), deque()
        self._size_changed.set()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(PoolClosed(f"{self!r} was closed while waiting"))
        await self._stop_maintainer()
        for entry in idle:
            await _quietly(self._driver.close(entry.conn))

    _kind = "AsyncPool"

    def _drop_inherited(self, conn: Any) -> None:
        self._driver.drop_without_io(conn)  # asyncpg's needs its own (see _drivers_async)

    def detach_after_fork(self) -> None:
        """In a forked child: drop every connection with no I/O and no lock (the at-fork hook). Idempotent."""
        if self._inherited:
            return
        self._let_go_after_fork()
        self._waiting = deque()
        self._forget_maintainer()

    # -- checkout ---------------------------------------------------------------------

    async def _checkout(self, deadline: float, wait: float) -> tuple[Entry, bool]:
        self._raise_if_unusable()
        if self._idle:
            return self._lend(self._idle.pop()), False
        if self._size() + self._opening < self.settings.max_size:
            self._opening += 1  # capacity reserved before the first await
            return await self._open_for_caller(deadline), True
        return await self._wait_in_line(deadline, wait), True

    async def _wait_in_line(self, deadline: float, wait: float) -> Entry:
        limit = self.settings.max_waiting
        if limit:  # counted only when there is a limit: with many waiters the count costs (BENCHMARKS.md part 3)
            queued = sum(1 for f, _ in self._waiting if not f.done())
            if queued >= limit:
                raise TooManyWaiting(f"{self!r}: {queued} callers already waiting (max_waiting={limit})")
        future: asyncio.Future[Entry] = self.loop.create_future()
        now = _monotonic()
        self._waiting.append((future, now))
        self._counts[keys.WAITS] += 1
        # One timer per wait, not an asyncio.timeout() block: that costs a third of a contended
        # acquire (BENCHMARKS.md, part 2, the ASGI tier). The timer fails the future only if it is
        # still unserved when it fires, so a connection is never both served and timed out.
        timer = self.loop.call_later(max(deadline - now, 0.0), self._expire, future, wait)
        try:
            return await future
        except asyncio.CancelledError:
            if _served(future):
                self._give_back_served(future.result())  # it never reached the cancelled caller
            else:
                self._leave(future)
            raise
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[Entry], wait: float) -> None:
        if future.done():
            return  # served, cancelled or failed first
        self._leave(future)
        self._counts[keys.TIMEOUTS] += 1
        future.set_exception(
            PoolTimeout(
                f"{self!r}: no connection free after {wait:.3g} s "
                f"(max_size {self.settings.max_size}, {len(self._in_use)} in use)"
            )
        )

    def _leave(self, future: asyncio.Future[Entry]) -> None:
        for item in self._waiting:
            if item[0] is future:
                self._waiting.remove(item)
                self._count_wait(_monotonic() - item[1])
                return

    def _give_back_served(self, entry: Entry) -> None:
        del self._in_use[entry.conn]
        self._checkouts -= 1
        self._hand_over(entry)

    def _hand_over(self, entry: Entry) -> None:
        """The longest waiter still waiting gets `entry`, else it goes idle. No await in here."""
        while self._waiting:
            future, queued_at = self._waiting.popleft()
            if future.done():
                continue  # cancelled or timed out: it left
            self._lend(entry)
            self._count_wait(entry.checked_out_at - queued_at)
            future.set_result(entry)
            return
        self._idle.append(entry)

    async def _open_for_caller(self, deadline: float) -> Entry:
        try:
            entry = await self.connect(max(deadline - _monotonic(), 0.0))
        except BaseException as exc:
            self._opening -= 1
            if isinstance(exc, self._driver.Error):
                self._counts[keys.CONNECT_ERRORS] += 1
                raise ConnectError(f"{self!r}: cannot connect: {self._describe(exc)}") from None
            raise
        self._opening -= 1
        self._counts[keys.CONNECTIONS_OPENED] += 1
        self._server_is_back()
        if not self._closed:
            self._size_changed.set()
            return self._lend(entry)
        self._counts[keys.CONNECTIONS_CLOSED] += 1
        await _quietly(self._driver.close(entry.conn))
        raise PoolClosed(f"{self!r} was closed while connecting")

    async def connect(self, timeout: float | None = None) -> Entry:
        """Open one connection, named after this process, in the pool's session state; raises the driver's
        errors (``self._driver.Error``)."""
        seconds = self.settings.connect_timeout if timeout is None else min(timeout, self.settings.connect_timeout)
        conn = await self._driver.connect(self.settings, self.session, seconds)
        try:
            await self._set_up(conn)
            return Entry(conn, self.settings.max_lifetime, self._driver.socket_fd(conn))
        except BaseException:
            await _quietly(self._driver.close(conn))
            raise

    async def _set_up(self, conn: Any) -> None:
        """A new connection, in the session state already: the ``configure`` hook, which must leave it so."""
        hook = self.settings.configure
        if hook is None:
            return
        failed = self._driver.SetupFailed
        try:
            result = hook(conn)
            if inspect.isawaitable(result):
                await result
        except self._driver.Error as exc:
            raise failed(f"configure hook {hook_name(hook)} failed: {describe_error(exc)}") from exc
        except Exception as exc:
            raise failed(
                f"configure hook {hook_name(hook)} failed: {type(exc).__name__}: {describe_error(exc)}"
            ) from exc
        if not self._is_clean(conn):
            raise failed(setup_left_dirty(hook, self._driver.in_transaction(conn)))

    async def _usable(self, entry: Entry) -> bool:
        if self._primary.enabled and self._primary.stale(entry.conn, entry.created_at):
            return False  # on a server seen demoted since it was opened: the primary changed
        ended = self._driver.ended
        if ended is not None and ended(entry.conn):
            return False  # asyncpg read the server's goodbye while it sat idle: no news left on the socket
        idle_for = entry.checked_out_at - entry.returned_at
        if (
            idle_for < self.settings.check_idle
            and entry.verified_at >= self._suspect_before
            and (idle_for < JUST_RETURNED or not entry.socket_has_news())
        ):
            return True
        self._counts[keys.CHECKS] += 1
        try:
            await self._driver.ping(entry.conn)
        except self._driver.Error:
            return False
        entry.verified_at = _monotonic()
        return True

    async def _reset(self, conn: Any) -> bool:
        return await self._driver.reset(conn, self.session)

    def _retire(self, entry: Entry, broken: bool, checked_out: bool = True) -> None:
        """Close a lent connection for good (in the background); the maintainer replaces it."""
        self._forget_retired(entry, broken, checked_out)
        if broken:
            logger.info("%r: discarded a broken connection", self)
        self._size_changed.set()
        self._background(_quietly(self._driver.close(entry.conn)))
        self._wake_maintainer()

    def _drop_demoted_idle(self) -> None:
        """Close the idle siblings of a connection found on a demoted server (as the threaded pool's)."""
        stale = take_stale(self._idle, self._primary)
        self._counts[keys.CONNECTIONS_CLOSED] += len(stale)
        self._counts[keys.CONNECTIONS_DISCARDED] += len(stale)
        for entry in stale:
            self._background(_quietly(self._driver.close(entry.conn)))
        if stale:
            logger.info("%r: closed %d idle connections to a demoted server", self, len(stale))
            self._size_changed.set()
            self._wake_maintainer()

    def _background(self, coro: Any) -> asyncio.Task[None]:
        """A task held until it ends (the loop keeps only weak references); close() awaits those left."""
        task = self.loop.create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    def _raise_if_unusable(self) -> None:
        if not _fork_sentinel[0]:
            notice_fork()  # a fork no Python hook saw: the process releases what it inherited, this pool too
        if self._inherited:
            raise PoolClosed(f"{self!r} belongs to process {self.pid}, not {os.getpid()} (inherited across fork)")
        if self._closed:
            raise PoolClosed(f"{self!r} is closed")

    async def fill(self, deadline: float | None = None) -> bool:
        """Open connections up to the deficit; False on the first failure (the caller backs off)."""
        wanted = self._reserve_deficit(sum(1 for f, _ in self._waiting if not f.done()))  # before the first await
        for done in range(wanted):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._opening -= wanted - done
                return False
            try:
                entry = await self.connect(left)
            except self._driver.Error as exc:
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
                await _quietly(self._driver.close(entry.conn))
                continue
            self._hand_over(entry)
            self._size_changed.set()
        return True

    def _connect_failed(self, unopened: int) -> None:
        """A refill failed: with no connection open that could come back, waiting is futile."""
        for future, _ in self._strand_after_failed_refill(unopened, self._waiting):
            if not future.done():
                future.set_exception(ConnectError(f"{self!r}: cannot connect: {self._last_connect_error}"))

    def take_expired_idle(self) -> list[Entry]:
        """Idle connections past max_lifetime, past max_idle above min_size, or already ended by the
        kernel: removed, for closing (as the threaded pool's upkeep does); with asyncpg, also those it
        already knows ended (see AsyncDriver.ended)."""
        ended = self._driver.ended
        if ended is None or not any(ended(entry.conn) for entry in self._idle):
            return self._take_expired_idle()
        gone = [entry for entry in self._idle if ended(entry.conn)]
        self._idle = deque(entry for entry in self._idle if not ended(entry.conn))
        self._counts[keys.CONNECTIONS_CLOSED] += len(gone)
        self._counts[keys.CONNECTIONS_DISCARDED] += len(gone)
        self._suspect_before = _monotonic()  # the others may be gone too: checked before reuse
        return gone + self._take_expired_idle()

    def drain_wait_times(self) -> list[float]:
        return self._drain_wait_times()

    def _report_leaks(self) -> None:
        limit = self.settings.leak_timeout
        now = time.monotonic()
        for entry in self._take_overdue_checkouts():
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
                    await _quietly(self._driver.close(entry.conn))
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


def _served(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - a dying connection may fail any way; it is gone either way
        pass


# -- upkeep: the maintainer task -----------------------------------------------------------------------------
# The asyncio pool's maintainer: a task that refills with backoff, trims, reports leaks, publishes stats.
#
# A mixin of ``AsyncPool``, split out for size; the same invariant holds: pool
# state changes only between awaits, and is checked again after each one.

logger = logging.getLogger("forkpool.pool")


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
