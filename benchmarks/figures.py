"""pool_bench's figures: medians, ratios paired by round, the derived on/off ratios and the goals."""

from __future__ import annotations

import statistics
from typing import Any

from .contenders import POOL_SIZE, Contender
from .scenarios import DIAGNOSTICS, OURS_PSYCOPG, PSYCOPG3_COLUMNS, SCENARIOS, THREADS, Series, members

GOAL_CHECKOUT_RATIO = 2.0  # peers' checkout + return should cost at least twice ours
GOAL_FAIRNESS = 0.9
GOAL_CHECK_OVERHEAD = 1.05  # checks on / off on a busy pool


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired(numerators: list[float], denominators: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerators, denominators, strict=False) if b]


def summarize(results: dict[str, dict[str, Series]], contenders: dict[str, Contender]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        run, na = members(scenario)
        by_column = results[scenario.key]
        ours = by_column.get("ours")
        ours_psycopg = by_column.get(OURS_PSYCOPG)  # psycopg 3 columns are paired against this one too
        rows: dict[str, Any] = {}
        for column, key in run.items():
            series = by_column.get(column)
            if series is None:
                na.setdefault(column, "not measured (diagnostic unavailable with this version of forkpool.Pool)")
                continue
            ratios = paired(series.ns, ours.ns) if ours else []
            same_driver = paired(series.ns, ours_psycopg.ns) if ours_psycopg and column in PSYCOPG3_COLUMNS else []
            rows[column] = {
                "contender": key,
                "config": contenders[key].config,
                "role": "ours"
                if column in ("ours", OURS_PSYCOPG)
                else "diagnostic"
                if column in DIAGNOSTICS
                else "peer",
                "driver": "psycopg 3" if column in PSYCOPG3_COLUMNS else "psycopg2",
                "ns_per_op": spread(series.ns),
                "ratio_to_ours": spread(ratios),
                "ratio_to_ours_psycopg": spread(same_driver),
                "fairness": spread(series.fairness),
                "per_round": {
                    "ns_per_op": series.ns,
                    "ratio_to_ours": ratios,
                    "ratio_to_ours_psycopg": same_driver or None,
                    "fairness": series.fairness or None,
                    "ops": series.ops,
                },
            }
        scenarios[scenario.key] = {
            "label": scenario.label,
            "op": scenario.op,
            "threads": scenario.threads,
            "health_checks": scenario.checks,
            "pool_size": POOL_SIZE,
            "results": rows,
            "not_applicable": na,
        }
    return scenarios


def derive(scenarios: dict[str, Any]) -> dict[str, Any]:
    def per_round(scenario: str, column: str) -> list[float]:
        row = scenarios[scenario]["results"].get(column)
        return row["per_round"]["ns_per_op"] if row else []

    def median_of(scenario: str, column: str, what: str) -> float | None:
        row = scenarios[scenario]["results"].get(column)
        return row[what]["median"] if row and row[what] else None

    plain = ("checkout_1t", "checkout_8t", "select1_1t", "select1_8t")
    on_off = {key: spread(paired(per_round(key, "ours"), per_round(key, "ours_nocheck"))) for key in plain}
    on_off_psycopg = {
        key: spread(paired(per_round(key, OURS_PSYCOPG), per_round(key, "ours_psycopg_nocheck"))) for key in plain
    }
    # (c) against (b), paired by round index: what turning checks on costs each pool as configured.
    c_vs_b = {
        family: {
            threads: spread(
                paired(per_round(f"checked_select1_{threads}", family), per_round(f"select1_{threads}", family))
            )
            for threads in ("1t", "8t")
        }
        for family in ("ours", OURS_PSYCOPG, "psycopg_pool", "sqlalchemy")
    }

    goals = []

    def goal(driver: str, text: str, figure: float | None, target: str, met: bool) -> None:
        goals.append({"driver": driver, "goal": text, "figure": figure, "target": target, "met": met})

    # psycopg2: ours (on psycopg2) against each peer, as since the first run.
    for scenario in ("checkout_1t", "checkout_8t"):
        for peer in ("psycopg2", "psycopg_pool"):
            ratio = median_of(scenario, peer, "ratio_to_ours")
            goal(
                "psycopg2",
                f"checkout + return at most half the cost of {peer}'s ({scenario})",
                ratio,
                f"{peer} / ours >= {GOAL_CHECKOUT_RATIO}",
                ratio is not None and ratio >= GOAL_CHECKOUT_RATIO,
            )
    for scenario in (s.key for s in SCENARIOS if s.windowed):
        fair = median_of(scenario, "ours", "fairness")
        goal(
            "psycopg2",
            f"fairness with {THREADS} threads ({scenario})",
            fair,
            f">= {GOAL_FAIRNESS}",
            fair is not None and fair >= GOAL_FAIRNESS,
        )
    overhead = on_off["select1_8t"]["median"] if on_off["select1_8t"] else None
    goal(
        "psycopg2",
        "health checks on cost < 5% on a busy pool (select1_8t, ours / ours_nocheck)",
        overhead,
        f"<= {GOAL_CHECK_OVERHEAD}",
        overhead is not None and overhead <= GOAL_CHECK_OVERHEAD,
    )

    # psycopg 3: ours on psycopg 3 against psycopg_pool, the same driver on both sides, paired per round.
    for scenario in ("checkout_1t", "checkout_8t"):
        ratio = median_of(scenario, "psycopg_pool", "ratio_to_ours_psycopg")
        goal(
            "psycopg 3",
            f"checkout + return at most half the cost of psycopg_pool's ({scenario})",
            ratio,
            f"psycopg_pool / ours_psycopg >= {GOAL_CHECKOUT_RATIO}",
            ratio is not None and ratio >= GOAL_CHECKOUT_RATIO,
        )
    for scenario in (s.key for s in SCENARIOS if s.windowed):
        fair = median_of(scenario, OURS_PSYCOPG, "fairness")
        goal(
            "psycopg 3",
            f"fairness with {THREADS} threads ({scenario}, ours_psycopg)",
            fair,
            f">= {GOAL_FAIRNESS}",
            fair is not None and fair >= GOAL_FAIRNESS,
        )
    overhead = on_off_psycopg["select1_8t"]["median"] if on_off_psycopg["select1_8t"] else None
    goal(
        "psycopg 3",
        "health checks on cost < 5% on a busy pool (select1_8t, ours_psycopg / ours_psycopg_nocheck)",
        overhead,
        f"<= {GOAL_CHECK_OVERHEAD}",
        overhead is not None and overhead <= GOAL_CHECK_OVERHEAD,
    )
    return {
        "ours_checks_on_vs_off": on_off,
        "ours_psycopg_checks_on_vs_off": on_off_psycopg,
        "checks_c_vs_b": c_vs_b,
        "goals": goals,
    }
