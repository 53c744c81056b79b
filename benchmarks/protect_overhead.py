"""Does forkpool.protect add anything to SQLAlchemy's checkout path? Protected against unprotected.

    .venv/bin/python -m benchmarks.protect_overhead [--rounds 41] [--ops 5000]    # ~1 min on 2 cores
    .venv/bin/python -m benchmarks.protect_overhead --quick                       # seconds: does it run?
    .venv/bin/python -m benchmarks.protect_overhead --backend mariadb [--driver mysqldb]   # a private MariaDB

Three engines on the same embedded PostgreSQL (or DATABASE_URL), or with
``--backend mariadb`` a private MariaDB (PyMySQL, or mysqlclient), QueuePool of
5, one protected: checkout + return (``engine.connect()`` / close) and
checkout + ``SELECT 1``, one thread, short rounds interleaved in a shuffled
order; the ratio protected / unprotected is paired per round, then the median
is taken, with a bootstrap 95 % interval. Each round is timed in this thread's
CPU time (what a checkout costs the process, whatever else the machine runs)
and in wall time. The third engine, unprotected too, gives an A/A ratio: the
noise floor the protected ratio is read against. The goal: within 2 %. Prints
figures and writes results/protect_overhead_<UTC>.txt; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import create_engine, text

import forkpool

from .machine import _version, load_average, run_context_line, save_text_result

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
GOAL = 1.02
Loop = Callable[..., tuple[float, float]]


def checkout_return(engine, ops: int) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(ops):
        with engine.connect():
            pass
    return (time.thread_time() - cpu) / ops * 1e6, (time.perf_counter() - wall) / ops * 1e6


def checkout_select(engine, ops: int) -> tuple[float, float]:
    statement = text("SELECT 1")
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(ops):
        with engine.connect() as conn:
            conn.execute(statement)
    return (time.thread_time() - cpu) / ops * 1e6, (time.perf_counter() - wall) / ops * 1e6


def scenario(
    name: str, loop: Loop, count: int, engines: dict[str, object], rounds: int, rng: random.Random
) -> list[str]:
    for engine in engines.values():
        loop(engine, max(count // 10, 1))  # warm: the pool is full, the code paths hot
    cpu: dict[str, list[float]] = {label: [] for label in engines}
    wall: dict[str, list[float]] = {label: [] for label in engines}
    for _ in range(rounds):
        order = list(engines.items())
        rng.shuffle(order)
        for label, engine in order:
            used, took = loop(engine, count)
            cpu[label].append(used)
            wall[label].append(took)
    out = [f"{name} ({rounds} rounds x {count} ops, µs per op, median of rounds):"]
    for kind, times in (("CPU (this thread)", cpu), ("wall", wall)):
        ratios = [p / u for p, u in zip(times["protected"], times["unprotected"], strict=False)]
        controls = [c / u for c, u in zip(times["control"], times["unprotected"], strict=False)]
        ratio, control = statistics.median(ratios), statistics.median(controls)
        out += [
            f"  {kind}: " + ", ".join(f"{label} {statistics.median(v):.2f}" for label, v in times.items()),
            f"    protected / unprotected   median {ratio:.3f}  95 % {_interval(ratios, rng)}  (middle half "
            f"{_quartiles(ratios)}, rounds {min(ratios):.3f}-{max(ratios):.3f})",
            f"    A/A control / unprotected median {control:.3f}  95 % {_interval(controls, rng)}  (middle half "
            f"{_quartiles(controls)}, rounds {min(controls):.3f}-{max(controls):.3f})",
            f"    goal <= {GOAL:.2f}: {'met' if ratio <= GOAL else 'missed'}; "
            f"|protected - 1| = {abs(ratio - 1):.3f} against the A/A's |control - 1| = {abs(control - 1):.3f}",
        ]
    return [*out, ""]


def _interval(values: list[float], rng: random.Random, resamples: int = 2000) -> str:
    """A percentile bootstrap 95 % interval of the median of `values`."""
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return f"{medians[int(0.025 * resamples)]:.3f}-{medians[int(0.975 * resamples) - 1]:.3f}"


def _quartiles(values: list[float]) -> str:
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.3f}-{high:.3f}"


def measure(url: str, rounds: int, ops: int, seed: int, meter) -> tuple[list[str], dict | None]:
    """The figures, and the CPU use read before the engines let their server sessions go (so it counts them)."""
    engines = {
        "unprotected": create_engine(url, pool_size=5, max_overflow=0),
        "control": create_engine(url, pool_size=5, max_overflow=0),
        "protected": forkpool.protect(create_engine(url, pool_size=5, max_overflow=0)),
    }
    rng = random.Random(seed)
    out = [f"Pool events with listeners: {', '.join(f'{k} {describe(e)}' for k, e in engines.items())}", ""]
    try:
        out += scenario("checkout + return", checkout_return, ops, engines, rounds, rng)
        out += scenario("checkout + SELECT 1", checkout_select, ops // 10, engines, rounds, rng)
        return out, meter.result()
    finally:
        for engine in engines.values():
            engine.dispose()


def describe(engine) -> str:
    """The engine's listeners on the checkout path (pool checkout / checkin) and on connect: "(connect 1, ...)"."""
    counts = [f"{name} {len(getattr(engine.pool.dispatch, name))}" for name in ("checkout", "checkin", "connect")]
    dialect = f"do_connect {len(engine.dialect.dispatch.do_connect)}"
    return f"({', '.join(counts)}, {dialect})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protect_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--ops", type=int, default=5000, help="checkouts per round and engine (a tenth with SELECT 1)")
    parser.add_argument("--seed", type=int, default=7, help="the rounds' shuffle")
    parser.add_argument("--quick", action="store_true", help="two short rounds: checks that everything runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--backend", choices=("postgresql", "mariadb"), default="postgresql")
    parser.add_argument("--driver", choices=("pymysql", "mysqldb"), default="pymysql", help="MariaDB's DB-API driver")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.ops = 4, 200
    from harness.services import EmbeddedPostgres

    from .machine import CpuMeter, postmaster_pid

    started = datetime.now(UTC)
    out = [f"# protect_overhead {started:%Y-%m-%dT%H:%M:%SZ}", __doc__.split("\n\n", 2)[2].strip(), ""]
    load_start = load_average()
    os.environ.setdefault("FORKPOOL_NAME", "protect-overhead")
    if args.backend == "mariadb":
        from harness.services import EmbeddedMariaDB

        with EmbeddedMariaDB(max_connections=30) as server:
            meter = CpuMeter(server._proc.pid if server._proc else None)  # the server's CPU, as postmaster's
            url = server.url.replace("mysql://", f"mysql+{args.driver}://", 1)
            lines, use = measure(url, args.rounds, args.ops, args.seed, meter)
            out += lines
        package = "PyMySQL" if args.driver == "pymysql" else "mysqlclient"
        versions = f"SQLAlchemy {_version('sqlalchemy')}, {package} {_version(package)}, MariaDB {_mariadb_version()}"
    else:
        given = os.environ.get("DATABASE_URL")
        with nullcontext(SimpleNamespace(url=given)) if given else EmbeddedPostgres(max_connections=30) as pg:
            meter = CpuMeter(postmaster_pid(pg.url))
            url = pg.url.replace("postgresql://", "postgresql+psycopg2://", 1)
            lines, use = measure(url, args.rounds, args.ops, args.seed, meter)
            out += lines
        versions = f"SQLAlchemy {_version('sqlalchemy')}, psycopg2 {_version('psycopg2-binary', 'psycopg2')}"
    context = run_context_line(load_start, use, versions, args.quick)
    if args.backend == "mariadb":  # the meter's server is MariaDB's here
        context = context.replace("its PostgreSQL", "its MariaDB")
    out[3:3] = [context, ""]
    save_text_result(args.out, "protect_overhead", started, "\n".join(out) + "\n")
    return 0


def _mariadb_version() -> str:
    import subprocess

    from harness.services import mariadb_binaries

    try:
        return (
            subprocess.run([mariadb_binaries()[0], "--version"], capture_output=True, text=True, timeout=10)
            .stdout.split(" Ver ")[-1]
            .split()[0]
        )
    except Exception:  # noqa: BLE001 - a label only
        return "?"


if __name__ == "__main__":
    sys.exit(main())
