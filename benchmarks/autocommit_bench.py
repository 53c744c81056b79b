"""Autocommit SELECT 1 per checkout: what a pool that keeps its connections in autocommit saves.

    python -m benchmarks.autocommit_bench            # about a minute on 2 cores
    python -m benchmarks.autocommit_bench --quick    # a few seconds: does everything still run?

One thread, one pool of 1 connection on an embedded PostgreSQL (or DATABASE_URL), each
operation ``getconn()``, ``SELECT 1`` (fetched) and ``putconn()``. What each contender sends
per operation (read off the wire by tests/test_pool_session.py for ours):

    after            forkpool.Pool(autocommit=True):                               SELECT 1
    before_txn       forkpool.Pool as configured by default (main's behaviour for
                     a user who does not switch autocommit on): the query opens
                     a transaction, putconn() rolls it back:                      BEGIN, SELECT 1, ROLLBACK
    before_toggle    the same pool; the user sets ``conn.autocommit = True`` after
                     each checkout, the pool turns it off again on return, as
                     main did (the full reset path on every return):             SELECT 1
    psycopg2_tcp     psycopg2.pool.ThreadedConnectionPool(1, 1), autocommit set
                     per checkout:                                                SELECT 1
    after_block      after, in ``with pool.connection()`` (its commit() is no I/O
                     in autocommit mode):                                         SELECT 1
    *_psycopg        ours on psycopg 3 (driver="psycopg"), the same ways

Method: rounds of short passes, the contenders shuffled in each pass; a contender's figure
is the median over rounds of its ns per operation (the min too: the least disturbed round),
and its ratio to ``after`` (same driver) is computed within each round, then the median
taken. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import psycopg2
import psycopg2.pool

import forkpool
from forkpool.settings import build_settings

DEFAULTS = dict(rounds=15, ops=2000)
PASSES = 20  # per round, each contender's operations split in this many shuffled passes
QUICK = dict(rounds=2, ops=50)


def select_1(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()


def ours(dsn: str, driver: str, autocommit: bool, stack: ExitStack) -> forkpool.Pool:
    # check_idle high: no pre-use check is timed, only the checkout, the query and the return.
    settings = build_settings(dsn=dsn, min_size=1, max_size=1, check_idle=3600, driver=driver, autocommit=autocommit)
    pool = forkpool.Pool(settings, f"autocommit-bench-{driver}-{autocommit}")
    stack.callback(pool.close)
    pool.open(wait=True, timeout=30)
    return pool


def plain(pool: forkpool.Pool) -> Callable[[], None]:
    getconn, putconn = pool.getconn, pool.putconn

    def op() -> None:
        conn = getconn()
        select_1(conn)
        putconn(conn)

    return op


def with_block(pool: forkpool.Pool) -> Callable[[], None]:
    def op() -> None:
        with pool.connection() as conn:
            select_1(conn)

    return op


def toggled(pool: forkpool.Pool) -> Callable[[], None]:
    getconn, putconn = pool.getconn, pool.putconn

    def op() -> None:
        conn = getconn()
        conn.autocommit = True
        select_1(conn)
        putconn(conn)

    return op


def threaded_pool(dsn: str, stack: ExitStack) -> Callable[[], None]:
    pool = psycopg2.pool.ThreadedConnectionPool(1, 1, dsn)
    stack.callback(pool.closeall)
    getconn, putconn = pool.getconn, pool.putconn

    def op() -> None:
        conn = getconn()
        conn.autocommit = True
        select_1(conn)
        putconn(conn)

    return op


def build(dsn: str, stack: ExitStack) -> dict[str, tuple[str, Callable[[], None]]]:
    """{name: (the contender it is compared with, operation)}."""
    found: dict[str, tuple[str, Callable[[], None]]] = {}
    drivers = [("", "psycopg2")] + ([("_psycopg", "psycopg")] if "psycopg" in _installed() else [])
    for suffix, driver in drivers:
        after, before = ours(dsn, driver, True, stack), ours(dsn, driver, False, stack)
        found[f"after{suffix}"] = (f"after{suffix}", plain(after))
        found[f"before_txn{suffix}"] = (f"after{suffix}", plain(before))
        found[f"before_toggle{suffix}"] = (f"after{suffix}", toggled(before))
        found[f"after_block{suffix}"] = (f"after{suffix}", with_block(after))
    found["psycopg2_tcp"] = ("after", threaded_pool(dsn, stack))
    return found


def _installed() -> list[str]:
    from forkpool._drivers import installed

    return installed()


def measure(op: Callable[[], None], ops: int) -> tuple[float, float]:
    """(wall, this thread's CPU) ns per operation: the round trips show in the first, the client's work in the second."""
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(ops):
        op()
    return (time.perf_counter_ns() - wall) / ops, (time.thread_time_ns() - cpu) / ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.autocommit_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--ops", type=int, help="operations per contender per round")
    parser.add_argument("--quick", action="store_true", help="tiny rounds: checks that everything runs")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    with ExitStack() as stack:
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            from harness.services import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres(max_connections=50)).url
        contenders = build(dsn, stack)
        for _, op in contenders.values():  # warm: connections open, statements cached
            measure(op, max(args.ops // 10, 5))
        per_round: dict[str, list[float]] = {name: [] for name in contenders}
        cpu_round: dict[str, list[float]] = {name: [] for name in contenders}
        passes = max(min(PASSES, args.ops // 10), 1)
        started = time.monotonic()
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            # Short passes, the contenders shuffled in each: a burst of load on the shared machine
            # lands on every contender of the round, not on one.
            spent = {name: [0.0, 0.0] for name in contenders}
            for _ in range(passes):
                order = list(contenders)
                rng.shuffle(order)
                for name in order:
                    wall, cpu = measure(contenders[name][1], args.ops // passes)
                    spent[name][0] += wall
                    spent[name][1] += cpu
            for name, (wall, cpu) in spent.items():
                per_round[name].append(wall / passes)
                cpu_round[name].append(cpu / passes)
    print(
        f"autocommit_bench: {args.rounds} rounds x {args.ops} ops, 1 thread, pool of 1, seed {seed}, "
        f"{time.monotonic() - started:.0f} s, load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(f"{'contender':<22}{'wall ns/op':>12}{'min':>10}{'max':>11}{'x after':>9}{'CPU ns/op':>11}{'x after':>9}")
    for name, (base, _) in contenders.items():
        figures, cpu = per_round[name], cpu_round[name]
        ratio = statistics.median(a / b for a, b in zip(figures, per_round[base], strict=False))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu, cpu_round[base], strict=False))
        print(
            f"{name:<22}{statistics.median(figures):>12,.0f}{min(figures):>10,.0f}{max(figures):>11,.0f}"
            f"{ratio:>9.2f}{statistics.median(cpu):>11,.0f}{cpu_ratio:>9.2f}"
        )
    print("x after: the median of the ratios to after (after_psycopg for *_psycopg) within each round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
