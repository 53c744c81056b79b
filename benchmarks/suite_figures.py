"""The suite benchmark's figures: medians over rounds, ratios to the floor paired by round,
start-up per process, memory per worker process, and the goals met or not."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .figures import paired, spread

GOAL_FLOOR_RATIO = 0.95  # the pool within 5% of the floor
GOAL_CPU_RATIO = 1.05  # the same, read as the workers' CPU time per request
GOAL_CONNECT_RATIO = 5.0  # "many times faster" than connect-per-request, set before the first run
_CLASS_ORDER = ["sync", "gthread", "asgi"]  # the goals' order (web worker classes)


def _series(rounds: list[dict[str, Any]], what: str) -> list[float]:
    return [r[what] for r in rounds]


def ratios(numerators: list[float], denominators: list[float]) -> dict[str, Any] | None:
    """Paired ratios by round: median, min, max, and the ratios themselves."""
    found = paired(numerators, denominators)
    summary = spread(found)
    return None if summary is None else {**summary, "per_round": found}


def noise(control: dict[str, Any] | None) -> float | None:
    """What an A/A control (an identical server / the floor) says about the run's noise, relative:
    the larger of its median's distance from 1 and the standard error of a median of that many
    rounds (1.253 x standard deviation / sqrt(rounds))."""
    if not control:
        return None
    values = control["per_round"]
    error = 1.253 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return max(abs(control["median"] - 1), error)


def summarize_throughput(phase: dict[str, Any], rate: str, latencies: bool) -> dict[str, Any]:
    """Per variant: medians (min-max) over rounds, and ratios to the same worker class's
    floor and connect variants, paired by round."""
    rounds = phase["rounds"]
    out: dict[str, Any] = {}
    for key, taken in rounds.items():
        worker_class = key.split("/")[0]
        row: dict[str, Any] = {rate: spread(_series(taken, rate))}
        for other in ("floor", "connect"):
            base = rounds.get(f"{worker_class}/{other}", [])
            row[f"{rate}_to_{other}"] = ratios(_series(taken, rate), _series(base, rate))
        if latencies:
            floor = rounds.get(f"{worker_class}/floor", [])
            for what in ("p50_ms", "p99_ms", "worker_cpu_us_per_request"):
                row[what] = spread(_series(taken, what))
                row[f"{what}_to_floor"] = ratios(_series(taken, what), _series(floor, what))
            row["requests"] = sum(r["requests"] for r in taken)
            row["errors"] = sum(r["errors"] for r in taken)
        else:
            row["tasks"] = sum(r["tasks"] for r in taken)
            row["rows_written"] = sum(r["rows_written"] for r in taken)
        out[key] = row
    return out


def summarize_startup(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server and variant: the hook's time per process, how many connections it held at the end."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(f"{record['server']} {record['variant']}", []).append(record)
    return {
        name: {
            "processes": len(group),
            "ms": spread([r["ms"] for r in group]),
            "pool_sizes": sorted({r["pool_size"] for r in group}),
            "all_full": all(r["full"] for r in group),
            "per_process": [{k: r[k] for k in ("pid", "phase", "ms", "pool_size", "full")} for r in group],
        }
        for name, group in groups.items()
    }


def summarize_memory(footprint: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    medians = {key: statistics.median(v["rss_kib"].values()) if v["rss_kib"] else None for key, v in footprint.items()}
    for key, value in footprint.items():
        floor = medians.get(f"{key.split('/')[0]}/floor")
        mine = medians[key]
        out[key] = {
            "rss_kib": spread(list(value["rss_kib"].values())),
            "per_process_kib": {str(pid): rss for pid, rss in value["rss_kib"].items()},
            "vs_floor_kib": None if mine is None or floor is None else mine - floor,
            "sessions": value["sessions"],
        }
    return out


def _median(row: dict[str, Any] | None, what: str) -> float | None:
    value = (row or {}).get(what)
    return value["median"] if value else None


def verdict(
    figure: float | None, target: float, noise_level: float | None, higher_is_better: bool = True
) -> tuple[bool | None, str]:
    """Met or not; neither when the figure is closer to the target than the run's noise."""
    if figure is None:
        return None, "not measured"
    if noise_level is not None and abs(figure - target) < noise_level * target:
        return None, f"inconclusive: within the run's noise ({noise_level:.1%}, A/A control)"
    met = figure >= target if higher_is_better else figure <= target
    return met, "yes" if met else "NO"


def _goal(
    goal: str, figure: float | None, target: float, noise_level: float | None, higher_is_better: bool = True
) -> dict[str, Any]:
    met, text = verdict(figure, target, noise_level, higher_is_better)
    return {
        "goal": goal,
        "figure": figure,
        "target": f"{'>=' if higher_is_better else '<='} {target}",
        "met": met,
        "verdict": text,
        "noise": noise_level,
    }


def goals(web: dict[str, Any], celery: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for worker_class in sorted({key.split("/")[0] for key in web}, key=_CLASS_ORDER.index):
        pool, control = web.get(f"{worker_class}/pool"), web.get(f"{worker_class}/floor-b") or {}
        rate_noise = noise(control.get("rps_to_floor"))
        found.append(
            _goal(
                f"web {worker_class}: pool within 5% of the floor (req/s, pool / floor)",
                _median(pool, "rps_to_floor"),
                GOAL_FLOOR_RATIO,
                rate_noise,
            )
        )
        found.append(
            _goal(
                f"web {worker_class}: pool within 5% of the floor (workers' CPU per request, pool / floor)",
                _median(pool, "worker_cpu_us_per_request_to_floor"),
                GOAL_CPU_RATIO,
                noise(control.get("worker_cpu_us_per_request_to_floor")),
                higher_is_better=False,
            )
        )
        found.append(
            _goal(
                f"web {worker_class}: pool many times faster than connect-per-request (req/s, pool / connect)",
                _median(pool, "rps_to_connect"),
                GOAL_CONNECT_RATIO,
                rate_noise,
            )
        )
    if not celery:
        return found  # no Celery phase
    found.append(
        _goal(
            "celery: pool within 5% of the floor (tasks/s, pool / floor; the web goal applied to tasks; "
            "no A/A control)",
            _median(celery.get("prefork/pool"), "tasks_per_s_to_floor"),
            GOAL_FLOOR_RATIO,
            None,
        )
    )
    return found
