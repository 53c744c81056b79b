"""Where forkpool's psycopg2 checkout + return spends its time, in thread CPU time, and what changes would save.

    python -m benchmarks.hotpath_profile             # ~1 min
    python -m benchmarks.hotpath_profile --quick

The thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not the wall clock: on a shared machine a thread
that is not scheduled does not count, so the figures hold up under load better than the wall
clock's (still inflated by cache and frequency effects; read the ratios). Four parts, one thread,
on an embedded PostgreSQL (or DATABASE_URL):

1. getconn() + putconn() of ours against psycopg2's ThreadedConnectionPool (bare and behind the
   semaphore pool_bench uses) and psycopg_pool, interleaved, median of the repetitions;
2. each step of ours' path timed alone (best of 5);
3. cProfile of ours' cycles, by own time, with each function's share;
4. VARIANTS of the pool, as subclasses of forkpool.Pool defined here only to be measured (measuring
   instruments that copy private internals, not code to import): the checkout as it was before the
   hot-path change, and a diagnostic return check; against the stock pool, interleaved, ratios
   paired by repetition.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import forkpool
from forkpool._base import Entry
from forkpool._process import sentinel as fork_sentinel

from .machine import load_average, run_context_line, save_text_result

POOL_SIZE = 5
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
_thread_ns = time.thread_time_ns
_monotonic = time.monotonic
_getpid = os.getpid


# -- variants (measuring instruments: copies of forkpool.Pool's private hot path, changed) -----------------


class Before(forkpool.Pool):
    """The checkout as it was before the hot-path change (8e02f54): a getpid() system call for the fork
    check, then _take_idle() and _usable() as calls, settings read through the settings object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counts_before = {"checkouts": 0}

    def getconn(self, timeout: float | None = None) -> Any:
        if self.pid != _getpid():
            return super().getconn(timeout)  # the rare paths stay the stock pool's
        if self._maintainer.paused:
            self._maintainer.resume()
        entry = self._take_idle()
        if entry is None or not self._usable(entry):
            if entry is not None:
                self._retire(entry, broken=True, checked_out=False)
            entry = self._checkout_slow(timeout)
        if self.settings.leak_timeout:
            return super().getconn(timeout)  # not measured here
        return entry.conn

    def _take_idle(self) -> Any:
        with self._lock:
            if self._idle and not self._closed:
                entry = self._idle.pop()
                entry.checked_out_at = self.last_active = _monotonic()
                entry.leak_reported = False
                self._in_use[entry.conn] = entry
                self._counts_before["checkouts"] += 1  # the count as it was: a dict entry
                return entry
        return None


