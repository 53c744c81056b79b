"""pool_bench's figures: medians, ratios paired by round, the derived on/off ratios and the goals."""

from __future__ import annotations

import statistics
from typing import Any

from .contenders import POOL_SIZE, Contender
from .scenarios import DIAGNOSTICS, SCENARIOS, THREADS, Series, members

GOAL_CHECKOUT_RATIO = 2.0  # peers' checkout + return should cost at least twice ours
GOAL_FAIRNESS = 0.9
GOAL_CHECK_OVERHEAD = 1.05  # checks on / off on a busy pool


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
                na.setdefault(column, "not measured (diagnostic unavailable with this version of forkpool.Pool)")
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
