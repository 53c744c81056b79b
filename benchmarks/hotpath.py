"""Where our getconn()/putconn() time goes, and what suggested changes would save.

    python -m benchmarks.hotpath                 # about a minute
    python -m benchmarks.hotpath --quick

Three parts, all on an embedded PostgreSQL (or DATABASE_URL):

1. the cost of each step of the hot path, timed alone (best of 5 timeit runs);
2. cProfile of checkout + return cycles (its own overhead inflates Python calls);
3. PROTOTYPES of suggested changes, as subclasses of forkpool.Pool defined here only to be
   measured (shared/ is not changed): checkout + return cost with 1 thread, and with 8
   threads on a pool of 5 (ns/op and fairness), interleaved and repeated, medians shown.
   They copy private internals of shared/pool.py at the time of writing; they are
   measuring instruments, not code to import. S1 (one-call return check), S2 (idle
   checkout in one lock section), S3 (no poll on handed-over connections), S4 (no poll
   for a connection back less than 1 ms) and S5 (a waiter sleeps on one lock created held,
   not a Condition; its wait is counted by the thread serving it) were adopted in shared/
   and are part of "ours"; what remains here is the change not adopted, for the reasons
   in BENCHMARKS.md: S6, bounded barging (Go's sync.Mutex
   "normal mode": a returned connection goes to the longest waiter only once it has
   waited 1 ms; until then the returning thread may take it back), which cuts the
   8-thread cost by half or more but drops fairness below 0.9.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import threading
import time
import timeit
from contextlib import ExitStack
from typing import Any

import psycopg2
import psycopg2.pool

import forkpool
from forkpool import _base as keys
from forkpool._drivers import Session, get_driver
from forkpool.errors import PoolTimeout
from forkpool.settings import build_settings

from .pool_bench import POOL_SIZE, THREADS, make_op, run_window

_monotonic = time.monotonic
# The pools here run on psycopg2 (the driver "" picks first), in the default session state.
_PSYCOPG2, _SESSION = get_driver("psycopg2"), Session()


def reset_for_reuse(conn: Any) -> bool:
    return _PSYCOPG2.reset_for_reuse(conn, _SESSION)


# -- prototypes of the suggestions ----------------------------------------------------------


class NoCheck(forkpool.Pool):
    """Floor: no pre-use check at all (not a suggestion: what the check costs)."""

    def _usable(self, entry: Any) -> bool:
        return True


class NudgeWaiter:
    """S6: a waiter (on a Condition) that can also be woken without a connection, to try the idle deque."""

    __slots__ = ("_cond", "entry", "error", "nudged", "started")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.entry: Any = None
        self.error: BaseException | None = None
        self.nudged = False
        self.started = _monotonic()

    def wait(self, timeout: float) -> Any:
        with self._cond:
            if self.entry is None and self.error is None and not self.nudged:
                self._cond.wait(timeout)
            if self.error is not None:
                raise self.error
            return self.entry

    def _wake(self, **state: Any) -> None:
        with self._cond:
            for name, value in state.items():
                setattr(self, name, value)
            self._cond.notify()

    def serve(self, entry: Any) -> None:
        self._wake(entry=entry)

    def fail(self, error: BaseException) -> None:
        self._wake(error=error)

    def nudge(self) -> None:
        self._wake(nudged=True)


class BargingMixin:
    """S6: hand a returned connection over only to a waiter that has waited HANDOFF_AFTER;
    otherwise it goes idle (the returning thread may take it back at once) and the longest
    waiter is woken to try for it. Waiters still queue FIFO."""

    HANDOFF_AFTER = 0.001

    def _enqueue(self) -> Any:
        waiter = NudgeWaiter()
        self._waiting.append(waiter)
        self._counts[keys.WAITS] += 1
        return waiter

    def putconn(self, conn: Any) -> None:
        entry = self._in_use.get(conn)
        if entry is None or not reset_for_reuse(conn) or self._closed:
            return super().putconn(conn)
        now = _monotonic()
        entry.returned_at = now
        with self._lock:
            del self._in_use[conn]
            waiting = self._waiting
            if waiting and now - waiting[0].started >= self.HANDOFF_AFTER:
                self._hand_over(entry)
                return
            self._idle.append(entry)
            if waiting and not waiting[0].nudged:
                waiting[0].nudge()

    def _wait_for(self, waiter: Any, deadline: float, wait: float) -> Any:
        while True:
            entry = waiter.wait(max(deadline - _monotonic(), 0.0))
            if entry is not None:
                return entry
            with self._lock:  # served, nudged or timed out: decided under the pool lock
                if waiter.entry is not None:
                    return waiter.entry
                if waiter.nudged and self._idle:
                    self._waiting.remove(waiter)
                    return self._lend(self._idle.pop())
                if _monotonic() < deadline:
                    waiter.nudged = False  # beaten to it: keep our place in the queue
                    continue
                self._waiting.remove(waiter)
                self._counts[keys.TIMEOUTS] += 1
            raise PoolTimeout(f"{self!r}: no connection free after {wait:.3g} s (prototype S6)")


def _variant(name: str, *mixins: type) -> type:
    return type(name, (*mixins, forkpool.Pool), {}) if mixins else forkpool.Pool


VARIANTS: dict[str, tuple[type, str]] = {
    "ours": (forkpool.Pool, "forkpool.Pool as it is (S1-S5 adopted)"),
    "nocheck": (NoCheck, "no pre-use check at all (floor, not a suggestion)"),
    "S6": (_variant("S6", BargingMixin), "bounded barging: hand over only after a 1 ms wait"),
}


# -- measurements ---------------------------------------------------------------------------


def step_costs(pool: forkpool.Pool) -> list[tuple[str, float]]:
    conn = pool.getconn()
    entry = pool._in_use[conn]
    pool.putconn(conn)
    lock = threading.Lock()
    counts = dict.fromkeys(keys.COUNTERS, 0)
    env = {
        "pool": pool,
        "entry": entry,
        "conn": conn,
        "lock": lock,
        "counts": counts,
        "keys": keys,
        "time": time,
        "reset_for_reuse": reset_for_reuse,
    }
    steps = [
        ("getconn() + putconn(), whole cycle", "pool.putconn(pool.getconn())"),
        ("pool._usable(entry) (time, suspect, poll)", "pool._usable(entry)"),
        ("  entry.socket_has_news() (poll(0) syscall, GIL released)", "entry.socket_has_news()"),
        ("pool._is_clean(conn) (putconn's one question: idle, session state)", "pool._is_clean(conn)"),
        ("reset_for_reuse(conn)", "reset_for_reuse(conn)"),
        ("  conn.info.transaction_status (new ConnectionInfo each time)", "conn.info.transaction_status"),
        ("  conn.get_transaction_status() (the same, one C call)", "conn.get_transaction_status()"),
        ("  conn.closed", "conn.closed"),
        ("with lock: pass (x2 per cycle)", "with lock: pass"),
        ("time.monotonic() (x3 per cycle)", "time.monotonic()"),
        ("counts[keys.CHECKOUTS] += 1", "counts[keys.CHECKOUTS] += 1"),
    ]
    found = []
    for label, stmt in steps:
        number = 20_000 if "cycle" in label else 100_000
        best = min(timeit.repeat(stmt, globals=env, number=number, repeat=5)) / number * 1e9
        found.append((label, best))
    return found


def profile(pool: forkpool.Pool, cycles: int) -> str:
    profiler = cProfile.Profile()
    getconn, putconn = pool.getconn, pool.putconn
    profiler.enable()
    for _ in range(cycles):
        putconn(getconn())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(
        line.replace(os.path.dirname(os.path.dirname(forkpool.__file__)) + "/", "")
        for line in lines[start:]
        if line.strip()
    )


def one_thread(pools: dict[str, Any], cycles: int, reps: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {name: [] for name in pools}
    names = list(pools)
    for _rep in range(reps):
        random.shuffle(names)
        for name in names:
            get, put = pools[name]
            started = time.perf_counter_ns()
            for _ in range(cycles):
                put(get())
            found[name].append((time.perf_counter_ns() - started) / cycles)
    return found


def eight_threads(
    pools: dict[str, Any], window: float, reps: int, kind: str = "checkout"
) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in pools}
    names = list(pools)
    for _rep in range(reps):
        random.shuffle(names)
        for name in names:
            get, put = pools[name]
            sample = run_window(make_op(kind, get, put), THREADS, window)
            found[name].append((sample.ns_per_op, sample.fairness or 0.0))
    return found


def _windowed_cells(found: dict[str, list[tuple[float, float]]], name: str) -> list[str]:
    if name not in found:
        return ["-", "-", "-"]
    ns = [ns for ns, _ in found[name]]
    ratio = statistics.median(a / b for a, b in zip(ns, (ns for ns, _ in found["ours"]), strict=False))
    return [f"{statistics.median(ns):,.0f}", f"{ratio:.2f}", f"{statistics.median(f for _, f in found[name]):.2f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    cycles, reps, window = (500, 2, 0.05) if args.quick else (5_000, 30, 0.4)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 180))
    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            from harness.services import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres(max_connections=100)).url
        pools: dict[str, Any] = {}
        for name, (cls, _) in VARIANTS.items():
            pool = cls(build_settings(dsn=dsn, min_size=POOL_SIZE, max_size=POOL_SIZE), f"hotpath-{name}")
            stack.callback(pool.close)
            pool.open(wait=True)
            pools[name] = (pool.getconn, pool.putconn)
        p2 = psycopg2.pool.ThreadedConnectionPool(POOL_SIZE, POOL_SIZE, dsn)
        stack.callback(p2.closeall)
        slots = threading.BoundedSemaphore(POOL_SIZE)

        def p2_get() -> Any:
            slots.acquire()
            return p2.getconn()

        def p2_put(conn: Any) -> None:
            p2.putconn(conn)
            slots.release()

        references = {"psycopg2 (bare)": (p2.getconn, p2.putconn), "psycopg2 + semaphore": (p2_get, p2_put)}
        try:
            import psycopg_pool

            p3 = psycopg_pool.ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True)
            stack.callback(p3.close)
            p3.wait()
            references["psycopg_pool"] = (p3.getconn, p3.putconn)
        except ImportError:
            pass

        first = pools["ours"][0].__self__  # the unchanged pool
        table = Table(title="1. hot-path steps timed alone (best of 5, ns)", title_justify="left")
        table.add_column("step")
        table.add_column("ns", justify="right")
        for label, ns in step_costs(first):
            table.add_row(label, f"{ns:,.0f}")
        console.print(table)

        console.print(f"[bold]2. cProfile, {cycles:,} getconn() + putconn() cycles, by own time[/]")
        console.print(profile(first, cycles), highlight=False, soft_wrap=True)

        everyone = {**pools, **references}
        for _ in range(2):  # warm-up
            one_thread(everyone, max(cycles // 10, 10), 1)
        single = one_thread(everyone, cycles, reps)
        # psycopg2's bare pool raises PoolError when 8 threads share 5 connections: 1 thread only.
        multi = eight_threads({k: v for k, v in everyone.items() if k != "psycopg2 (bare)"}, window, max(reps // 5, 2))
        with_query = eight_threads(
            {k: v for k, v in everyone.items() if k != "psycopg2 (bare)"}, window, max(reps // 5, 2), kind="select1"
        )
        base1 = single["ours"]
        table = Table(
            title=f"3. prototypes: checkout + return; 1 thread ({reps} x {cycles:,} cycles: best and "
            f"median) and {THREADS} threads on {POOL_SIZE} ({len(multi['ours'])} x {window} s: median), "
            "without and with SELECT 1; ratios to ours paired by repetition, median",
            title_justify="left",
        )
        for header in (
            "variant",
            "1 thread best ns",
            "median ns",
            "/ ours",
            "8 threads ns/op",
            "/ ours",
            "fairness",
            "8 threads + SELECT 1 ns/op",
            "/ ours",
            "fairness",
            "what",
        ):
            table.add_column(header, justify="left" if header in ("variant", "what") else "right")
        notes = {name: note for name, (_, note) in VARIANTS.items()}
        notes.update(
            {
                "psycopg2 (bare)": "reference: raises PoolError when exhausted",
                "psycopg2 + semaphore": "reference: as in pool_bench",
                "psycopg_pool": "reference",
            }
        )
        for name in everyone:
            ns1 = single[name]
            r1 = statistics.median(a / b for a, b in zip(ns1, base1, strict=False))
            table.add_row(
                name,
                f"{min(ns1):,.0f}",
                f"{statistics.median(ns1):,.0f}",
                f"{r1:.2f}",
                *_windowed_cells(multi, name),
                *_windowed_cells(with_query, name),
                notes.get(name, ""),
            )
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
