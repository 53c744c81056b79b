"""The pool against its peers: checkout cost, fairness and health-check overhead.

    python -m benchmarks.pool_bench                  # default run: about 2.5 minutes on 2 cores
    python -m benchmarks.pool_bench --quick          # a few seconds: does everything still run?
    python -m benchmarks.pool_bench --rounds 15 --ops 40000 --out /tmp/results

Contenders, all holding 5 connections to the same server:

    ours          shared.Pool (min = max = 5), getconn()/putconn(), default settings
    psycopg2      psycopg2.pool.ThreadedConnectionPool(5, 5) behind a BoundedSemaphore(5),
                  so threads wait instead of getting PoolError when it is exhausted
    psycopg_pool  psycopg_pool.ConnectionPool (psycopg 3), min = max = 5, getconn()/putconn()
    sqlalchemy    SQLAlchemy's QueuePool (pool_size=5, max_overflow=0) over psycopg2,
                  engine.raw_connection() / .close()
    connect       psycopg2.connect() + close() per operation (SELECT 1 scenarios only)

and two diagnostic variants of ours, which are not peers:

    ours_nocheck       ours with its pre-use health check removed (``_usable`` always true):
                       the "checks off" baseline of the on/off overhead
    ours_check_always  ours with check_idle=0: a round trip before every checkout, like
                       psycopg_pool's check= and SQLAlchemy's pool_pre_ping

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
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

POOL_SIZE = 5
THREADS = 8
APP_NAME = "pool_bench"

# Defaults of a full run (about 2 minutes on a 2-core machine) and of --quick.
DEFAULTS = dict(rounds=9, ops=20_000, window=0.4)
QUICK = dict(rounds=2, ops=300, window=0.05)

GOAL_CHECKOUT_RATIO = 2.0  # peers' checkout + return should cost at least twice ours
GOAL_FAIRNESS = 0.9
GOAL_CHECK_OVERHEAD = 1.05  # checks on / off on a busy pool


# -- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    op: str  # "checkout" | "select1"
    threads: int
    checks: bool  # (c): health checks on

    @property
    def windowed(self) -> bool:
        return self.threads > 1


SCENARIOS: list[Scenario] = [
    Scenario("checkout_1t", "(a) checkout + return, 1 thread", "checkout", 1, False),
    Scenario("checkout_8t", "(a) checkout + return, 8 threads, pool of 5", "checkout", THREADS, False),
    Scenario("select1_1t", "(b) checkout + SELECT 1 + return, 1 thread", "select1", 1, False),
    Scenario("select1_8t", "(b) checkout + SELECT 1 + return, 8 threads, pool of 5", "select1", THREADS, False),
    Scenario("checked_select1_1t", "(c) health checks on: checkout + SELECT 1 + return, 1 thread",
             "select1", 1, True),
    Scenario("checked_select1_8t", "(c) health checks on: checkout + SELECT 1 + return, 8 threads, pool of 5",
             "select1", THREADS, True),
]
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}

# Column (how a contender is named in the results) -> instance measured, per kind of scenario.
PEERS = ["ours", "psycopg2", "psycopg_pool", "sqlalchemy", "connect"]
DIAGNOSTICS = ["ours_nocheck", "ours_check_always"]


def members(scenario: Scenario) -> tuple[dict[str, str], dict[str, str]]:
    """(column -> contender instance measured, column -> why not applicable)."""
    if scenario.checks:
        run = {"ours": "ours", "ours_check_always": "ours_check_always",
               "psycopg_pool": "psycopg_pool_check", "sqlalchemy": "sqlalchemy_pre_ping"}
        na = {"psycopg2": "psycopg2.pool has no health check",
              "connect": "nothing to check: fresh connection each time (see (b))"}
        return run, na
    run = {"ours": "ours", "ours_nocheck": "ours_nocheck", "psycopg2": "psycopg2",
           "psycopg_pool": "psycopg_pool", "sqlalchemy": "sqlalchemy"}
    na: dict[str, str] = {}
    if scenario.op == "select1":
        run["connect"] = "connect"
    else:
        na["connect"] = "SELECT 1 scenarios only"
    return run, na


# -- contenders -----------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    family: str  # ours | psycopg2 | psycopg_pool | sqlalchemy | connect
    config: str
    getconn: Callable[[], Any]
    putconn: Callable[[Any], None]
    pool: Any = None  # ours: the Pool, for its stats


def _sqlalchemy_engine(dsn: str, **kwargs: Any) -> Any:
    import psycopg2
    import sqlalchemy

    connect_args = {"application_name": f"{APP_NAME}:sqlalchemy"}
    for scheme in ("postgresql://", "postgres://"):
        if dsn.startswith(scheme):
            url = "postgresql+psycopg2://" + dsn[len(scheme):]
            return sqlalchemy.create_engine(url, connect_args=connect_args, **kwargs)
    # A key=value DSN: let SQLAlchemy's pool call psycopg2 with it as it is.
    return sqlalchemy.create_engine("postgresql+psycopg2://",
                                    creator=lambda: psycopg2.connect(dsn, **connect_args), **kwargs)


def build_contenders(dsn: str, stack: ExitStack) -> dict[str, Contender]:
    """Open every pool (filled to 5) before the first round; closed by `stack`."""
    import psycopg2
    import psycopg2.pool
    import psycopg_pool

    import shared
    from shared.settings import build_settings

    found: dict[str, Contender] = {}

    def ours(key: str, name: str, config: str, cls: type = shared.Pool, **extra: Any) -> None:
        pool = cls(build_settings(dsn=dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, **extra), name)
        stack.callback(pool.close)
        pool.open(wait=True)
        found[key] = Contender(key, "ours", config, pool.getconn, pool.putconn, pool=pool)

    ours("ours", "bench", "shared.Pool, default settings (check_idle 5 s + idle socket poll)")
    nocheck = _no_check_pool_class(shared.Pool)
    if nocheck is not None:
        ours("ours_nocheck", "bench-nocheck", "shared.Pool with its pre-use check removed (diagnostic)", nocheck)
    ours("ours_check_always", "bench-check-always", "shared.Pool, check_idle=0: a round trip per checkout "
         "(diagnostic)", check_idle=0)

    # psycopg2's pool raises PoolError when exhausted; the semaphore makes threads wait instead.
    p2 = psycopg2.pool.ThreadedConnectionPool(POOL_SIZE, POOL_SIZE, dsn, application_name=f"{APP_NAME}:psycopg2")
    stack.callback(p2.closeall)
    slots = threading.BoundedSemaphore(POOL_SIZE)
    p2_get, p2_put = p2.getconn, p2.putconn

    def psycopg2_getconn() -> Any:
        slots.acquire()
        try:
            return p2_get()
        except BaseException:
            slots.release()
            raise

    def psycopg2_putconn(conn: Any) -> None:
        p2_put(conn)
        slots.release()

    found["psycopg2"] = Contender("psycopg2", "psycopg2", "ThreadedConnectionPool(5, 5) + BoundedSemaphore(5)",
                                  psycopg2_getconn, psycopg2_putconn)

    def psycopg3(key: str, config: str, **extra: Any) -> None:
        pool = psycopg_pool.ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True,
                                           name=key, kwargs={"application_name": f"{APP_NAME}:{key}"}, **extra)
        stack.callback(pool.close)
        pool.wait(timeout=30)
        found[key] = Contender(key, "psycopg_pool", config, pool.getconn, pool.putconn)

    psycopg3("psycopg_pool", "ConnectionPool(min_size=5, max_size=5)")
    psycopg3("psycopg_pool_check", "ConnectionPool(..., check=ConnectionPool.check_connection)",
             check=psycopg_pool.ConnectionPool.check_connection)

    def alchemy(key: str, config: str, **extra: Any) -> None:
        engine = _sqlalchemy_engine(dsn, pool_size=POOL_SIZE, max_overflow=0, **extra)
        stack.callback(engine.dispose)
        warm = [engine.raw_connection() for _ in range(POOL_SIZE)]  # QueuePool connects lazily
        for conn in warm:
            conn.close()
        found[key] = Contender(key, "sqlalchemy", config, engine.raw_connection, _close)

    alchemy("sqlalchemy", "create_engine(pool_size=5, max_overflow=0).raw_connection()")
    alchemy("sqlalchemy_pre_ping", "create_engine(..., pool_pre_ping=True).raw_connection()", pool_pre_ping=True)

    connect_kwargs = {"application_name": f"{APP_NAME}:connect"}
    found["connect"] = Contender("connect", "connect", "psycopg2.connect() + close() per operation",
                                 lambda: psycopg2.connect(dsn, **connect_kwargs), _close)
    return found


def _close(conn: Any) -> None:
    conn.close()


def _no_check_pool_class(pool_class: type) -> type | None:
    """ours without its pre-use health check: the "off" side of the on/off overhead."""
    if not callable(getattr(pool_class, "_usable", None)):
        return None  # the pool changed shape: the diagnostic is reported missing, not faked

    class NoCheckPool(pool_class):  # type: ignore[misc, valid-type]
        def _usable(self, entry: Any) -> bool:
            return True

    return NoCheckPool


# -- operations and measurement -------------------------------------------------------------


def make_op(kind: str, getconn: Callable[[], Any], putconn: Callable[[Any], None]) -> Callable[[], None]:
    if kind == "checkout":
        def checkout() -> None:
            putconn(getconn())
        return checkout

    def select1() -> None:
        conn = getconn()
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchone()
            cur.close()
            conn.commit()  # every contender returns an idle connection: no pool pays a rollback
        finally:
            putconn(conn)
    return select1


@dataclass
class Sample:
    ns_per_op: float
    ops: list[int]  # per thread
    elapsed_ns: int

    @property
    def fairness(self) -> float | None:
        if len(self.ops) < 2:
            return None
        mean = sum(self.ops) / len(self.ops)
        return min(self.ops) / mean if mean else 0.0


def run_ops(op: Callable[[], None], n: int) -> Sample:
    """`n` operations in this thread."""
    started = time.perf_counter_ns()
    for _ in range(n):
        op()
    elapsed = time.perf_counter_ns() - started
    return Sample(elapsed / n, [n], elapsed)


def run_window(op: Callable[[], None], threads: int, window: float) -> Sample:
    """`threads` threads released together, each running `op` until `window` seconds have passed."""
    counts = [0] * threads
    ends = [0] * threads
    stop = [False]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        done = 0
        try:
            barrier.wait()
            while not stop[0]:
                op()
                done += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            stop[0] = True
        finally:
            counts[index] = done
            ends[index] = time.perf_counter_ns()

    workers = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    started = time.perf_counter_ns()
    time.sleep(window)
    stop[0] = True
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    elapsed = max(ends) - started
    total = sum(counts)
    return Sample(elapsed / total if total else float("inf"), counts, elapsed)


# A round measures each contender of a scenario in several passes, in the round's shuffled
# order then reversed, alternately (A B C C B A A B C ...): the machine's slow spells, and on
# a VM the way a loopback round trip costs ~30 us when client and server share a CPU but
# ~300 us when they do not, then fall on every contender alike instead of on one.
PASSES_1T = 10
PASSES_8T = 2


@dataclass
class Plan:
    rounds: int
    ops: int
    select_ops: int
    connect_ops: int
    window: float
    seed: int
    quick: bool

    def ops_for(self, scenario: Scenario, family: str) -> int:
        if family == "connect":
            return self.connect_ops
        return self.select_ops if scenario.op == "select1" else self.ops

    def passes(self, scenario: Scenario) -> int:
        return PASSES_8T if scenario.windowed else PASSES_1T


@dataclass
class Series:
    ns: list[float] = field(default_factory=list)
    fairness: list[float] = field(default_factory=list)
    ops: list[list[int]] = field(default_factory=list)

    def add(self, samples: list[Sample]) -> None:
        """One round: the passes' operations and time summed; fairness, the mean of the passes'."""
        total = sum(sum(s.ops) for s in samples)
        self.ns.append(sum(s.elapsed_ns for s in samples) / total if total else float("inf"))
        self.ops.append([sum(column) for column in zip(*(s.ops for s in samples))])
        fair = [s.fairness for s in samples if s.fairness is not None]
        if fair:
            self.fairness.append(sum(fair) / len(fair))


def measure(scenario: Scenario, contender: Contender, plan: Plan, scale: float = 1.0) -> Sample:
    """One pass: 1 thread, its share of the round's operations; 8 threads, one whole window
    (a fairness figure needs a window long enough for every thread to have had its turns)."""
    op = make_op(scenario.op, contender.getconn, contender.putconn)
    if scenario.windowed:
        return run_window(op, scenario.threads, plan.window * scale)
    share = scale / plan.passes(scenario)
    return run_ops(op, max(round(plan.ops_for(scenario, contender.family) * share), 1))


def run_rounds(contenders: dict[str, Contender], plan: Plan, progress: Callable[[str], None]
               ) -> dict[str, dict[str, Series]]:
    rng = random.Random(plan.seed)
    results: dict[str, dict[str, Series]] = {s.key: {} for s in SCENARIOS}
    lineup = {s.key: {col: key for col, key in members(s)[0].items() if key in contenders} for s in SCENARIOS}

    # One warm-up round, not recorded: every connection used once, psycopg's prepared statements, caches.
    for scenario in SCENARIOS:
        for key in lineup[scenario.key].values():
            for _ in range(plan.passes(scenario)):
                measure(scenario, contenders[key], plan, scale=0.2)
    gc.collect()
    gc.freeze()  # what setup allocated stays out of the collections during the runs

    for number in range(plan.rounds):
        began = time.monotonic()
        scenarios = SCENARIOS[:]
        rng.shuffle(scenarios)
        for scenario in scenarios:
            columns = list(lineup[scenario.key].items())
            rng.shuffle(columns)
            samples: dict[str, list[Sample]] = {column: [] for column, _ in columns}
            gc.collect()
            for number_of_pass in range(plan.passes(scenario)):
                for column, key in columns if number_of_pass % 2 == 0 else columns[::-1]:
                    samples[column].append(measure(scenario, contenders[key], plan))
            for column, taken in samples.items():
                results[scenario.key].setdefault(column, Series()).add(taken)
        progress(f"round {number + 1}/{plan.rounds} done in {time.monotonic() - began:.1f} s")
    return results


# -- figures --------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired(numerators: list[float], denominators: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerators, denominators) if b]


def summarize(results: dict[str, dict[str, Series]], contenders: dict[str, Contender]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        run, na = members(scenario)
        by_column = results[scenario.key]
        ours = by_column.get("ours")
        rows: dict[str, Any] = {}
        for column, key in run.items():
            series = by_column.get(column)
            if series is None:
                na.setdefault(column, "not measured (diagnostic unavailable with this version of shared.Pool)")
                continue
            ratios = paired(series.ns, ours.ns) if ours else []
            rows[column] = {
                "contender": key,
                "config": contenders[key].config,
                "role": "ours" if column == "ours" else "diagnostic" if column in DIAGNOSTICS else "peer",
                "ns_per_op": spread(series.ns),
                "ratio_to_ours": spread(ratios),
                "fairness": spread(series.fairness),
                "per_round": {"ns_per_op": series.ns, "ratio_to_ours": ratios,
                              "fairness": series.fairness or None, "ops": series.ops},
            }
        scenarios[scenario.key] = {"label": scenario.label, "op": scenario.op, "threads": scenario.threads,
                                   "health_checks": scenario.checks, "pool_size": POOL_SIZE,
                                   "results": rows, "not_applicable": na}
    return scenarios


def derive(scenarios: dict[str, Any]) -> dict[str, Any]:
    def per_round(scenario: str, column: str) -> list[float]:
        row = scenarios[scenario]["results"].get(column)
        return row["per_round"]["ns_per_op"] if row else []

    def median_of(scenario: str, column: str, what: str) -> float | None:
        row = scenarios[scenario]["results"].get(column)
        return row[what]["median"] if row and row[what] else None

    on_off = {key: spread(paired(per_round(key, "ours"), per_round(key, "ours_nocheck")))
              for key in ("checkout_1t", "checkout_8t", "select1_1t", "select1_8t")}
    # (c) against (b), paired by round index: what turning checks on costs each pool as configured.
    c_vs_b = {family: {threads: spread(paired(per_round(f"checked_select1_{threads}", family),
                                              per_round(f"select1_{threads}", family)))
                       for threads in ("1t", "8t")}
              for family in ("ours", "psycopg_pool", "sqlalchemy")}

    goals = []
    for scenario in ("checkout_1t", "checkout_8t"):
        for peer in ("psycopg2", "psycopg_pool"):
            ratio = median_of(scenario, peer, "ratio_to_ours")
            goals.append({"goal": f"checkout + return at most half the cost of {peer}'s ({scenario})",
                          "figure": ratio, "target": f"{peer} / ours >= {GOAL_CHECKOUT_RATIO}",
                          "met": ratio is not None and ratio >= GOAL_CHECKOUT_RATIO})
    for scenario in (s.key for s in SCENARIOS if s.windowed):
        fair = median_of(scenario, "ours", "fairness")
        goals.append({"goal": f"fairness with {THREADS} threads ({scenario})", "figure": fair,
                      "target": f">= {GOAL_FAIRNESS}", "met": fair is not None and fair >= GOAL_FAIRNESS})
    overhead = on_off["select1_8t"]["median"] if on_off["select1_8t"] else None
    goals.append({"goal": "health checks on cost < 5% on a busy pool (select1_8t, ours / ours_nocheck)",
                  "figure": overhead, "target": f"<= {GOAL_CHECK_OVERHEAD}",
                  "met": overhead is not None and overhead <= GOAL_CHECK_OVERHEAD})
    return {"ours_checks_on_vs_off": on_off, "checks_c_vs_b": c_vs_b, "goals": goals}


# -- machine and versions -------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return None


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _libpq(number: int) -> str:
    major, minor = divmod(number, 10000)
    return f"{major}.{minor}" if major >= 10 else f"{major}.{minor // 100}.{minor % 100}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_state() -> dict[str, Any]:
    """Which shared/ was measured: the tree moves, so its commit, dirty files and a content hash."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "shared").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    dirty = _git("status", "--porcelain", "--", "shared")
    return {"git_commit": _git("rev-parse", "HEAD"),
            "shared_dirty_files": [line[3:] for line in dirty.splitlines()] if dirty else [],
            "shared_sha256": digest.hexdigest()}


