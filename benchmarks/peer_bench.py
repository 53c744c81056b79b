"""What pool_bench and aio_bench share: the command line, the server, the report's frame and its output.

Both measure a pool against its peers the same way (rounds of shuffled, interleaved passes; medians and ratios
paired by round) and report it the same way; what differs (threads or tasks, the contenders, the derived
figures) stays in each benchmark's own modules.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .machine import CpuMeter, cpu_use_text, machine_info, machine_markdown, postmaster_pid

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# Defaults of a full run and of --quick.
DEFAULTS: dict[str, int | float] = dict(rounds=9, ops=20_000, window=0.4)
QUICK: dict[str, int | float] = dict(rounds=2, ops=300, window=0.05)

# -- the command ---------------------------------------------------------------------------------------------


def parser(prog: str, doc: str, *, ops_help: str, select_ops_help: str, window_help: str) -> argparse.ArgumentParser:
    """The options both take; a benchmark adds its own before `resolve`."""
    found = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{prog}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    found.add_argument("--rounds", type=int, help=f"measured rounds (default {DEFAULTS['rounds']})")
    found.add_argument("--ops", type=int, help=ops_help)
    found.add_argument("--select-ops", type=int, help=select_ops_help)
    found.add_argument("--window", type=float, help=window_help)
    found.add_argument(
        "--quick", action="store_true", help="tiny rounds: checks that everything runs, figures meaningless"
    )
    found.add_argument("--seed", type=int, help="seed of the shuffling (default: random, recorded)")
    found.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    return found


def resolve(
    found: argparse.ArgumentParser, argv: list[str] | None, per_op: dict[str, tuple[int, int]]
) -> argparse.Namespace:
    """Parse; what is not given comes from DEFAULTS (QUICK with --quick), and each of `per_op`'s counts
    (option name: (divisor, least)) from --ops; a random seed, recorded. Counts below 1 and a window of 0 fail."""
    args = found.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name, (divisor, least) in per_op.items():
        if getattr(args, name) is None:
            setattr(args, name, max(args.ops // divisor, least))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    for name in ("rounds", "ops", *per_op):
        if getattr(args, name) < 1:
            found.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.window > 0:
        found.error("--window must be more than 0")
    return args


class Run:
    """One run of a benchmark: when it started, and its progress lines on stderr."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started_at = datetime.now(UTC)
        self.began = time.monotonic()

    def progress(self, message: str) -> None:
        print(f"[{self.name} {time.monotonic() - self.began:6.1f}s] {message}", file=sys.stderr, flush=True)

    def server(
        self, stack: ExitStack, app_name: str, packages: dict[str, str | None]
    ) -> tuple[str, dict[str, Any], CpuMeter]:
        """The server DATABASE_URL names, else an embedded PostgreSQL on a free port (never the machine's own on
        5432), stopped when `stack` closes: its DSN, the machine's description (with `packages`' versions), and
        a CPU meter started now (it also counts the embedded server's processes)."""
        dsn = os.environ.get("DATABASE_URL") or None
        embedded = dsn is None
        if dsn is None:
            from harness.services import EmbeddedPostgres

            self.progress("starting an embedded PostgreSQL")
            dsn = stack.enter_context(EmbeddedPostgres(max_connections=100)).url
        machine = machine_info(dsn, embedded, app_name, packages)
        return dsn, machine, CpuMeter(postmaster_pid(dsn) if embedded else None)

    def report(self, config: dict[str, Any], machine: dict[str, Any], contenders: dict[str, Any]) -> dict[str, Any]:
        """The report's first keys; the benchmark adds its figures after them."""
        return {
            "benchmark": self.name,
            "format": 1,
            "started_utc": self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_s": round(time.monotonic() - self.began, 1),
            "config": config,
            "machine": machine,
            "contenders": {key: {"family": c.family, "config": c.config} for key, c in contenders.items()},
        }

    def finish(
        self,
        report: dict[str, Any],
        out: Path,
        print_report: Callable[[dict[str, Any]], None],
        markdown: Callable[[dict[str, Any]], str],
    ) -> int:
        """Print the report, write it as JSON and Markdown named after the start's UTC date and time."""
        print_report(report)
        json_path, md_path = write_results(report, out, self.started_at.strftime("%Y-%m-%dT%H%M%SZ"), markdown)
        print(f"results: {json_path}\n         {md_path}")
        return 0


