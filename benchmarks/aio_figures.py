"""aio_bench's figures: medians, ratios to ours paired by round, the A/A control, and the goals.

A verdict is "inconclusive" when the run cannot tell the figure from its target: the target lies
inside the 90 % bootstrap interval of the median of the per-round ratios, or the A/A control
(ours_b / ours, two identical pools) is further from 1 than the figure is from its target.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from .aio_contenders import POOL_SIZE, AioContender
from .aio_scenarios import CONTROL, DIAGNOSTICS, FLOORS, SCENARIOS, TASKS, members_of
from .figures import paired, spread
from .scenarios import Series

GOAL_PSYCOPG_POOL = 2.0  # psycopg_pool / ours >= 2: ours at most half its cost
GOAL_ASYNCPG = 1.0  # asyncpg / ours >= 1: ours no dearer than asyncpg's pool
GOAL_FAIRNESS = 0.9


def summarize(results: dict[str, dict[str, Series]], contenders: dict[str, AioContender]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        by_column = results[scenario.key]
        ours = by_column.get("ours")
        rows: dict[str, Any] = {}
        for column in members_of(contenders, scenario.key):
            series = by_column.get(column)
            if series is None:
                continue
            ratios = paired(series.ns, ours.ns) if ours else []
            rows[column] = {
                "config": contenders[column].config,
                "family": contenders[column].family,
                "role": "ours"
                if column == "ours"
                else "control"
                if column == CONTROL
                else "diagnostic"
                if column in DIAGNOSTICS
                else "floor"
                if column in FLOORS
                else "peer",
                "ns_per_op": spread(series.ns),
                "ratio_to_ours": spread(ratios),
                "fairness": spread(series.fairness),
                "per_round": {
                    "ns_per_op": series.ns,
                    "ratio_to_ours": ratios,
                    "fairness": series.fairness or None,
                    "ops": series.ops,
                },
            }
        scenarios[scenario.key] = {
            "label": scenario.label,
            "op": scenario.op,
            "tasks": scenario.tasks,
            "pool_size": POOL_SIZE,
            "results": rows,
        }
    return scenarios


BOOTSTRAP = 2000


def median_interval(values: list[float], seed: int = 0) -> tuple[float, float] | None:
    """90 % bootstrap interval of the median of `values` (resampled with replacement; seeded: reproducible)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    return medians[int(0.05 * BOOTSTRAP)], medians[int(0.95 * BOOTSTRAP) - 1]


def verdict(
    figure: float | None, target: float, noise: float | None, interval: tuple[float, float] | None = None
) -> str:
    """yes / no against `target` (figure >= target is met); inconclusive when the target is inside the
    interval, or the A/A noise covers the gap."""
    if figure is None:
        return "not measured"
    if interval is not None and interval[0] <= target <= interval[1]:
        return "inconclusive"
    if noise is not None and abs(figure - target) / target <= noise:
        return "inconclusive"
    return "yes" if figure >= target else "no"


def derive(scenarios: dict[str, Any]) -> dict[str, Any]:
    def median_of(scenario: str, column: str, what: str) -> float | None:
        row = scenarios[scenario]["results"].get(column)
        return row[what]["median"] if row and row[what] else None

    def per_round(scenario: str, column: str) -> list[float]:
        row = scenarios[scenario]["results"].get(column)
        return row["per_round"]["ns_per_op"] if row else []

    control = {key: scenarios[key]["results"].get(CONTROL, {}).get("ratio_to_ours") for key in scenarios}
    # (b), 1 task: each pool's cost above its driver alone (ns, paired by round), and the drivers' ratio.
    above_floor = {
        column: spread(
            [a - b for a, b in zip(per_round("select1_1task", column), per_round("select1_1task", floor), strict=False)]
        )
        for floor, columns in FLOORS.items()
        for column in columns
    }
    drivers = spread(paired(per_round("select1_1task", "floor_psycopg"), per_round("select1_1task", "floor_asyncpg")))
    noise = {key: abs(value["median"] - 1.0) if value else None for key, value in control.items()}

    goals = []
    for scenario in SCENARIOS:
        key = scenario.key
        for peer, target, reading in (
            ("psycopg_pool", GOAL_PSYCOPG_POOL, "at most half the cost of"),
            ("asyncpg", GOAL_ASYNCPG, "no dearer than"),
            ("asyncpg_noreset", GOAL_ASYNCPG, "no dearer than"),
        ):
            ratio = median_of(key, peer, "ratio_to_ours")
            row = scenarios[key]["results"].get(peer)
            interval = median_interval(row["per_round"]["ratio_to_ours"]) if row else None
            says = verdict(ratio, target, noise[key], interval)
            goals.append(
                {
                    "goal": f"ours {reading} {peer} ({key})",
                    "scenario": key,
                    "peer": peer,
                    "figure": ratio,
                    "interval_90": interval,
                    "target": f"{peer} / ours >= {target:g}",
                    "aa_noise": noise[key],
                    "verdict": says,
                    "met": says == "yes",
                }
            )
        if scenario.windowed:
            fair = median_of(key, "ours", "fairness")
            met = fair is not None and fair >= GOAL_FAIRNESS
            goals.append(
                {
                    "goal": f"fairness with {TASKS} tasks ({key})",
                    "scenario": key,
                    "peer": None,
                    "figure": fair,
                    "interval_90": None,
                    "target": f">= {GOAL_FAIRNESS}",
                    "aa_noise": None,
                    "verdict": "yes" if met else "no",
                    "met": met,
                }
            )
    return {"aa_control": control, "above_floor_ns": above_floor, "floor_psycopg_over_asyncpg": drivers, "goals": goals}
