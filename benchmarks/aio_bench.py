"""The asyncio pool against its peers: acquire + release cost and fairness, in one event loop.

    python -m benchmarks.aio_bench                  # default run: about 2 minutes on 2 cores
    python -m benchmarks.aio_bench --quick          # a few seconds: does everything still run?
    python -m benchmarks.aio_bench --rounds 15 --ops 40000 --out /tmp/results

Contenders, all holding 5 connections to the same server (details: aio_contenders.py):

    ours             forkpool.AsyncPool (psycopg 3), default settings, getconn()/putconn()
    psycopg_pool     psycopg_pool.AsyncConnectionPool (psycopg 3), getconn()/putconn()
    asyncpg          asyncpg.create_pool(), acquire()/release(), default settings (release runs
                     asyncpg's reset query: a round trip)
    ours_b           a second, identical instance of ours: the A/A control
    asyncpg_noreset  diagnostic: asyncpg's pool with reset= a no-op (no round trip on release)

Scenarios (aio_scenarios.py): (a) acquire + release and (b) acquire + BEGIN; SELECT 1; COMMIT
+ release, each with 1 task (a fixed number of operations) and with 50 tasks on the pool of 5
(all tasks run for a fixed window; cost = window / operations completed, fairness = fewest
operations any task completed / mean per task). With 50 tasks, (a) yields once while holding
the connection, or no other task would run.

Method, as pool_bench's: one run, every contender against the same server, interleaved round
by round with the order of scenarios and contenders shuffled in each round, several passes per
round in the round's order and its reverse alternately; a contender's figure is the median over
rounds, its ratio to ours is paired within each round. A verdict is "inconclusive" when the A/A
control differs from 1 by more than the figure differs from its target. Nothing here asserts a
timing. The server is an embedded PostgreSQL on a free port (never the machine's own on 5432),
or the one DATABASE_URL names. Results go to stdout and, as JSON and Markdown named after the
UTC date and time, to benchmarks/results/ (or --out DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .aio_contenders import APP_NAME, POOL_SIZE, build_contenders
from .aio_figures import derive, summarize
from .aio_output import print_report, write_results
from .aio_scenarios import PASSES_N, SCENARIOS, SETTLE, TASKS, Plan, run_rounds
from .machine import (
    CpuMeter,
    aio_bench_packages,
    load_average,
    machine_info,
    postmaster_pid,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

DEFAULTS = dict(rounds=9, ops=20_000, window=0.4)
QUICK = dict(rounds=2, ops=300, window=0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.aio_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, help=f"measured rounds (default {DEFAULTS['rounds']})")
    parser.add_argument(
        "--ops",
        type=int,
        help="operations per round for 1-task acquire + release "
        f"(default {DEFAULTS['ops']}); SELECT 1 and asyncpg's default pool use ops/40",
    )
    parser.add_argument(
        "--select-ops", type=int, help="operations per round for 1-task operations with a round trip (default ops/40)"
    )
    parser.add_argument(
        "--window",
        type=float,
        help=f"seconds each pass of a {TASKS}-task run lasts, {PASSES_N} passes a round (default {DEFAULTS['window']})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny rounds: checks that everything runs, figures meaningless"
    )
    parser.add_argument("--seed", type=int, help="seed of the shuffling (default: random, recorded)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.select_ops is None:
        args.select_ops = max(args.ops // 40, 5)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    for name in ("rounds", "ops", "select_ops"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.window > 0:
        parser.error("--window must be more than 0")
    return args


async def measure_all(dsn: str, plan: Plan, progress: Callable[[str], None], meter: CpuMeter) -> dict[str, Any]:
    """Open the pools in this loop, run the rounds, read the CPU meter while their backends live, close the pools."""
    async with AsyncExitStack() as stack:
        progress("opening pools")
        contenders = await build_contenders(dsn, stack)
        progress(f"{plan.rounds} rounds x {len(SCENARIOS)} scenarios x {len(contenders)} contenders")
        results, rounds = await run_rounds(contenders, plan, progress)
        ours_stats = {key: c.pool.stats() for key, c in contenders.items() if c.pool is not None}
        cpu_use = meter.result()  # before the pools close: a backend's CPU time is read while it lives
    return {
        "contenders": contenders,
        "results": results,
        "rounds": rounds,
        "ours_stats": ours_stats,
        "cpu_use": cpu_use,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(
        rounds=args.rounds,
        ops=args.ops,
        select_ops=args.select_ops,
        window=args.window,
        seed=args.seed,
        quick=args.quick,
    )
    started_at = datetime.now(UTC)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[aio_bench {time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL") or None
        embedded = dsn is None
        if embedded:
            from harness.services import EmbeddedPostgres

            progress("starting an embedded PostgreSQL")
            server = stack.enter_context(EmbeddedPostgres(max_connections=100))
            dsn = server.url
        machine = machine_info(dsn, embedded, APP_NAME, aio_bench_packages())
        progress(f"load average {machine['load_average_at_start']}")
        meter = CpuMeter(postmaster_pid(dsn) if embedded else None)
        measured = asyncio.run(measure_all(dsn, plan, progress, meter))
        machine["cpu_use"] = measured["cpu_use"]
    machine["load_average_at_end"] = load_average()

    contenders = measured["contenders"]
    scenarios = summarize(measured["results"], contenders)
    report = {
        "benchmark": "aio_bench",
        "format": 1,
        "started_utc": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - began, 1),
        "config": {
            "rounds": plan.rounds,
            "ops": plan.ops,
            "select_ops": plan.select_ops,
            "window_s": plan.window,
            "tasks": TASKS,
            "pool_size": POOL_SIZE,
            "seed": plan.seed,
            "quick": plan.quick,
            "settle_s": SETTLE,
        },
        "machine": machine,
        "contenders": {key: {"family": c.family, "config": c.config} for key, c in contenders.items()},
        "scenarios": scenarios,
        "derived": derive(scenarios),
        "rounds": measured["rounds"],
        "ours_pool_stats": measured["ours_stats"],
    }
    print_report(report)
    json_path, md_path = write_results(report, args.out, started_at.strftime("%Y-%m-%dT%H%M%SZ"))
    print(f"results: {json_path}\n         {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