class StatusOnlyReturn(forkpool.Pool):
    """C (diagnostic): putconn()'s one question reduced to the transaction status and autocommit (main
    before the session-state change 910212f): what comparing all four session settings costs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        idle, autocommit = self.driver._idle, self.session.autocommit
        self._is_clean = lambda conn: conn.get_transaction_status() == idle and conn.autocommit is autocommit


VARIANTS: dict[str, tuple[type, str]] = {
    "ours": (forkpool.Pool, "forkpool.Pool as it is"),
    "before": (Before, "getpid() check, _take_idle() and _usable() calls (8e02f54)"),
    "C_status_only": (StatusOnlyReturn, "C (diagnostic): putconn() asks status + autocommit only"),
}


# -- measurements ------------------------------------------------------------------------------------------


def cycles_cpu(contenders: dict[str, tuple[Any, Any]], cycles: int, reps: int) -> dict[str, list[float]]:
    """Thread CPU ns per getconn() + putconn(), per repetition, the contenders shuffled each time."""
    found: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for _ in range(reps):
        random.shuffle(names)
        for name in names:
            get, put = contenders[name]
            started = _thread_ns()
            for _ in range(cycles):
                put(get())
            found[name].append((_thread_ns() - started) / cycles)
    return found


def table(found: dict[str, list[float]], reference: str, notes: dict[str, str]) -> str:
    lines = [f"{'contender':<24} {'CPU ns median':>14} {'best':>8} {'/ ' + reference + ' (paired)':>22}  what"]
    for name, values in found.items():
        ratios = [a / b for a, b in zip(values, found[reference], strict=True)]
        lines.append(
            f"{name:<24} {statistics.median(values):>14,.0f} {min(values):>8,.0f} "
            f"{statistics.median(ratios):>9.3f} ({min(ratios):.2f}-{max(ratios):.2f})  {notes.get(name, '')}"
        )
    return "\n".join(lines)


def step_costs(pool: forkpool.Pool) -> str:
    conn = pool.getconn()
    entry = pool._in_use[conn]
    lock = threading.Lock()
    counts = {"checkouts": 0}
    env = {"pool": pool, "entry": entry, "conn": conn, "lock": lock, "counts": counts, "os": os, "time": time}
    env["sentinel"] = fork_sentinel()
    # _usable() reads the entry's times: one returned just before its checkout (the busy pool's case, no
    # poll), and a copy made to look back for 10 ms (a poll; a fresh Entry: the maintainer never sees it).
    entry.returned_at = entry.checked_out_at
    stale = Entry(conn, 0)
    stale.returned_at, stale.checked_out_at, stale.verified_at = 0.0, 0.01, entry.verified_at
    env["stale"] = stale
    steps = [
        ("_fork_sentinel[0] (getconn's fork check)", "sentinel[0]"),
        ("os.getpid() (the fork check before: a system call)", "os.getpid()"),
        ("pool._maintainer.paused", "pool._maintainer.paused"),
        ("pool._usable(entry), back < 1 ms: no poll", "pool._usable(entry)"),
        ("pool._usable(entry), back >= 1 ms: poll(0) on its socket", "pool._usable(stale)"),
        ("pool._is_clean(conn) (status + 4 session settings)", "pool._is_clean(conn)"),
        ("  conn.get_transaction_status()", "conn.get_transaction_status()"),
        ("  conn.autocommit", "conn.autocommit"),
        ("  conn.isolation_level", "conn.isolation_level"),
        ("  conn.readonly", "conn.readonly"),
        ("  conn.deferrable", "conn.deferrable"),
        ("pool.settings.leak_timeout", "pool.settings.leak_timeout"),
        ("pool._in_use.get(conn)", "pool._in_use.get(conn)"),
        ("with lock: pass (x2 per cycle)", "with lock: pass"),
        ("time.monotonic() (x2 per cycle)", "time.monotonic()"),
        ('counts["checkouts"] += 1 (the count before: a dict entry)', 'counts["checkouts"] += 1'),
        ("pool._checkouts += 1 (the count now: an int attribute)", "pool._checkouts += 1"),
        ("an empty method call (pool.closed property)", "pool.closed"),
    ]
    lines = [f"{'step':<56} {'CPU ns':>8}"]
    for label, stmt in steps:
        timer = timeit.Timer(stmt, globals=env, timer=time.thread_time)
        best = min(timer.repeat(repeat=5, number=50_000)) / 50_000 * 1e9
        lines.append(f"{label:<56} {best:>8,.0f}")
    pool.putconn(conn)
    return "\n".join(lines)


def profile(pool: forkpool.Pool, cycles: int) -> str:
    profiler = cProfile.Profile(time.thread_time)
    getconn, putconn = pool.getconn, pool.putconn
    profiler.enable()
    for _ in range(cycles):
        putconn(getconn())
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)  # type: ignore[attr-defined]
    root = os.path.dirname(os.path.dirname(forkpool.__file__)) + "/"
    lines = [f"{'own time %':>10} {'calls':>9} {'own ns/call':>12}  function"]
    for (filename, line, name), (_, calls, own, _, _) in rows[:14]:
        where = f"{filename.replace(root, '')}:{line}({name})" if line else name
        lines.append(f"{100 * own / total:>9.1f}% {calls:>9,} {own / calls * 1e9:>12,.0f}  {where}")
    out = io.StringIO()
    out.write("\n".join(lines))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    cycles, reps, profiled = (300, 3, 3_000) if args.quick else (5_000, 41, 100_000)
    started_at, load_start = datetime.now(UTC), load_average()
    import psycopg2.pool
    import psycopg_pool

    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            from harness.services import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres(max_connections=100)).url
        pools: dict[str, Any] = {}
        for name, (cls, _) in VARIANTS.items():
            settings = forkpool.configure(
                f"hp-{name}", dsn=dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, driver="psycopg2"
            )
            pool = cls(settings, f"hp-{name}")
            stack.callback(pool.close)
            pool.open(wait=True)
            pools[name] = pool
        p2 = psycopg2.pool.ThreadedConnectionPool(POOL_SIZE, POOL_SIZE, dsn)
        stack.callback(p2.closeall)
        slots = threading.BoundedSemaphore(POOL_SIZE)

        def p2_get() -> Any:
            slots.acquire()
            return p2.getconn()

        def p2_put(conn: Any) -> None:
            p2.putconn(conn)
            slots.release()

        p3 = psycopg_pool.ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True)
        stack.callback(p3.close)
        p3.wait()
        peers = {
            "ours": (pools["ours"].getconn, pools["ours"].putconn),
            "psycopg2 (bare)": (p2.getconn, p2.putconn),
            "psycopg2 + semaphore": (p2_get, p2_put),
            "psycopg_pool": (p3.getconn, p3.putconn),
        }
        prototypes = {name: (pool.getconn, pool.putconn) for name, pool in pools.items()}
        cycles_cpu({**peers, **prototypes}, max(cycles // 10, 10), 2)  # warm-up
        against_peers = cycles_cpu(peers, cycles, reps)
        steps = step_costs(pools["ours"])
        prof = profile(pools["ours"], profiled)
        against_stock = cycles_cpu(prototypes, cycles, reps)
    notes = {name: note for name, (_, note) in VARIANTS.items()}
    notes.update({"psycopg2 + semaphore": "as in pool_bench and the guard", "psycopg2 (bare)": "raises when exhausted"})
    text = "\n\n".join(
        [
            f"# hotpath_profile: {reps} repetitions x {cycles:,} cycles, thread CPU time"
            + (" (--quick: figures meaningless)" if args.quick else ""),
            run_context_line(load_start, None, quick=args.quick),
            "1. getconn() + putconn(), 1 thread, against the peers\n" + table(against_peers, "ours", notes),
            "2. ours' steps timed alone (best of 5 x 50,000, thread CPU ns)\n" + steps,
            f"3. cProfile of {profiled:,} cycles of ours (thread CPU time; the profiler inflates each Python call, "
            "read the shares)\n" + prof,
            "4. variants against the stock pool\n" + table(against_stock, "ours", notes),
        ]
    )
    save_text_result(args.out, "hotpath_profile", started_at, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
