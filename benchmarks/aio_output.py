"""aio_bench's output: rich tables on stdout, and the JSON and Markdown result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .aio_contenders import POOL_SIZE
from .aio_scenarios import COLUMNS, PASSES_1, PASSES_N, TASKS
from .machine import cpu_use_text, machine_markdown
from .output import _figure, _ns, _ratio

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
        if column == "ours":
            ratio_cells = ["1", ""]
        elif ratio:
            ratio_cells = [_ratio(ratio["median"]), f"{_ratio(ratio['min'])}-{_ratio(ratio['max'])}"]
        else:
            ratio_cells = ["-", ""]
        fair_text = f"{fair['median']:.2f} (min {fair['min']:.2f})" if fair else "-"
        rows.append([name, _ns(ns["median"]), f"{_ns(ns['min'])}-{_ns(ns['max'])}", *ratio_cells, fair_text])
    return rows


def goal_rows(derived: dict[str, Any]) -> list[list[str]]:
    return [
        [
            g["goal"],
            _figure(g["figure"]),
            f"{_figure(g['interval_90'][0])}-{_figure(g['interval_90'][1])}" if g.get("interval_90") else "-",
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
            rows.append([column, _ns(value["median"]), f"{_ns(value['min'])} to {_ns(value['max'])}"])
    drivers = derived.get("floor_psycopg_over_asyncpg")
    if drivers:
        rows.append(
            [
                "(drivers) floor_psycopg / floor_asyncpg",
                _ratio(drivers["median"]),
                f"{_ratio(drivers['min'])}-{_ratio(drivers['max'])}",
            ]
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    machine, cfg = report["machine"], report["config"]
    console.print(
        f"[bold]aio_bench[/] {report['started_utc']}  {machine['cpu_model']}, "
        f"{machine['cpus_usable']} usable cores, Python {machine['python']['version']}, "
        f"PostgreSQL {machine['postgresql']['version']}, {report['duration_s']:.0f} s"
    )
    console.print(
        f"rounds {cfg['rounds']}, 1 task: {cfg['ops']} ops (SELECT 1 and asyncpg's reset: "
        f"{cfg['select_ops']}) in {PASSES_1} passes; {TASKS} tasks: {PASSES_N} passes of {cfg['window_s']} s; "
        f"seed {cfg['seed']}"
    )
    console.print(
        f"CPU: {cpu_use_text(machine.get('cpu_use'))}; load average at start / end: "
        f"{machine.get('load_average_at_start')} / {machine.get('load_average_at_end')}"
    )
    legend = Table(title="contenders", title_justify="left")
    legend.add_column("instance")
    legend.add_column("configuration")
    for key, contender in report["contenders"].items():
        legend.add_row(key, contender["config"])
    console.print(legend)
    for key, scenario in report["scenarios"].items():
        table = Table(title=f"{scenario['label']}  [{key}]", title_justify="left")
        for header in HEADERS:
            table.add_column(header, justify="left" if header == "contender" else "right")
        for row in table_rows(scenario):
            table.add_row(*row)
        console.print(table)
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
    machine, cfg = report["machine"], report["config"]
    lines = [
        f"# aio_bench {report['started_utc']}",
        "",
        "asyncio pools against ours; produced by `python -m benchmarks.aio_bench`. Figures only, nothing asserted.",
        "",
    ]
    if cfg["quick"]:
        lines += ["**A --quick run: tiny rounds, the figures mean nothing.**", ""]
    lines += machine_markdown(machine)
    lines += ["", "## Contenders", "", "| instance | configuration |", "|---|---|"]
    lines += [f"| {key} | {c['config']} |" for key, c in report["contenders"].items()]
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
    for key, scenario in report["scenarios"].items():
        lines += [
            f"## {scenario['label']} (`{key}`)",
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|" + "---|" * len(HEADERS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table_rows(scenario)]
        lines.append("")
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
    rounds = report.get("rounds") or []
    if rounds:
        lines += [
            "",
            "## Rounds",
            "",
            "Duration of each round and the 1-minute load average after it.",
            "",
            "| round | s | load |",
            "|---|---|---|",
        ]
        lines += [f"| {i} | {r['seconds']} | {(r['load_average'] or ['-'])[0]} |" for i, r in enumerate(rounds, 1)]
    lines.append("")
    return "\n".join(lines)


def write_results(report: dict[str, Any], out: Path, stamp: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"aio_bench_{stamp}.json"
    md_path = out / f"aio_bench_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