def machine_info(dsn: str, embedded: bool) -> dict[str, Any]:
    import psycopg
    import psycopg2

    from harness.services import redact_url

    conn = psycopg2.connect(dsn, application_name=f"{APP_NAME}:probe")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            server_version = cur.fetchone()[0]
            cur.execute("SELECT version()")
            server_banner = cur.fetchone()[0]
            cur.execute("SHOW max_connections")
            max_connections = int(cur.fetchone()[0])
    finally:
        conn.close()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory": _mem_total(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "build": " ".join(platform.python_build()), "switch_interval_s": sys.getswitchinterval()},
        "postgresql": {"version": server_version, "banner": server_banner, "max_connections": max_connections,
                       "server": "embedded (harness.services.EmbeddedPostgres)" if embedded
                       else f"DATABASE_URL {redact_url(dsn)}"},
        "packages": {
            "forkpool (ours)": _version("forkpool"),
            "psycopg2-binary": _version("psycopg2-binary", "psycopg2"),
            "psycopg2 libpq": _libpq(psycopg2.__libpq_version__),
            "psycopg": _version("psycopg"),
            "psycopg implementation": psycopg.pq.__impl__,
            "psycopg libpq": _libpq(psycopg.pq.version()),
            "psycopg-pool": _version("psycopg-pool", "psycopg_pool"),
            "sqlalchemy": _version("sqlalchemy", "SQLAlchemy"),
        },
        "source": source_state(),
    }


