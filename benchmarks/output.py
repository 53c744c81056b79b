"""pool_bench's output: rich tables on stdout, and the JSON and Markdown result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .contenders import POOL_SIZE
from .machine import cpu_use_text, machine_markdown
from .scenarios import COLUMN_ORDER, OURS_PSYCOPG, PASSES_1T, PASSES_8T, THREADS


def _ns(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio_cells(value: dict[str, float] | None, reference: bool) -> list[str]:
    if reference:
        return ["1", ""]
    if value:
        return [_ratio(value["median"]), f"{_ratio(value['min'])}-{_ratio(value['max'])}"]
    return ["-", ""]


def table_rows(scenario: dict[str, Any]) -> list[list[str]]:
    rows = []
    order = [c for c in COLUMN_ORDER if c in scenario["results"] or c in scenario["not_applicable"]]
    for column in order:
        row = scenario["results"].get(column)
        if row is None:
            rows.append([column, "n/a", "", "", "", "", "", "", scenario["not_applicable"][column]])
            continue
        ns, ratio, fair = row["ns_per_op"], row["ratio_to_ours"], row["fairness"]
        name = column + (" *" if row["role"] == "diagnostic" else "")
        ratio_cells = _ratio_cells(ratio, column == "ours")
        same_driver = row.get("ratio_to_ours_psycopg")
        if same_driver or column == OURS_PSYCOPG:
            same_cells = _ratio_cells(same_driver, column == OURS_PSYCOPG)
        else:
            same_cells = ["", ""]  # not on psycopg 3
        fair_text = f"{fair['median']:.2f} (min {fair['min']:.2f})" if fair else "-"
        rows.append(
            [
                name,
                _ns(ns["median"]),
                f"{_ns(ns['min'])}-{_ns(ns['max'])}",
                *ratio_cells,
                *same_cells,
                fair_text,
                row["contender"] if row["contender"] != column else "",
            ]
        )
    return rows


HEADERS = [
    "contender",
    "median ns/op",
    "min-max ns/op",
    "/ ours (paired median)",
    "/ ours min-max",
    "/ ours_psycopg (paired median)",
    "/ ours_psycopg min-max",
    "fairness median (min)",
    "instance or note",
]


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 170))
    machine = report["machine"]
    console.print(
        f"[bold]pool_bench[/] {report['started_utc']}  {machine['cpu_model']}, "
        f"{machine['cpus_usable']} usable cores, Python {machine['python']['version']}, "
        f"PostgreSQL {machine['postgresql']['version']}, {report['duration_s']:.0f} s"
    )
    cfg = report["config"]
    console.print(
        f"rounds {cfg['rounds']}, 1 thread: {cfg['ops']} ops (SELECT 1: {cfg['select_ops']}, connect: "
        f"{cfg['connect_ops']}) in {PASSES_1T} interleaved passes; 8 threads: {PASSES_8T} passes of "
        f"{cfg['window_s']} s; seed {cfg['seed']}"
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
            table.add_column(header, justify="left" if header in ("contender", "instance or note") else "right")
        for row in table_rows(scenario):
            table.add_row(*row)
        console.print(table)
    console.print("* diagnostic variant of ours, not a peer. A ratio above 1: the contender costs more than ours.")
    derived = report["derived"]
    for which, title in (
        ("ours_checks_on_vs_off", "ours on / off (ours / ours_nocheck, paired)"),
        ("ours_psycopg_checks_on_vs_off", "ours_psycopg on / off (ours_psycopg / ours_psycopg_nocheck, paired)"),
    ):
        table = Table(title=f"health checks: {title}", title_justify="left")
        for header in ("scenario", "median", "min-max"):
            table.add_column(header)
        for key, value in derived.get(which, {}).items():
            table.add_row(
                key,
                _ratio(value and value["median"]),
                f"{_ratio(value['min'])}-{_ratio(value['max'])}" if value else "-",
            )
        console.print(table)
    table = Table(
        title="(c) / (b): each pool with its checks on / the same without, paired by round "
        "(ours: identical settings, i.e. the noise floor)",
        title_justify="left",
    )
    for header in ("pool", "1 thread", "8 threads"):
        table.add_column(header)
    for family, by_threads in derived["checks_c_vs_b"].items():
        table.add_row(family, *(_ratio(v and v["median"]) for v in by_threads.values()))
    console.print(table)
    table = Table(title="goals", title_justify="left")
    for header in ("driver", "goal", "figure", "target", "met"):
        table.add_column(header)
    for goal in derived["goals"]:
        table.add_row(
            goal.get("driver", ""),
            goal["goal"],
            _figure(goal["figure"]),
            goal["target"],
            "[green]yes[/]" if goal["met"] else "[red]NO[/]",
        )
    console.print(table)


def markdown(report: dict[str, Any]) -> str:
    machine, cfg = report["machine"], report["config"]
    lines = [
        f"# pool_bench {report['started_utc']}",
        "",
        "The pool against its peers; produced by `python -m benchmarks.pool_bench`. Figures only, nothing asserted.",
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
        f"{cfg['rounds']} rounds after one warm-up round; in each round the order of scenarios and of "
        f"contenders is shuffled (seed {cfg['seed']}), and each contender is measured in several passes, "
        "the round's order and its reverse alternately (A B C C B A ...), so slow spells of the machine "
        f"fall on all alike. 1 thread: {cfg['ops']} operations per round "
        f"(SELECT 1: {cfg['select_ops']}, connect per operation: {cfg['connect_ops']}) in {PASSES_1T} passes. "
        f"{THREADS} threads on pools of {POOL_SIZE}: {PASSES_8T} passes a round, in each all threads run "
        f"for {cfg['window_s']} s, counted from {cfg.get('settle_s', 0)} s after their release (the threads' own "
        "start-up, one GIL slice at a time, left out); "
        "ns/op = wall time / operations completed; fairness = fewest operations any thread "
        "completed / mean per thread (mean of the passes). Ratio to ours: contender / ours within each round, median "
        "(min-max) over rounds; the contenders on psycopg 3 (psycopg_pool and ours_psycopg_nocheck) are "
        "also paired against ours_psycopg, our pool on the same driver. SELECT 1 operations commit before "
        "returning the connection. "
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
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(scenario)]
        lines.append("")
    lines += [
        "\\* diagnostic variant of ours, not a peer. A ratio above 1: the contender costs more than ours.",
        "",
        "## Health checks",
        "",
        "Ours on / off: `ours` (default settings) against `ours_nocheck` (its pre-use check removed), and "
        "the same on psycopg 3 (`ours_psycopg` / `ours_psycopg_nocheck`), paired by round.",
        "",
        "| scenario | ours: median | min-max | ours_psycopg: median | min-max |",
        "|---|---|---|---|---|",
    ]
    derived = report["derived"]
    on_off_3 = derived.get("ours_psycopg_checks_on_vs_off", {})
    for key, value in derived["ours_checks_on_vs_off"].items():
        cells = []
        for v in (value, on_off_3.get(key)):
            cells += [_ratio(v and v["median"]), f"{_ratio(v['min'])}-{_ratio(v['max'])}" if v else "-"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(c) / (b): each pool with its checks on against the same pool without, paired by round "
        "index. Ours has the same settings in both: its figure is the noise floor.",
        "",
        "| pool | 1 thread | 8 threads |",
        "|---|---|---|",
    ]
    for family, by_threads in derived["checks_c_vs_b"].items():
        lines.append(f"| {family} | " + " | ".join(_ratio(v and v["median"]) for v in by_threads.values()) + " |")
    lines += ["", "## Goals", "", "| driver | goal | figure | target | met |", "|---|---|---|---|---|"]
    for goal in derived["goals"]:
        lines.append(
            f"| {goal.get('driver', '')} | {goal['goal']} | {_figure(goal['figure'])} | {goal['target']} | "
            f"{'yes' if goal['met'] else '**no**'} |"
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
    lines += [
        "",
        "## Reading the figures",
        "",
        "- Checkout + return alone with 8 threads on 5 connections measures thread switches under "
        "the GIL: a FIFO pool hands each returned connection to a sleeping waiter, a thread wake-up "
        "per operation; a pool without a queue lets the running thread take back what it returned, "
        "switches less and starves the rest (fairness near 0).",
        "- With SELECT 1, every pool sees real contention: fairness near 0 means threads starved while "
        "others re-took the connection they had just returned (LIFO, no queue).",
        "- A 1-thread SELECT 1 costs a loopback round trip per statement; on a VM that cost changes "
        "several-fold with whether the client and its backend run on the same CPU, hence the wide "
        "min-max. The 8-thread figures are steadier.",
        "- (c) / (b) for ours compares identical settings: read it as the noise floor of the run.",
        "",
    ]
    return "\n".join(lines)


def write_results(report: dict[str, Any], out: Path, stamp: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"pool_bench_{stamp}.json"
    md_path = out / f"pool_bench_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
