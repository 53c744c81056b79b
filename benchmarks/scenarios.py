"""pool_bench's scenarios and how they are timed: operations, passes, rounds, fairness.

A round measures each contender of a scenario in several passes, in the round's shuffled
order then reversed, alternately; 1 thread runs a fixed number of operations, 8 threads all
run for a fixed window, counted from SETTLE after they are released (cost = window / operations
completed, fairness = fewest operations any thread completed / mean per thread).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .contenders import Contender
from .machine import load_average

THREADS = 8


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
    Scenario("checked_select1_1t", "(c) health checks on: checkout + SELECT 1 + return, 1 thread", "select1", 1, True),
    Scenario(
        "checked_select1_8t",
        "(c) health checks on: checkout + SELECT 1 + return, 8 threads, pool of 5",
        "select1",
        THREADS,
        True,
    ),
]
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}

# Column (how a contender is named in the results) -> instance measured, per kind of scenario.
PEERS = ["ours", "psycopg2", "psycopg_pool", "sqlalchemy", "connect"]
# ours on psycopg 3: not a peer but a second reference, the one psycopg_pool is paired against.
OURS_PSYCOPG = "ours_psycopg"
DIAGNOSTICS = ["ours_nocheck", "ours_check_always", "ours_psycopg_nocheck"]
# The columns on psycopg 3, each also reported as a ratio to OURS_PSYCOPG (the same driver on both sides).
PSYCOPG3_COLUMNS = (OURS_PSYCOPG, "psycopg_pool", "ours_psycopg_nocheck")
COLUMN_ORDER = ["ours", OURS_PSYCOPG, *PEERS[1:], *DIAGNOSTICS]


def members(scenario: Scenario) -> tuple[dict[str, str], dict[str, str]]:
    """(column -> contender instance measured, column -> why not applicable)."""
    if scenario.checks:
        run = {
            "ours": "ours",
            OURS_PSYCOPG: OURS_PSYCOPG,
            "ours_check_always": "ours_check_always",
            "psycopg_pool": "psycopg_pool_check",
            "sqlalchemy": "sqlalchemy_pre_ping",
        }
        na = {
            "psycopg2": "psycopg2.pool has no health check",
            "connect": "nothing to check: fresh connection each time (see (b))",
        }
        return run, na
    run = {
        "ours": "ours",
        "ours_nocheck": "ours_nocheck",
        OURS_PSYCOPG: OURS_PSYCOPG,
        "ours_psycopg_nocheck": "ours_psycopg_nocheck",
        "psycopg2": "psycopg2",
        "psycopg_pool": "psycopg_pool",
        "sqlalchemy": "sqlalchemy",
    }
    na: dict[str, str] = {}
    if scenario.op == "select1":
        run["connect"] = "connect"
    else:
        na["connect"] = "SELECT 1 scenarios only"
    return run, na


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


# Threads released by the barrier start one at a time, as each gets the GIL: the first can run
# alone for a whole switch interval (5 ms) per latecomer before all are in the loop. The window
# is measured from SETTLE after the release, so it counts the pool, not the threads' start-up.
SETTLE = 0.05


def run_window(op: Callable[[], None], threads: int, window: float, settle: float = SETTLE) -> Sample:
    """`threads` threads released together, running `op`; counted over `window` seconds after `settle`."""
    counts = [0] * threads  # each thread's own slot: no lock, read by the main thread
    stop = [False]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            while not stop[0]:
                op()
                counts[index] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            stop[0] = True

    workers = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    time.sleep(settle)
    started, before = time.perf_counter_ns(), counts[:]
    time.sleep(window)
    after, elapsed = counts[:], time.perf_counter_ns() - started
    stop[0] = True
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    done = [end - begin for begin, end in zip(before, after, strict=False)]
    total = sum(done)
    return Sample(elapsed / total if total else float("inf"), done, elapsed)


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
        self.ops.append([sum(column) for column in zip(*(s.ops for s in samples), strict=False)])
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


def run_rounds(
    contenders: dict[str, Contender], plan: Plan, progress: Callable[[str], None]
) -> tuple[dict[str, dict[str, Series]], list[dict[str, Any]]]:
    """Every round's series per scenario and column, and per round its duration and the load average after it."""
    rng = random.Random(plan.seed)
    rounds: list[dict[str, Any]] = []
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
        load = load_average()
        rounds.append(
            {
                "seconds": round(time.monotonic() - began, 2),
                "load_average": [round(x, 2) for x in load] if load else None,
            }
        )
        progress(
            f"round {number + 1}/{plan.rounds} done in {rounds[-1]['seconds']:.1f} s, "
            f"load {(rounds[-1]['load_average'] or ['?'])[0]}"
        )
    return results, rounds
