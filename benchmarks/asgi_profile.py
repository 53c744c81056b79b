"""What the ASGI bench's pool costs a request over the floor's asyncio.Lock, without HTTP or a query.

    python -m benchmarks.asgi_profile            # ~1 min; results/asgi_profile_<UTC>.txt
    python -m benchmarks.asgi_profile --quick    # seconds: does it still run? (figures meaningless)

suite_bench's asgi tier reads the pool against the floor through HTTP on a shared machine, where
a few per cent are inside the noise. This isolates the one thing that differs: with 8 tasks
on one connection (as each asgi worker serves 8 of the load's 16 connections), each task
lends the connection as the ASGI bench app does (benchmarks/aio_db_modes.py, the same code),
holds it across one ``await asyncio.sleep(0)`` and gives it back, no query: the pool of 1
(``(await forkpool.get_async_pool()).connection()``: every lend waits in the pool's FIFO line)
against the floor (one bare connection behind an asyncio.Lock) and a second floor (A/A); each
commits on the way back, which with no transaction open sends nothing. CPU time of this process per lend, windows interleaved in a
shuffled order and its reverse; then a cProfile of the pool's cycle (cumulative time per lend,
inflated by the profiler: read it as shares). On the embedded PostgreSQL, or DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .machine import REPO_ROOT, load_average, run_context_line, save_text_result

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TASKS = 8
Lend = Callable[[], Awaitable[Any]]


async def window(lend: Lend, seconds: float) -> tuple[float, int]:
    """CPU microseconds per lend with TASKS tasks taking turns for `seconds`, and the lends done."""
    done, stop = 0, False

    async def task() -> None:
        nonlocal done
        while not stop:
            async with await lend():
                await asyncio.sleep(0)
            done += 1

    began = time.process_time()
    running = [asyncio.create_task(task()) for _ in range(TASKS)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*running)
    return (time.process_time() - began) / max(done, 1) * 1e6, done


def _short(key: tuple[str, int, str]) -> str:
    path, line, name = key
    for marker in ("site-packages/", "python3.11/", "shared/", f"{REPO_ROOT}/"):
        path = path.split(marker)[-1]
    return f"{path}:{line}({name})"


async def measure(args: argparse.Namespace, out: list[str]) -> None:
    import forkpool

    from .aio_db_modes import FloorSource, PoolSource

    sources = {"pool": PoolSource(), "floor": FloorSource(), "floor-b (A/A)": FloorSource()}
    for source in sources.values():
        await source.open()
    lends: dict[str, Lend] = {name: source.lend for name, source in sources.items()}
    cpu: dict[str, list[float]] = {name: [] for name in lends}
    names = list(lends)
    for _ in range(args.rounds):
        random.shuffle(names)
        for name in names + names[::-1]:
            cpu[name].append((await window(lends[name], args.window))[0])
    floor = cpu["floor"]
    out.append(
        f"{TASKS} tasks on one connection, {args.rounds} rounds x 2 windows of {args.window} s; "
        "CPU us per lend + give back (median; paired ratio and difference to the floor, min-max)"
    )
    for name, values in cpu.items():
        ratio = [a / b for a, b in zip(values, floor, strict=False)]
        diff = [a - b for a, b in zip(values, floor, strict=False)]
        out.append(
            f"  {name:22s} {statistics.median(values):7.2f} us   / floor {statistics.median(ratio):5.2f} "
            f"({min(ratio):.2f}-{max(ratio):.2f})   - floor {statistics.median(diff):+6.2f} us "
            f"({min(diff):+.2f}..{max(diff):+.2f})"
        )
    stats = (await forkpool.get_async_pool()).stats()
    out.append(f"  pool stats: checkouts {stats['checkouts']}, waits {stats['waits']}, checks {stats['checks']}")

    profile = cProfile.Profile()
    profile.enable()
    _, done = await window(lends["pool"], args.profile_window)
    profile.disable()
    rows = sorted(
        (
            (v[3] / done * 1e6, v[2] / done * 1e6, v[1] / done, _short(k))
            for k, v in pstats.Stats(profile).stats.items()
        ),
        reverse=True,
    )  # type: ignore[attr-defined]
    out += [
        "",
        f"cProfile of the pool's cycle, {done} lends (times per lend, inflated by the profiler):",
        "  cum us   own us  calls/lend  function",
    ]
    out += [f"  {cum:7.2f}  {own:6.2f}  {calls:9.2f}  {name}" for cum, own, calls, name in rows[: args.top]]
    for source in sources.values():
        await source.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asgi_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--window", type=float, default=0.3, help="seconds per window (default 0.3)")
    parser.add_argument("--profile-window", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=40, help="profile rows (default 40)")
    parser.add_argument("--quick", action="store_true", help="two short rounds: checks that everything runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.window, args.profile_window = 2, 0.05, 0.1
    from harness.services import EmbeddedPostgres

    from .machine import CpuMeter, postmaster_pid

    started = datetime.now(UTC)
    out = [f"# asgi_profile {started:%Y-%m-%dT%H:%M:%SZ}", __doc__.split("\n\n", 2)[2].strip(), ""]
    load_start = load_average()
    given = os.environ.get("DATABASE_URL")
    with nullcontext(SimpleNamespace(url=given)) if given else EmbeddedPostgres(max_connections=20) as pg:
        os.environ.update(DATABASE_URL=pg.url, DB_POOL_SIZE="1", FORKPOOL_NAME="asgi-profile")
        meter = CpuMeter(postmaster_pid(pg.url))
        asyncio.run(measure(args, out))
        use = meter.result()
    out[2:2] = [run_context_line(load_start, use, quick=args.quick), ""]
    save_text_result(args.out, "asgi_profile", started, "\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
