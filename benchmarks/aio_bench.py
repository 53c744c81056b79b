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
UTC date and time, to benchmarks/results/ (or --out DIR). What it shares with pool_bench (options,
server, report, JSON): peer_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from typing import Any

from . import peer_bench
from .aio_contenders import APP_NAME, POOL_SIZE, build_contenders
from .aio_figures import derive, summarize
from .aio_output import markdown, print_report
from .aio_scenarios import PASSES_N, SCENARIOS, SETTLE, TASKS, Plan, run_rounds
from .machine import (
    CpuMeter,
    aio_bench_packages,
    load_average,
)
from .peer_bench import DEFAULTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = peer_bench.parser(
        "aio_bench",
        __doc__,
        ops_help="operations per round for 1-task acquire + release "
        f"(default {DEFAULTS['ops']}); SELECT 1 and asyncpg's default pool use ops/40",
        select_ops_help="operations per round for 1-task operations with a round trip (default ops/40)",
        window_help=f"seconds each pass of a {TASKS}-task run lasts, {PASSES_N} passes a round "
        f"(default {DEFAULTS['window']})",
    )
    return peer_bench.resolve(parser, argv, {"select_ops": (40, 5)})


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
    run = peer_bench.Run("aio_bench")
    with ExitStack() as stack:
        dsn, machine, meter = run.server(stack, APP_NAME, aio_bench_packages())
        run.progress(f"load average {machine['load_average_at_start']}")
        measured = asyncio.run(measure_all(dsn, plan, run.progress, meter))
        machine["cpu_use"] = measured["cpu_use"]
    machine["load_average_at_end"] = load_average()

    contenders = measured["contenders"]
    scenarios = summarize(measured["results"], contenders)
    report = run.report(
        {
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
        machine,
        contenders,
    )
    report.update(
        scenarios=scenarios,
        derived=derive(scenarios),
        rounds=measured["rounds"],
        ours_pool_stats=measured["ours_stats"],
    )
    return run.finish(report, args.out, print_report, markdown)


if __name__ == "__main__":
    sys.exit(main())
