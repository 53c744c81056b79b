"""The pool against its peers: checkout cost, fairness and health-check overhead.

    python -m benchmarks.pool_bench                  # default run: about 3.5 minutes on 2 cores
    python -m benchmarks.pool_bench --quick          # a few seconds: does everything still run?
    python -m benchmarks.pool_bench --rounds 15 --ops 40000 --out /tmp/results

Contenders, all holding 5 connections to the same server:

    ours          forkpool.Pool (min = max = 5) on psycopg2, getconn()/putconn(), default settings
    ours_psycopg  the same on psycopg 3 (driver="psycopg"): psycopg_pool's figures are also
                  paired against it, the same driver on both sides
    psycopg2      psycopg2.pool.ThreadedConnectionPool(5, 5) behind a BoundedSemaphore(5),
                  so threads wait instead of getting PoolError when it is exhausted
    psycopg_pool  psycopg_pool.ConnectionPool (psycopg 3), min = max = 5, getconn()/putconn()
    sqlalchemy    SQLAlchemy's QueuePool (pool_size=5, max_overflow=0) over psycopg2,
                  engine.raw_connection() / .close()
    connect       psycopg2.connect() + close() per operation (SELECT 1 scenarios only)

and three diagnostic variants of ours, which are not peers:

    ours_nocheck       ours with its pre-use health check removed (``_usable`` always true):
                       the "checks off" baseline of the on/off overhead
    ours_check_always  ours with check_idle=0: a round trip before every checkout, like
                       psycopg_pool's check= and SQLAlchemy's pool_pre_ping
    ours_psycopg_nocheck  ours_psycopg with its pre-use health check removed

Scenarios: (a) checkout + return, (b) checkout + SELECT 1 + commit + return, each with
1 thread (a fixed number of operations) and with 8 threads on the pool of 5 (all threads
run for a fixed window; cost = window / operations completed, fairness = fewest operations
any thread completed / mean per thread); (c) as (b) with health checks on: ours with its
default idle threshold (DB_POOL_CHECK_IDLE, 5 s: a busy pool does not pay),
psycopg_pool with check=ConnectionPool.check_connection, SQLAlchemy with
pool_pre_ping=True; psycopg2's pool has no check (n/a).

Method: one run, every contender against the same server, interleaved round by round
with the order of scenarios and of contenders shuffled in each round; within a round each
contender is measured in several passes, the round's order and its reverse alternately
(1 thread: 10 passes sharing the round's operations; 8 threads: 2 passes of one window
each). A round's figure is the passes' time over their operations. A contender's
figure is the median over rounds of its ns per operation; its ratio to ours is computed
within each round and the median of those ratios is reported, so a slow moment of the
(noisy, shared) machine hits both sides of a ratio. Nothing here asserts a timing.

The server is an embedded PostgreSQL on a free port (never the machine's own on 5432),
or the one DATABASE_URL names. Results go to stdout and, as JSON and Markdown named
after the UTC date and time, to benchmarks/results/ (or --out DIR).

Modules: contenders.py (the pools), scenarios.py (the timed loops and rounds), figures.py
(medians, paired ratios, goals), machine.py (machine and versions), output.py (tables,
Markdown), peer_bench.py (what aio_bench shares: options, server, report, JSON); this file is
the command.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from . import peer_bench
from .contenders import APP_NAME, POOL_SIZE, build_contenders
from .figures import derive, summarize
from .machine import load_average, pool_bench_packages
from .output import markdown, print_report
from .peer_bench import DEFAULTS

# Re-exported for callers of the former single module (benchmarks.hotpath imports these from here).
from .scenarios import PASSES_8T, SCENARIOS, SETTLE, THREADS, Plan, make_op, run_rounds, run_window

__all__ = ["POOL_SIZE", "THREADS", "main", "make_op", "parse_args", "run_window"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = peer_bench.parser(
        "pool_bench",
        __doc__,
        ops_help="operations per round for 1-thread checkout + return "
        f"(default {DEFAULTS['ops']}); SELECT 1 uses ops/40, connect-per-operation ops/700",
        select_ops_help="operations per round for 1-thread SELECT 1 (default ops/40)",
        window_help=f"seconds each pass of an 8-thread run lasts, {PASSES_8T} passes a round "
        f"(default {DEFAULTS['window']})",
    )
    parser.add_argument(
        "--connect-ops", type=int, help="operations per round for connect per operation (default ops/700)"
    )
    return peer_bench.resolve(parser, argv, {"select_ops": (40, 5), "connect_ops": (700, 3)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(
        rounds=args.rounds,
        ops=args.ops,
        select_ops=args.select_ops,
        connect_ops=args.connect_ops,
        window=args.window,
        seed=args.seed,
        quick=args.quick,
    )
    run = peer_bench.Run("pool_bench")
    with ExitStack() as stack:
        dsn, machine, meter = run.server(stack, APP_NAME, pool_bench_packages())
        run.progress(f"opening pools (load average {machine['load_average_at_start']})")
        contenders = build_contenders(dsn, stack)
        run.progress(f"{plan.rounds} rounds x {len(SCENARIOS)} scenarios")
        results, rounds = run_rounds(contenders, plan, run.progress)
        ours_stats = {key: c.pool.stats() for key, c in contenders.items() if c.pool is not None}
        machine["cpu_use"] = meter.result()
    machine["load_average_at_end"] = load_average()

    scenarios = summarize(results, contenders)
    report = run.report(
        {
            "rounds": plan.rounds,
            "ops": plan.ops,
            "select_ops": plan.select_ops,
            "connect_ops": plan.connect_ops,
            "window_s": plan.window,
            "threads": THREADS,
            "pool_size": POOL_SIZE,
            "seed": plan.seed,
            "quick": plan.quick,
            "settle_s": SETTLE,
        },
        machine,
        contenders,
    )
    report.update(scenarios=scenarios, derived=derive(scenarios), rounds=rounds, ours_pool_stats=ours_stats)
    return run.finish(report, args.out, print_report, markdown)


if __name__ == "__main__":
    sys.exit(main())
