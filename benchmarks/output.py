"""pool_bench's output: rich tables on stdout and the Markdown page (what it shares with aio_bench: peer_bench.py)."""

from __future__ import annotations

from typing import Any

from . import peer_bench
from .contenders import POOL_SIZE
from .peer_bench import fmt_figure, fmt_ns, fmt_ratio, ratio_cells
from .scenarios import COLUMN_ORDER, OURS_PSYCOPG, PASSES_1T, PASSES_8T, THREADS


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
        ours_cells = ratio_cells(ratio, column == "ours")
        same_driver = row.get("ratio_to_ours_psycopg")
        if same_driver or column == OURS_PSYCOPG:
            same_cells = ratio_cells(same_driver, column == OURS_PSYCOPG)
        else:
            same_cells = ["", ""]  # not on psycopg 3
        fair_text = f"{fair['median']:.2f} (min {fair['min']:.2f})" if fair else "-"
        rows.append(
            [
                name,
                fmt_ns(ns["median"]),
                f"{fmt_ns(ns['min'])}-{fmt_ns(ns['max'])}",
                *ours_cells,
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
    from rich.table import Table

    cfg = report["config"]
    console = peer_bench.print_head(
        report,
        f"rounds {cfg['rounds']}, 1 thread: {cfg['ops']} ops (SELECT 1: {cfg['select_ops']}, connect: "
        f"{cfg['connect_ops']}) in {PASSES_1T} interleaved passes; 8 threads: {PASSES_8T} passes of "
        f"{cfg['window_s']} s; seed {cfg['seed']}",
        width=170,
    )
    peer_bench.print_scenarios(console, report, HEADERS, table_rows, left=("contender", "instance or note"))
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
                fmt_ratio(value and value["median"]),
                f"{fmt_ratio(value['min'])}-{fmt_ratio(value['max'])}" if value else "-",
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
        table.add_row(family, *(fmt_ratio(v and v["median"]) for v in by_threads.values()))
    console.print(table)
    table = Table(title="goals", title_justify="left")
    for header in ("driver", "goal", "figure", "target", "met"):
        table.add_column(header)
    for goal in derived["goals"]:
        table.add_row(
            goal.get("driver", ""),
            goal["goal"],
            fmt_figure(goal["figure"]),
            goal["target"],
            "[green]yes[/]" if goal["met"] else "[red]NO[/]",
        )
    console.print(table)


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = peer_bench.markdown_head(
        report,
        "The pool against its peers; produced by `python -m benchmarks.pool_bench`. Figures only, nothing asserted.",
    )
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
    lines += peer_bench.markdown_scenarios(report, HEADERS, table_rows)
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
            cells += [fmt_ratio(v and v["median"]), f"{fmt_ratio(v['min'])}-{fmt_ratio(v['max'])}" if v else "-"]
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
        lines.append(f"| {family} | " + " | ".join(fmt_ratio(v and v["median"]) for v in by_threads.values()) + " |")
    lines += ["", "## Goals", "", "| driver | goal | figure | target | met |", "|---|---|---|---|---|"]
    for goal in derived["goals"]:
        lines.append(
            f"| {goal.get('driver', '')} | {goal['goal']} | {fmt_figure(goal['figure'])} | {goal['target']} | "
            f"{'yes' if goal['met'] else '**no**'} |"
        )
    lines += peer_bench.markdown_rounds(report)
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
