"""aio_bench's output: rich tables on stdout and the Markdown page (what it shares with pool_bench: peer_bench.py)."""

from __future__ import annotations

from typing import Any

from . import peer_bench
from .aio_contenders import POOL_SIZE
from .aio_scenarios import COLUMNS, PASSES_1, PASSES_N, TASKS
from .peer_bench import fmt_figure, fmt_ns, fmt_ratio, ratio_cells

HEADERS = [
    "contender",
    "median ns/op",
    "min-max ns/op",
    "/ ours (paired median)",
    "/ ours min-max",
    "fairness median (min)",
]
GOAL_HEADERS = ["goal", "figure", "90 % interval", "target", "A/A noise", "met"]


def table_rows(scenario: dict[str, Any]) -> list[list[str]]:
    rows = []
    for column in (c for c in COLUMNS if c in scenario["results"]):
        row = scenario["results"][column]
        ns, ratio, fair = row["ns_per_op"], row["ratio_to_ours"], row["fairness"]
        name = column + {"control": " (A/A)", "diagnostic": " *", "floor": " (no pool)"}.get(row["role"], "")
        ours_cells = ratio_cells(ratio, column == "ours")
        fair_text = f"{fair['median']:.2f} (min {fair['min']:.2f})" if fair else "-"
        rows.append([name, fmt_ns(ns["median"]), f"{fmt_ns(ns['min'])}-{fmt_ns(ns['max'])}", *ours_cells, fair_text])
    return rows


def goal_rows(derived: dict[str, Any]) -> list[list[str]]:
    return [
        [
            g["goal"],
            fmt_figure(g["figure"]),
            f"{fmt_figure(g['interval_90'][0])}-{fmt_figure(g['interval_90'][1])}" if g.get("interval_90") else "-",
            g["target"],
            "-" if g["aa_noise"] is None else f"{100 * g['aa_noise']:.1f} %",
            g["verdict"],
        ]
        for g in derived["goals"]
    ]


def floor_rows(derived: dict[str, Any]) -> list[list[str]]:
    """(b) with 1 task: each pool's cost above its driver alone."""
    rows = []
    for column, value in derived.get("above_floor_ns", {}).items():
        if value:
            rows.append([column, fmt_ns(value["median"]), f"{fmt_ns(value['min'])} to {fmt_ns(value['max'])}"])
    drivers = derived.get("floor_psycopg_over_asyncpg")
    if drivers:
        rows.append(
            [
                "(drivers) floor_psycopg / floor_asyncpg",
                fmt_ratio(drivers["median"]),
                f"{fmt_ratio(drivers['min'])}-{fmt_ratio(drivers['max'])}",
            ]
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    cfg = report["config"]
    console = peer_bench.print_head(
        report,
        f"rounds {cfg['rounds']}, 1 task: {cfg['ops']} ops (SELECT 1 and asyncpg's reset: "
        f"{cfg['select_ops']}) in {PASSES_1} passes; {TASKS} tasks: {PASSES_N} passes of {cfg['window_s']} s; "
        f"seed {cfg['seed']}",
        width=150,
    )
    peer_bench.print_scenarios(console, report, HEADERS, table_rows, left=("contender",))
    console.print(
        "A/A: a second, identical instance of ours. * diagnostic, not a peer. "
        "A ratio above 1: the contender costs more than ours."
    )
    table = Table(
        title="(b), 1 task: ns per operation above the driver alone (pool - its floor, paired by round)",
        title_justify="left",
    )
    for header in ("pool", "median", "min to max"):
        table.add_column(header)
    for row in floor_rows(report["derived"]):
        table.add_row(*row)
    console.print(table)
    table = Table(title="goals", title_justify="left")
    for header in GOAL_HEADERS:
        table.add_column(header)
    for row in goal_rows(report["derived"]):
        colour = {"yes": "green", "no": "red"}.get(row[-1], "yellow")
        table.add_row(*row[:-1], f"[{colour}]{row[-1]}[/]")
    console.print(table)


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = peer_bench.markdown_head(
        report,
        "asyncio pools against ours; produced by `python -m benchmarks.aio_bench`. Figures only, nothing asserted.",
    )
    lines += [
        "",
        "## Method",
        "",
        f"All in one asyncio event loop. {cfg['rounds']} rounds after one warm-up round; in each round the "
        f"order of scenarios and of contenders is shuffled (seed {cfg['seed']}), and each contender is "
        "measured in several passes, the round's order and its reverse alternately (A B C C B A ...). "
        f"1 task: {cfg['ops']} operations per round ({cfg['select_ops']} for (b), and for asyncpg's default "
        f"pool in (a), whose release is a round trip) in {PASSES_1} passes. {TASKS} tasks on pools of "
        f"{POOL_SIZE}: {PASSES_N} passes a round, in each all tasks run for {cfg['window_s']} s, counted from "
        f"{cfg['settle_s']} s after their release; in (a) each task yields once (`await asyncio.sleep(0)`) "
        "while holding the connection, or no other task would ever run. ns/op = wall time / operations "
        "completed; fairness = fewest operations any task completed / mean per task (mean of the passes). "
        "Ratio to ours: contender / ours within each round, median (min-max) over rounds. (b) sends BEGIN, "
        "SELECT 1 and COMMIT on every contender. A verdict is inconclusive when the target lies inside the "
        "90 % bootstrap interval of the median of the per-round ratios, or when the A/A control (a second, "
        "identical pool of ours) is further from 1 than the figure is from its target. "
        f"Total run time {report['duration_s']:.0f} s.",
        "",
    ]
    lines += peer_bench.markdown_scenarios(report, HEADERS, table_rows)
    lines += [
        "A/A: a second, identical instance of ours. \\* diagnostic, not a peer. No pool: the driver alone "
        "(one connection). A ratio above 1: the contender costs more than ours.",
        "",
        "## The pools above their drivers",
        "",
        "(b) with 1 task: ns per operation each pool adds to its driver alone on one bare connection "
        "(contender - floor, paired by round), and the two drivers' floors compared.",
        "",
        "| pool | median | min to max |",
        "|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in floor_rows(report["derived"])]
    lines += ["", "## Goals", "", "| " + " | ".join(GOAL_HEADERS) + " |", "|" + "---|" * len(GOAL_HEADERS)]
    lines += [
        "| " + " | ".join(row[:-1] + [row[-1] if row[-1] == "yes" else f"**{row[-1]}**"]) + " |"
        for row in goal_rows(report["derived"])
    ]
    stats = report.get("ours_pool_stats") or {}
    if stats:
        lines += [
            "",
            "## Ours: pool counters at the end",
            "",
            "| instance | checkouts | waits | checks | connections opened | discarded |",
            "|---|---|---|---|---|---|",
        ]
        for key, s in stats.items():
            lines.append(
                f"| {key} | {s.get('checkouts')} | {s.get('waits')} | {s.get('checks')} | "
                f"{s.get('connections_opened')} | {s.get('connections_discarded')} |"
            )
    lines += peer_bench.markdown_rounds(report)
    lines.append("")
    return "\n".join(lines)
