"""aio_bench's scenarios and how they are timed: operations, passes, rounds, fairness, in one event loop.

As pool_bench's, in asyncio terms: 1 task runs a fixed number of operations; 50 tasks on the
pool of 5 all run for a fixed window, counted from SETTLE after they are released (cost = window
/ operations completed, fairness = fewest operations any task completed / mean per task).

One asyncio point: a coroutine that never suspends never lets another task run. An idle checkout
and a clean return suspend in none of these pools (asyncpg's release does: it runs in a shielded
task), so with 50 tasks a bare acquire + release would be one task looping alone while the
window's timer never fires. Scenario (a) with 50 tasks therefore yields once while holding the
connection (``await asyncio.sleep(0)``), standing for the work a task does with it; with 1 task
there is nothing to yield to and (a) is acquire + release alone. Scenario (b) suspends on I/O.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .aio_contenders import AioContender
from .machine import load_average
from .scenarios import Sample, Series

TASKS = 50
SETTLE = 0.05
PASSES_1 = 10  # passes a round with 1 task, sharing the round's operations
PASSES_N = 2  # passes a round with 50 tasks, one window each


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    op: str  # "checkout" | "select1"
    tasks: int

    @property
    def windowed(self) -> bool:
        return self.tasks > 1


SCENARIOS: list[Scenario] = [
    Scenario("checkout_1task", "(a) acquire + release, 1 task", "checkout", 1),
    Scenario("checkout_50tasks", f"(a) acquire + yield once + release, {TASKS} tasks, pool of 5", "checkout", TASKS),
    Scenario("select1_1task", "(b) acquire + BEGIN; SELECT 1; COMMIT + release, 1 task", "select1", 1),
    Scenario(
        "select1_50tasks",
        f"(b) acquire + BEGIN; SELECT 1; COMMIT + release, {TASKS} tasks, pool of 5",
        "select1",
        TASKS,
    ),
]
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}

PEERS = ["psycopg_pool", "asyncpg"]
CONTROL = "ours_b"  # A/A: a second instance of ours
DIAGNOSTICS = ["asyncpg_noreset"]
FLOORS = {"floor_psycopg": ("ours", "psycopg_pool", CONTROL), "floor_asyncpg": ("asyncpg", "asyncpg_noreset")}
COLUMNS = ["ours", *PEERS, CONTROL, *DIAGNOSTICS, *FLOORS]


def members_of(contenders: dict[str, Any], scenario: str | None = None) -> list[str]:
    """The columns measured (in `scenario`, if given), in report order."""
    return [
        c
        for c in COLUMNS
        if c in contenders and (scenario is None or not contenders[c].only or scenario in contenders[c].only)
    ]


def make_op(kind: str, contender: AioContender, hold_yield: bool) -> Callable[[], Awaitable[None]]:
    getconn, putconn, transaction = contender.getconn, contender.putconn, contender.transaction
    if kind == "checkout" and hold_yield:

        async def checkout_yield() -> None:
            conn = await getconn()
            try:
                await asyncio.sleep(0)  # the task's "work": lets the other tasks run
            finally:
                await putconn(conn)

        return checkout_yield

    if kind == "checkout":

        async def checkout() -> None:
            await putconn(await getconn())

        return checkout

    async def select1() -> None:
        conn = await getconn()
        try:
            await transaction(conn)
        finally:
            await putconn(conn)

    return select1


async def run_ops(op: Callable[[], Awaitable[None]], n: int) -> Sample:
    """`n` operations in this task."""
    started = time.perf_counter_ns()
    for _ in range(n):
        await op()
    elapsed = time.perf_counter_ns() - started
    return Sample(elapsed / n, [n], elapsed)


async def run_window(op: Callable[[], Awaitable[None]], tasks: int, window: float, settle: float = SETTLE) -> Sample:
    """`tasks` tasks released together, running `op`; counted over `window` seconds after `settle`."""
    counts = [0] * tasks
    stop = [False]
    go = asyncio.Event()

    async def worker(index: int) -> None:
        await go.wait()
        while not stop[0]:
            await op()
            counts[index] += 1

    workers = [asyncio.create_task(worker(i), name=f"bench-{i}") for i in range(tasks)]
    await asyncio.sleep(0)  # every worker reaches go.wait()
    go.set()
    try:
        await asyncio.sleep(settle)
        started, before = time.perf_counter_ns(), counts[:]
        await asyncio.sleep(window)
        after, elapsed = counts[:], time.perf_counter_ns() - started
    finally:
        stop[0] = True
        await asyncio.gather(*workers)  # raises the first worker's error, if any
    done = [end - begin for begin, end in zip(before, after, strict=False)]
    total = sum(done)
    return Sample(elapsed / total if total else float("inf"), done, elapsed)


@dataclass
class Plan:
    rounds: int
    ops: int
    select_ops: int
    window: float
    seed: int
    quick: bool

    def ops_for(self, scenario: Scenario, contender: AioContender) -> int:
        """1 task: operations per round; a round trip per operation (SELECT 1, asyncpg's reset) takes fewer."""
        return self.select_ops if scenario.op == "select1" or contender.release_round_trip else self.ops

    def passes(self, scenario: Scenario) -> int:
        return PASSES_N if scenario.windowed else PASSES_1


async def measure(scenario: Scenario, contender: AioContender, plan: Plan, scale: float = 1.0) -> Sample:
    op = make_op(scenario.op, contender, hold_yield=scenario.windowed)
    if scenario.windowed:
        return await run_window(op, scenario.tasks, plan.window * scale)
    share = scale / plan.passes(scenario)
    return await run_ops(op, max(round(plan.ops_for(scenario, contender) * share), 1))


async def run_rounds(
    contenders: dict[str, AioContender], plan: Plan, progress: Callable[[str], None]
) -> tuple[dict[str, dict[str, Series]], list[dict[str, Any]]]:
    """Every round's series per scenario and column, and per round its duration and the load after it."""
    rng = random.Random(plan.seed)
    results: dict[str, dict[str, Series]] = {s.key: {} for s in SCENARIOS}
    lineup = {s.key: members_of(contenders, s.key) for s in SCENARIOS}
    rounds: list[dict[str, Any]] = []

    # One warm-up round, not recorded: every connection used, psycopg's prepared statements, asyncpg's cache.
    for scenario in SCENARIOS:
        for column in lineup[scenario.key]:
            for _ in range(plan.passes(scenario)):
                await measure(scenario, contenders[column], plan, scale=0.2)
    gc.collect()
    gc.freeze()

    for number in range(plan.rounds):
        began = time.monotonic()
        scenarios = SCENARIOS[:]
        rng.shuffle(scenarios)
        for scenario in scenarios:
            order = lineup[scenario.key][:]
            rng.shuffle(order)
            samples: dict[str, list[Sample]] = {column: [] for column in order}
            gc.collect()
            for number_of_pass in range(plan.passes(scenario)):
                for column in order if number_of_pass % 2 == 0 else order[::-1]:
                    samples[column].append(await measure(scenario, contenders[column], plan))
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
