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
(medians, paired ratios, goals), machine.py (machine and versions), output.py (tables, JSON,
Markdown); this file is the command.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from .contenders import APP_NAME, POOL_SIZE, build_contenders
from .figures import derive, summarize
from .machine import CpuMeter, load_average, machine_info, pool_bench_packages, postmaster_pid
from .output import print_report, write_results

# Re-exported for callers of the former single module (benchmarks.hotpath imports these from here).
from .scenarios import PASSES_8T, SCENARIOS, SETTLE, THREADS, Plan, make_op, run_rounds, run_window

__all__ = ["POOL_SIZE", "THREADS", "main", "make_op", "parse_args", "run_window"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# Defaults of a full run (about 2 minutes on a 2-core machine) and of --quick.
DEFAULTS = dict(rounds=9, ops=20_000, window=0.4)
QUICK = dict(rounds=2, ops=300, window=0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pool_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, help=f"measured rounds (default {DEFAULTS['rounds']})")
    parser.add_argument(
        "--ops",
        type=int,
        help="operations per round for 1-thread checkout + return "
        f"(default {DEFAULTS['ops']}); SELECT 1 uses ops/40, connect-per-operation ops/700",
    )
    parser.add_argument("--select-ops", type=int, help="operations per round for 1-thread SELECT 1 (default ops/40)")
    parser.add_argument(
        "--connect-ops", type=int, help="operations per round for connect per operation (default ops/700)"
    )
    parser.add_argument(
        "--window",
        type=float,
        help=f"seconds each pass of an 8-thread run lasts, {PASSES_8T} passes a round (default {DEFAULTS['window']})",
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
    if args.connect_ops is None:
        args.connect_ops = max(args.ops // 700, 3)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    for name in ("rounds", "ops", "select_ops", "connect_ops"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.window > 0:
        parser.error("--window must be more than 0")
    return args


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
    started_at = datetime.now(UTC)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[pool_bench {time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL") or None
        embedded = dsn is None
        if embedded:
            from harness.services import EmbeddedPostgres

            progress("starting an embedded PostgreSQL")
            server = stack.enter_context(EmbeddedPostgres(max_connections=100))
            dsn = server.url
        machine = machine_info(dsn, embedded, APP_NAME, pool_bench_packages())
        meter = CpuMeter(postmaster_pid(dsn) if embedded else None)
        progress(f"opening pools (load average {machine['load_average_at_start']})")
        contenders = build_contenders(dsn, stack)
        progress(f"{plan.rounds} rounds x {len(SCENARIOS)} scenarios")
        results, rounds = run_rounds(contenders, plan, progress)
        ours_stats = {key: c.pool.stats() for key, c in contenders.items() if c.pool is not None}
        machine["cpu_use"] = meter.result()
    machine["load_average_at_end"] = load_average()

    scenarios = summarize(results, contenders)
    report = {
        "benchmark": "pool_bench",
        "format": 1,
        "started_utc": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - began, 1),
        "config": {
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
        "machine": machine,
        "contenders": {key: {"family": c.family, "config": c.config} for key, c in contenders.items()},
        "scenarios": scenarios,
        "derived": derive(scenarios),
        "rounds": rounds,
        "ours_pool_stats": ours_stats,
    }
    print_report(report)
    json_path, md_path = write_results(report, args.out, started_at.strftime("%Y-%m-%dT%H%M%SZ"))
    print(f"results: {json_path}\n         {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