# -- output ---------------------------------------------------------------------------------


def _ns(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_rows(scenario: dict[str, Any]) -> list[list[str]]:
    rows = []
    order = [c for c in PEERS + DIAGNOSTICS if c in scenario["results"] or c in scenario["not_applicable"]]
    for column in order:
        row = scenario["results"].get(column)
        if row is None:
            rows.append([column, "n/a", "", "", "", "", scenario["not_applicable"][column]])
            continue
        ns, ratio, fair = row["ns_per_op"], row["ratio_to_ours"], row["fairness"]
        name = column + (" *" if row["role"] == "diagnostic" else "")
        if column == "ours":
            ratio_cells = ["1", ""]
        elif ratio:
            ratio_cells = [_ratio(ratio["median"]), f"{_ratio(ratio['min'])}-{_ratio(ratio['max'])}"]
        else:
            ratio_cells = ["-", ""]
        fair_text = f"{fair['median']:.2f} (min {fair['min']:.2f})" if fair else "-"
        rows.append([name, _ns(ns["median"]), f"{_ns(ns['min'])}-{_ns(ns['max'])}", *ratio_cells, fair_text,
                     row["contender"] if row["contender"] != column else ""])
    return rows


HEADERS = ["contender", "median ns/op", "min-max ns/op", "/ ours (paired median)", "/ ours min-max",
           "fairness median (min)", "instance or note"]


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    machine = report["machine"]
    console.print(f"[bold]pool_bench[/] {report['started_utc']}  {machine['cpu_model']}, "
                  f"{machine['cpus_usable']} usable cores, Python {machine['python']['version']}, "
                  f"PostgreSQL {machine['postgresql']['version']}, {report['duration_s']:.0f} s")
    cfg = report["config"]
    console.print(f"rounds {cfg['rounds']}, 1 thread: {cfg['ops']} ops (SELECT 1: {cfg['select_ops']}, connect: "
                  f"{cfg['connect_ops']}) in {PASSES_1T} interleaved passes; 8 threads: {PASSES_8T} passes of "
                  f"{cfg['window_s']} s; seed {cfg['seed']}")
    legend = Table(title="contenders", title_justify="left")
    legend.add_column("instance")
    legend.add_column("configuration")
    for key, contender in report["contenders"].items():
        legend.add_row(key, contender["config"])
    console.print(legend)
    for key, scenario in report["scenarios"].items():
        table = Table(title=f"{scenario['label']}  [{key}]", title_justify="left")
        for header in HEADERS:
            table.add_column(header, justify="left" if header in ("contender", "instance or note") else "right")
        for row in table_rows(scenario):
            table.add_row(*row)
        console.print(table)
    console.print("* diagnostic variant of ours, not a peer. A ratio above 1: the contender costs more than ours.")
    derived = report["derived"]
    table = Table(title="health checks: ours on / off (ours / ours_nocheck, paired)", title_justify="left")
    for header in ("scenario", "median", "min-max"):
        table.add_column(header)
    for key, value in derived["ours_checks_on_vs_off"].items():
        table.add_row(key, _ratio(value and value["median"]),
                      f"{_ratio(value['min'])}-{_ratio(value['max'])}" if value else "-")
    console.print(table)
    table = Table(title="(c) / (b): each pool with its checks on / the same without, paired by round "
                  "(ours: identical settings, i.e. the noise floor)", title_justify="left")
    for header in ("pool", "1 thread", "8 threads"):
        table.add_column(header)
    for family, by_threads in derived["checks_c_vs_b"].items():
        table.add_row(family, *(_ratio(v and v["median"]) for v in by_threads.values()))
    console.print(table)
    table = Table(title="goals", title_justify="left")
    for header in ("goal", "figure", "target", "met"):
        table.add_column(header)
    for goal in derived["goals"]:
        table.add_row(goal["goal"], _figure(goal["figure"]), goal["target"],
                      "[green]yes[/]" if goal["met"] else "[red]NO[/]")
    console.print(table)


def markdown(report: dict[str, Any]) -> str:
    machine, cfg = report["machine"], report["config"]
    lines = [f"# pool_bench {report['started_utc']}", "",
             "The pool against its peers; produced by `python -m benchmarks.pool_bench`. "
             "Figures only, nothing asserted.", ""]
    if cfg["quick"]:
        lines += ["**A --quick run: tiny rounds, the figures mean nothing.**", ""]
    load = " / ".join(", ".join(f"{x:.2f}" for x in machine.get(key) or []) or "-"
                      for key in ("load_average_at_start", "load_average_at_end"))
    lines += ["## Machine", "", "| | |", "|---|---|",
              f"| CPU | {machine['cpu_model']} |",
              f"| cores | {machine['cpu_count']} ({machine['cpus_usable']} usable) |",
              f"| memory | {machine['memory']} |",
              f"| platform | {machine['platform']} |",
              f"| load average (1, 5, 15 min) at start / end | {load} |",
              f"| Python | {machine['python']['version']} ({machine['python']['implementation']}) |",
              f"| PostgreSQL | {machine['postgresql']['version']}, {machine['postgresql']['server']} |"]
    for name, version in machine["packages"].items():
        lines.append(f"| {name} | {version} |")
    source = machine["source"]
    dirty = ", ".join(source["shared_dirty_files"]) or "none"
    lines += [f"| git commit | {source['git_commit']} |",
              f"| shared/ uncommitted changes | {dirty} |",
              f"| shared/*.py sha256 | {source['shared_sha256'][:16]} |", "",
              "## Contenders", "", "| instance | configuration |", "|---|---|"]
    lines += [f"| {key} | {c['config']} |" for key, c in report["contenders"].items()]
    lines += ["", "## Method", "",
              f"{cfg['rounds']} rounds after one warm-up round; in each round the order of scenarios and of "
              f"contenders is shuffled (seed {cfg['seed']}), and each contender is measured in several passes, "
              "the round's order and its reverse alternately (A B C C B A ...), so slow spells of the machine "
              f"fall on all alike. 1 thread: {cfg['ops']} operations per round "
              f"(SELECT 1: {cfg['select_ops']}, connect per operation: {cfg['connect_ops']}) in {PASSES_1T} passes. "
              f"{THREADS} threads on pools of {POOL_SIZE}: {PASSES_8T} passes a round, in each all threads run "
              f"for {cfg['window_s']} s; "
              "ns/op = wall time / operations completed; fairness = fewest operations any thread "
              "completed / mean per thread (mean of the passes). Ratio to ours: contender / ours within each round, median "
              "(min-max) over rounds. SELECT 1 operations commit before returning the connection. "
              f"Total run time {report['duration_s']:.0f} s.", ""]
    for key, scenario in report["scenarios"].items():
        lines += [f"## {scenario['label']} (`{key}`)", "", "| " + " | ".join(HEADERS) + " |",
                  "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in table_rows(scenario)]
        lines.append("")
    lines += ["\\* diagnostic variant of ours, not a peer. A ratio above 1: the contender costs more than ours.",
              "", "## Health checks", "",
              "Ours on / off: `ours` (default settings) against `ours_nocheck` (its pre-use check removed), "
              "paired by round.", "", "| scenario | median | min-max |", "|---|---|---|"]
    derived = report["derived"]
    for key, value in derived["ours_checks_on_vs_off"].items():
        lines.append(f"| {key} | {_ratio(value and value['median'])} | "
                     f"{_ratio(value['min']) + '-' + _ratio(value['max']) if value else '-'} |")
    lines += ["", "(c) / (b): each pool with its checks on against the same pool without, paired by round "
              "index. Ours has the same settings in both: its figure is the noise floor.", "", "| pool | 1 thread | 8 threads |", "|---|---|---|"]
    for family, by_threads in derived["checks_c_vs_b"].items():
        lines.append(f"| {family} | " + " | ".join(_ratio(v and v["median"]) for v in by_threads.values()) + " |")
    lines += ["", "## Goals", "", "| goal | figure | target | met |", "|---|---|---|---|"]
    for goal in derived["goals"]:
        lines.append(f"| {goal['goal']} | {_figure(goal['figure'])} | {goal['target']} | "
                     f"{'yes' if goal['met'] else '**no**'} |")
    lines += ["", "## Reading the figures", "",
              "- Checkout + return alone with 8 threads is mostly a test of the GIL: a pool whose fast path "
              "never releases it runs one thread at a time in 5 ms slices and finds its connections all "
              "taken less often; one that releases it (a syscall) interleaves threads finely, queues nearly "
              "every checkout and pays a thread wake-up per handoff. Fairness there also depends on the "
              "window length, for the same reason.",
              "- With SELECT 1, every pool sees real contention: fairness near 0 means threads starved while "
              "others re-took the connection they had just returned (LIFO, no queue).",
              "- A 1-thread SELECT 1 costs a loopback round trip per statement; on a VM that cost changes "
              "several-fold with whether the client and its backend run on the same CPU, hence the wide "
              "min-max. The 8-thread figures are steadier.",
              "- (c) / (b) for ours compares identical settings: read it as the noise floor of the run.", ""]
    return "\n".join(lines)


def write_results(report: dict[str, Any], out: Path, stamp: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"pool_bench_{stamp}.json"
    md_path = out / f"pool_bench_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


# -- command --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pool_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help=f"measured rounds (default {DEFAULTS['rounds']})")
    parser.add_argument("--ops", type=int, help="operations per round for 1-thread checkout + return "
                        f"(default {DEFAULTS['ops']}); SELECT 1 uses ops/40, connect-per-operation ops/700")
    parser.add_argument("--select-ops", type=int, help="operations per round for 1-thread SELECT 1 (default ops/40)")
    parser.add_argument("--connect-ops", type=int, help="operations per round for connect per operation "
                        "(default ops/700)")
    parser.add_argument("--window", type=float, help="seconds each pass of an 8-thread run lasts, "
                        f"{PASSES_8T} passes a round (default {DEFAULTS['window']})")
    parser.add_argument("--quick", action="store_true", help="tiny rounds: checks that everything runs, "
                        "figures meaningless")
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
    plan = Plan(rounds=args.rounds, ops=args.ops, select_ops=args.select_ops, connect_ops=args.connect_ops,
                window=args.window, seed=args.seed, quick=args.quick)
    started_at = datetime.now(timezone.utc)
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
        machine = machine_info(dsn, embedded)
        progress("opening pools")
        contenders = build_contenders(dsn, stack)
        progress(f"{plan.rounds} rounds x {len(SCENARIOS)} scenarios")
        results = run_rounds(contenders, plan, progress)
        ours_stats = {key: c.pool.stats() for key, c in contenders.items() if c.pool is not None}
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    scenarios = summarize(results, contenders)
    report = {
        "benchmark": "pool_bench",
        "format": 1,
        "started_utc": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - began, 1),
        "config": {"rounds": plan.rounds, "ops": plan.ops, "select_ops": plan.select_ops,
                   "connect_ops": plan.connect_ops, "window_s": plan.window, "threads": THREADS,
                   "pool_size": POOL_SIZE, "seed": plan.seed, "quick": plan.quick},
        "machine": machine,
        "contenders": {key: {"family": c.family, "config": c.config} for key, c in contenders.items()},
        "scenarios": scenarios,
        "derived": derive(scenarios),
        "ours_pool_stats": ours_stats,
    }
    print_report(report)
    json_path, md_path = write_results(report, args.out, started_at.strftime("%Y-%m-%dT%H%M%SZ"))
    print(f"results: {json_path}\n         {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
