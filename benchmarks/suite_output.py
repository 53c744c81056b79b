"""The suite benchmark's output: the same tables as rich tables on stdout and as Markdown,
and the JSON and Markdown result files named after the UTC date and time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .machine import cpu_use_text, machine_markdown

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows

_RANK = {
    name: i
    for i, name in enumerate(
        ("web", "celery", "sync", "gthread", "asgi", "prefork", "pool", "connect", "floor", "floor-b")
    )
}


def _ordered(rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """Rows keyed "[server ]class/variant" in a fixed order: web before celery, sync, gthread, asgi, then
    pool, connect, floor, floor-b (servers start in a shuffled order, so the data comes in any)."""

    def rank(key: str) -> list[int]:
        return [_RANK.get(part, len(_RANK)) for part in key.replace(" ", "/").split("/")]

    return sorted(rows.items(), key=lambda item: rank(item[0]))


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _spread(s: dict[str, float] | None, digits: int = 0) -> tuple[str, str]:
    if not s:
        return "-", ""
    return _num(s["median"], digits), f"{_num(s['min'], digits)}-{_num(s['max'], digits)}"


def _ratio(s: dict[str, float] | None) -> str:
    return "-" if not s else f"{s['median']:.3f} ({s['min']:.2f}-{s['max']:.2f})"


def web_tables(report: dict[str, Any]) -> list[Table]:
    web, variants = report["web"]["figures"], report["web"]["variants"]
    tables = []
    for worker_class in ("sync", "gthread", "asgi"):
        keys = [k for k, _ in _ordered(web) if k.startswith(worker_class + "/")]
        if not keys:
            continue
        v = variants[keys[0]]
        if worker_class == "asgi":
            title = (
                f"web, ASGI: Gunicorn + uvicorn_worker.UvicornWorker, {v['processes']} workers, pool of 1 "
                "(floor: one connection per worker, its requests serialised on an asyncio.Lock); GET /item; "
                f"{v['load_connections']} connections"
            )
        else:
            title = (
                f"web, Gunicorn {worker_class}: {v['processes']} workers x {v['threads']} thread(s), "
                f"pool of {v['threads']}; GET /item; {v['load_connections']} connections"
            )
        headers = [
            "variant",
            "req/s median",
            "min-max",
            "/ floor (paired) median (min-max)",
            "/ connect",
            "p50 ms",
            "p99 ms",
            "p99 / floor",
            "worker CPU us/req",
            "errors / requests",
        ]
        rows = []
        for key in keys:
            row = web[key]
            name = key.split("/")[1]
            rows.append(
                [
                    name + (" (A/A control)" if variants[key]["control"] else ""),
                    *_spread(row["rps"]),
                    _ratio(row["rps_to_floor"]),
                    _num(row["rps_to_connect"] and row["rps_to_connect"]["median"], 2),
                    _spread(row["p50_ms"], 2)[0],
                    _spread(row["p99_ms"], 2)[0],
                    _num(row["p99_ms_to_floor"] and row["p99_ms_to_floor"]["median"], 2),
                    _spread(row["worker_cpu_us_per_request"])[0],
                    f"{row['errors']} / {row['requests']:,}",
                ]
            )
        tables.append((title, headers, rows))
    return tables


def celery_table(report: dict[str, Any]) -> Table | None:
    figures, cfg = report["celery"]["figures"], report["config"]
    if not figures:
        return None  # no Celery phase
    title = (
        f"Celery prefork, concurrency {cfg['celery_concurrency']}, pool of 1: {cfg['tasks']} write_row "
        "tasks per round, sent and timed until every result is in"
    )
    headers = [
        "variant",
        "tasks/s median",
        "min-max",
        "/ floor (paired) median (min-max)",
        "/ connect",
        "rows written / tasks",
    ]
    rows = [
        [
            key.split("/")[1],
            *_spread(row["tasks_per_s"]),
            _ratio(row["tasks_per_s_to_floor"]),
            _num(row["tasks_per_s_to_connect"] and row["tasks_per_s_to_connect"]["median"], 2),
            f"{row['rows_written']:,} / {row['tasks']:,}",
        ]
        for key, row in _ordered(figures)
    ]
    return title, headers, rows


def startup_table(report: dict[str, Any]) -> Table:
    title = (
        "start-up: post_fork / worker_process_init entry to return, per process (pool: the pool full; "
        "connect and floor open nothing there); asgi: the lifespan startup (pool: full; floor: its "
        "connection open; connect: nothing)"
    )
    headers = [
        "server variant",
        "processes",
        "median ms",
        "min-max ms",
        "connections held",
        "all full",
        "per process ms",
    ]
    rows = []
    for name, row in _ordered(report["startup"]):
        per = ", ".join(f"{p['ms']:.1f}" for p in row["per_process"])
        rows.append(
            [
                name,
                str(row["processes"]),
                *_spread(row["ms"], 1),
                ", ".join(map(str, row["pool_sizes"])),
                "yes" if row["all_full"] else "NO",
                per,
            ]
        )
    return title, headers, rows


def memory_table(report: dict[str, Any]) -> Table:
    title = "memory: VmRSS per worker process after the load (MiB), and server sessions each variant holds"
    headers = ["variant", "RSS median MiB", "min-max", "median - floor MiB", "server sessions"]
    rows = []
    for phase in ("web", "celery"):
        for key, row in _ordered(report[phase]["memory"]):
            rss = row["rss_kib"]
            scaled = {k: v / 1024 for k, v in rss.items()} if rss else None
            diff = row["vs_floor_kib"]
            rows.append(
                [
                    f"{phase} {key}",
                    *_spread(scaled, 1),
                    "-" if diff is None else f"{diff / 1024:+.1f}",
                    str(row["sessions"]),
                ]
            )
    return title, headers, rows


def goals_table(report: dict[str, Any]) -> Table:
    rows = [[g["goal"], _num(g["figure"], 3), g["target"], g["verdict"]] for g in report["goals"]]
    return "goals", ["goal", "figure (paired median)", "target", "met"], rows


def all_tables(report: dict[str, Any]) -> list[Table]:
    celery = celery_table(report)
    return [
        *web_tables(report),
        *([celery] if celery else []),
        startup_table(report),
        memory_table(report),
        goals_table(report),
    ]


def headline(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    return (
        f"suite_bench {report['started_utc']}  {m['cpu_model']}, {m['cpus_usable']} usable cores, "
        f"Python {m['python']['version']}, PostgreSQL {m['postgresql']['version']}, Redis {m['redis']}, "
        f"load: {cfg['load_generator']['name']} ({cfg['load_generator']['version']}), "
        f"{report['duration_s']:.0f} s"
    )


def conditions(report: dict[str, Any]) -> str:
    """The load on the machine: at the start and end, after each web round, and the CPUs' use."""
    m = report["machine"]
    loads = sorted(
        {
            r["load_1min_after"]
            for rounds in report["web"]["rounds"].values()
            for r in rounds
            if r.get("load_1min_after") is not None
        }
    )
    start, end = (m.get(k) or [None] for k in ("load_average_at_start", "load_average_at_end"))
    after = f"{loads[0]:.1f}-{loads[-1]:.1f}" if loads else "-"
    return (
        f"Conditions: load average (1 min) {_num(start[0], 2)} at the start, {after} after the web rounds, "
        f"{_num(end[0], 2)} at the end; CPU: {cpu_use_text(m.get('cpu_use'))}."
    )


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console(width=max(Console().width, 140))
    console.print(f"[bold]{escape(headline(report))}[/]")
    console.print(escape(conditions(report)))
    for note in report["notes"]:
        console.print(f"[yellow]{escape(note)}[/]")
    for title, headers, rows in all_tables(report):
        table = RichTable(title=escape(title), title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(escape(header), justify="left" if i == 0 or header == "goal" else "right")
        for row in rows:
            table.add_row(*("[red]NO[/]" if cell == "NO" else escape(cell) for cell in row))
        console.print(table)


def markdown(report: dict[str, Any]) -> str:
    lg = report["config"]["load_generator"]
    lines = [
        f"# suite_bench {report['started_utc']}",
        "",
        "The suite end to end, produced by `python -m benchmarks.suite_bench`. Figures only, nothing asserted.",
        "",
    ]
    lines += [f"> **{note}**" for note in report["notes"]] + ([""] if report["notes"] else [])
    lines += [conditions(report), ""]
    lines += machine_markdown(
        report["machine"], [("Redis", report["machine"]["redis"]), ("load generator", f"{lg['name']}: {lg['version']}")]
    )
    lines += ["", "## Method", "", report["method"], ""]
    for title, headers, rows in all_tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def write_results(report: dict[str, Any], out: Path, stamp: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"suite_bench_{stamp}.json", out / f"suite_bench_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
