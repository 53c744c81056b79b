"""Does forkpool.protect add anything to SQLAlchemy's checkout path? Protected against unprotected.

    .venv/bin/python -m benchmarks.protect_overhead [--rounds 9] [--ops 20000]

Three engines on the same embedded PostgreSQL (or DATABASE_URL), QueuePool of
5, one protected: checkout + return (``engine.connect()`` / close) and
checkout + ``SELECT 1``, one thread, rounds interleaved in a shuffled order;
the ratio protected / unprotected is paired per round, then the median is
taken. The third engine, unprotected too, gives an A/A ratio: the noise floor
the protected ratio is read against. The goal: within 2 %. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

from sqlalchemy import create_engine, text

import forkpool
from harness.services import EmbeddedPostgres


def checkout_return(engine, ops: int) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        with engine.connect():
            pass
    return (time.perf_counter() - started) / ops * 1e6


def checkout_select(engine, ops: int) -> float:
    statement = text("SELECT 1")
    started = time.perf_counter()
    for _ in range(ops):
        with engine.connect() as conn:
            conn.execute(statement)
    return (time.perf_counter() - started) / ops * 1e6


def measure(url: str, rounds: int, ops: int) -> None:
    url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    plain = create_engine(url, pool_size=5, max_overflow=0)
    control = create_engine(url, pool_size=5, max_overflow=0)
    protected = forkpool.protect(create_engine(url, pool_size=5, max_overflow=0))
    rng = random.Random(7)
    for name, loop, count in (("checkout + return", checkout_return, ops), ("checkout + SELECT 1", checkout_select,
                                                                              ops // 10)):
        for engine in (plain, control, protected):
            loop(engine, count // 10)  # warm: the pool is full, the code paths hot
        ratios, controls, plain_us, protected_us = [], [], [], []
        for _ in range(rounds):
            order = [plain, control, protected]
            rng.shuffle(order)
            times = {id(engine): loop(engine, count) for engine in order}
            plain_us.append(times[id(plain)])
            protected_us.append(times[id(protected)])
            ratios.append(times[id(protected)] / times[id(plain)])
            controls.append(times[id(control)] / times[id(plain)])
        print(f"{name}: unprotected {statistics.median(plain_us):.2f} µs, protected "
              f"{statistics.median(protected_us):.2f} µs; protected / unprotected median {statistics.median(ratios):.3f}"
              f" (rounds {min(ratios):.3f}-{max(ratios):.3f}); A/A control {statistics.median(controls):.3f}; "
              "goal <= 1.02")
    for engine in (plain, control, protected):
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=20000)
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL"):
        measure(os.environ["DATABASE_URL"], args.rounds, args.ops)
        return 0
    with EmbeddedPostgres() as pg:
        measure(pg.url, args.rounds, args.ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