# -- the output ----------------------------------------------------------------------------------------------


def fmt_ns(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ratio_cells(value: dict[str, float] | None, reference: bool) -> list[str]:
    """A paired ratio's median and min-max; "1" for the reference itself."""
    if reference:
        return ["1", ""]
    if value:
        return [fmt_ratio(value["median"]), f"{fmt_ratio(value['min'])}-{fmt_ratio(value['max'])}"]
    return ["-", ""]


def print_head(report: dict[str, Any], config_line: str, width: int) -> Any:
    """On a rich console at least `width` wide: the run in three lines (what, how, the machine's CPU), then
    the contenders' legend. The console, for the rest."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, width))
    machine = report["machine"]
    console.print(
        f"[bold]{report['benchmark']}[/] {report['started_utc']}  {machine['cpu_model']}, "
        f"{machine['cpus_usable']} usable cores, Python {machine['python']['version']}, "
        f"PostgreSQL {machine['postgresql']['version']}, {report['duration_s']:.0f} s"
    )
    console.print(config_line)
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
    return console


def print_scenarios(
    console: Any,
    report: dict[str, Any],
    headers: list[str],
    rows: Callable[[dict[str, Any]], list[list[str]]],
    left: tuple[str, ...],
) -> None:
    """A table per scenario; the `left` columns justified left, the figures right."""
    from rich.table import Table

    for key, scenario in report["scenarios"].items():
        table = Table(title=f"{scenario['label']}  [{key}]", title_justify="left")
        for header in headers:
            table.add_column(header, justify="left" if header in left else "right")
        for row in rows(scenario):
            table.add_row(*row)
        console.print(table)


def markdown_head(report: dict[str, Any], description: str) -> list[str]:
    """The title, what the page is, the machine and the contenders."""
    lines = [f"# {report['benchmark']} {report['started_utc']}", "", description, ""]
    if report["config"]["quick"]:
        lines += ["**A --quick run: tiny rounds, the figures mean nothing.**", ""]
    lines += machine_markdown(report["machine"])
    lines += ["", "## Contenders", "", "| instance | configuration |", "|---|---|"]
    lines += [f"| {key} | {c['config']} |" for key, c in report["contenders"].items()]
    return lines


def markdown_scenarios(
    report: dict[str, Any], headers: list[str], rows: Callable[[dict[str, Any]], list[list[str]]]
) -> list[str]:
    lines = []
    for key, scenario in report["scenarios"].items():
        lines += [
            f"## {scenario['label']} (`{key}`)",
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "---|" * len(headers),
        ]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(scenario)]
        lines.append("")
    return lines


def markdown_rounds(report: dict[str, Any]) -> list[str]:
    """Each round's duration and the load after it (nothing without rounds)."""
    rounds = report.get("rounds") or []
    if not rounds:
        return []
    lines = [
        "",
        "## Rounds",
        "",
        "Duration of each round and the 1-minute load average after it.",
        "",
        "| round | s | load |",
        "|---|---|---|",
    ]
    lines += [f"| {i} | {r['seconds']} | {(r['load_average'] or ['-'])[0]} |" for i, r in enumerate(rounds, 1)]
    return lines


def write_results(
    report: dict[str, Any], out: Path, stamp: str, markdown: Callable[[dict[str, Any]], str]
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{report['benchmark']}_{stamp}.json"
    md_path = out / f"{report['benchmark']}_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
