"""Where forkpool's time goes on psycopg 3: cProfile of the threaded pool (driver="psycopg", psycopg2
alongside for reference) and of the asyncio pool, on the loops pool_bench and aio_bench time.

    python -m benchmarks.psycopg3_profile            # ~30 s; results/psycopg3_profile_<UTC>.txt
    python -m benchmarks.psycopg3_profile --quick

Then two prototypes of changes to forkpool.AsyncPool's queued checkout, subclasses defined
here only to be measured (the library is not changed): P1 counts the queue for max_waiting
only when a limit is set (the stock pool scans every waiter on every wait); P2, on top of P1,
times a wait with one loop.call_at handle instead of an ``asyncio.timeout`` block. They run
against the stock pool with 50 and 500 tasks, in interleaved windows, ratios paired per round,
with a second stock pool (stock_b) as the A/A control.

Each case is timed bare first (ns/op, best of 3), then run once under cProfile; the report lists
the functions with the most own time (tottime) and the share of the operation spent in
forkpool's own code (shared/forkpool), in the driver (psycopg, psycopg2) and in asyncio.
A profiler inflates small Python functions: read the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .aio_contenders import POOL_SIZE, psycopg_transaction
from .aio_scenarios import TASKS
from .aio_scenarios import make_op as aio_make_op
from .aio_scenarios import run_ops as aio_run_ops
from .aio_scenarios import run_window as aio_run_window
from .machine import save_text_result
from .scenarios import make_op, run_ops

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
GROUPS = {
    "forkpool": os.sep + "forkpool" + os.sep,
    "psycopg (3)": os.sep + "psycopg" + os.sep,
    "psycopg2": os.sep + "psycopg2" + os.sep,
    "asyncio": os.sep + "asyncio" + os.sep,
}


def shares(stats: pstats.Stats) -> dict[str, float]:
    """Own time per group of files, as a fraction of all own time."""
    total = sum(row[2] for row in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    found = dict.fromkeys([*GROUPS, "other"], 0.0)
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        group = next((g for g, marker in GROUPS.items() if marker in filename), "other")
        if filename == "~":  # a C function: psycopg2's methods, psycopg 3's compiled part (psycopg_binary)
            group = (
                "psycopg2"
                if "psycopg2." in name
                else "psycopg (3)"
                if "psycopg_binary" in name or "psycopg_c" in name
                else "other"
            )
        found[group] += row[2]
    return {g: t / total for g, t in found.items()}


def report(title: str, ns_per_op: float, profile: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    parts = ", ".join(f"{g} {100 * v:.0f} %" for g, v in shares(stats).items() if v >= 0.005)
    body = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    return f"\n== {title}: {ns_per_op:,.0f} ns/op unprofiled; own time: {parts}\n{body}\n"


def threaded(dsn: str, stack: ExitStack, ops: int, top: int) -> list[str]:
    import forkpool
    from forkpool.settings import build_settings

    sections = []
    for driver in ("psycopg", "psycopg2"):
        pool = forkpool.Pool(
            build_settings(dsn=dsn, driver=driver, min_size=POOL_SIZE, max_size=POOL_SIZE), f"profile-{driver}"
        )
        stack.callback(pool.close)
        pool.open(wait=True)
        for kind, n in (("checkout", ops), ("select1", max(ops // 40, 50))):
            op = make_op(kind, pool.getconn, pool.putconn)
            run_ops(op, n // 5)  # warm: prepared statements, caches
            best = min(run_ops(op, n).ns_per_op for _ in range(3))
            profile = cProfile.Profile()
            profile.runcall(run_ops, op, n)
            sections.append(report(f"forkpool.Pool, driver={driver!r}, {kind}, 1 thread, {n} ops", best, profile, top))
    return sections


def prototypes() -> dict[str, type]:
    """P1 and P2 (see the module's docstring): forkpool.AsyncPool subclasses, measuring instruments only."""
    import forkpool
    from forkpool import _base as keys
    from forkpool._pool_async import _served
    from forkpool.errors import PoolTimeout, TooManyWaiting

    monotonic = time.monotonic

    class P1(forkpool.AsyncPool):
        async def _wait_in_line(self, deadline: float, wait: float) -> Any:
            limit = self.settings.max_waiting
            if limit:  # the scan only when there is a limit to check
                queued = sum(1 for f, _ in self._waiting if not f.done())
                if queued >= limit:
                    raise TooManyWaiting(f"{self!r}: {queued} callers already waiting (max_waiting={limit})")
            future = self.loop.create_future()
            self._waiting.append((future, monotonic()))
            self._counts[keys.WAITS] += 1
            return await self._await_served(future, deadline, wait)

        async def _await_served(self, future: Any, deadline: float, wait: float) -> Any:
            try:
                async with asyncio.timeout(max(deadline - monotonic(), 0.0)):
                    return await future
            except TimeoutError:
                if _served(future):
                    return future.result()
                self._leave(future)
                self._counts[keys.TIMEOUTS] += 1
                raise PoolTimeout(f"{self!r}: no connection free after {wait:.3g} s") from None
            except asyncio.CancelledError:
                if _served(future):
                    self._give_back_served(future.result())
                else:
                    self._leave(future)
                raise

    def expire(future: Any) -> None:
        if not future.done():
            future.set_exception(TimeoutError())

    class P2(P1):
        async def _await_served(self, future: Any, deadline: float, wait: float) -> Any:
            handle = self.loop.call_later(max(deadline - monotonic(), 0.0), expire, future)
            try:
                return await future
            except TimeoutError:
                self._leave(future)
                self._counts[keys.TIMEOUTS] += 1
                raise PoolTimeout(f"{self!r}: no connection free after {wait:.3g} s") from None
            except asyncio.CancelledError:
                if _served(future):
                    self._give_back_served(future.result())
                else:
                    self._leave(future)
                raise
            finally:
                handle.cancel()

    return {"stock": forkpool.AsyncPool, "stock_b": forkpool.AsyncPool, "P1": P1, "P2": P2}  # stock_b: A/A


async def measure_prototypes(dsn: str, window: float, rounds: int, tasks: int) -> str:
    """`tasks` tasks, acquire + yield + release: each prototype against the stock pool, interleaved, paired."""
    from forkpool.settings import build_settings

    from .aio_contenders import AioContender

    pools = {}
    try:
        for name, cls in prototypes().items():
            pool = cls(
                build_settings(dsn=dsn, driver="psycopg", min_size=POOL_SIZE, max_size=POOL_SIZE), f"proto-{name}"
            )
            pools[name] = pool
            await pool.open(wait=True)
        ops = {
            name: aio_make_op(
                "checkout", AioContender(name, "ours", "", p.getconn, p.putconn, psycopg_transaction), True
            )
            for name, p in pools.items()
        }
        for op in ops.values():
            await aio_run_window(op, tasks, window / 4)  # warm
        ns: dict[str, list[float]] = {name: [] for name in ops}
        rng = random.Random(1)
        for _ in range(rounds):
            order = list(ops)
            rng.shuffle(order)
            for name in order + order[::-1]:
                ns[name].append((await aio_run_window(ops[name], tasks, window)).ns_per_op)
        per_round = {name: [sum(v[i : i + 2]) / 2 for i in range(0, len(v), 2)] for name, v in ns.items()}
    finally:
        for pool in pools.values():
            await pool.close()
    lines = [
        f"\n== prototypes: acquire + yield + release, {tasks} tasks on {POOL_SIZE}, {rounds} rounds of 2 windows "
        f"of {window} s each, shuffled; ratio to stock paired per round"
    ]
    for name, values in per_round.items():
        ratios = [a / b for a, b in zip(values, per_round["stock"], strict=False)]
        lines.append(
            f"{name:8} {statistics.median(values):>10,.0f} ns/op (min {min(values):,.0f}, max {max(values):,.0f})"
            f"  / stock: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
    return "\n".join(lines) + "\n"


async def asynchronous(dsn: str, ops: int, window: float, top: int) -> list[str]:
    import forkpool
    from forkpool.settings import build_settings

    from .aio_contenders import AioContender

    pool = forkpool.AsyncPool(
        build_settings(dsn=dsn, driver="psycopg", min_size=POOL_SIZE, max_size=POOL_SIZE), "profile-aio"
    )
    sections = []
    try:
        await pool.open(wait=True)
        contender = AioContender("ours", "ours", "", pool.getconn, pool.putconn, psycopg_transaction, pool=pool)
        cases: list[tuple[str, Callable[[], Any]]] = [
            (
                f"forkpool.AsyncPool, checkout, 1 task, {ops} ops",
                lambda: aio_run_ops(aio_make_op("checkout", contender, False), ops),
            ),
            (
                f"forkpool.AsyncPool, checkout + yield, {TASKS} tasks, {window} s window",
                lambda: aio_run_window(aio_make_op("checkout", contender, True), TASKS, window),
            ),
            (
                f"forkpool.AsyncPool, BEGIN/SELECT 1/COMMIT, 1 task, {max(ops // 40, 50)} ops",
                lambda: aio_run_ops(aio_make_op("select1", contender, False), max(ops // 40, 50)),
            ),
        ]
        for title, case in cases:
            await case()  # warm
            best = min([(await case()).ns_per_op for _ in range(3)])
            profile = cProfile.Profile()
            profile.enable()
            await case()
            profile.disable()
            sections.append(report(title, best, profile, top))
    finally:
        await pool.close()
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.psycopg3_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=14, help="functions listed per case (default 14)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    ops, window = (500, 0.05) if args.quick else (20_000, 0.4)
    started = datetime.now(UTC)
    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            from harness.services import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres(max_connections=50)).url
        load = os.getloadavg()
        sections = threaded(dsn, stack, ops, args.top)
        sections += asyncio.run(asynchronous(dsn, ops, window, args.top))
        for tasks, rounds in ((TASKS, 3 if args.quick else 10), (10 * TASKS, 2 if args.quick else 6)):
            sections.append(asyncio.run(measure_prototypes(dsn, window, rounds, tasks)))
    head = (
        f"psycopg3_profile {started:%Y-%m-%dT%H:%M:%SZ}: Python {sys.version.split()[0]}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in load)}, at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    text = head + "".join(sections)
    save_text_result(args.out, "psycopg3_profile", started, text, label="written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
