"""Show a harness run: tables on the terminal, report.json, and a connections chart (PNG).

Every free-form string goes through `forkpool.settings` first: the plan carries the
database URL, and driver errors quoted in check details or load errors can echo it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.table import Table
from rich.text import Text

from forkpool.settings import dsn_secrets, redact_text
from harness.model import RunReport

# A literal password shorter than this is masked only where it sits in a URL or a
# password=... pair: replacing "ab" everywhere would garble the report.
_MIN_LITERAL_SECRET = 4
_ROLE_ORDER = ("web", "worker")
_ROLE_COLOURS = {"web": "tab:blue", "worker": "tab:orange", "asgi": "tab:green"}
_EVENT_COLOURS = {"kill": "tab:red", "recycle": "tab:purple", "fault": "tab:brown"}


# --- redaction ---------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    """Every string inside a nested plan (keys included), to look for DSNs in."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for item in value for s in _strings(item)]
    return []


def _secrets(report: RunReport) -> tuple[str, ...]:
    """Passwords of URLs in the plan, so a bare copy elsewhere (an error message) is masked too."""
    found = {secret for s in _strings(report.plan) if "://" in s for secret in dsn_secrets(s)}
    return tuple(sorted(p for p in found if p and len(p) >= _MIN_LITERAL_SECRET))


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` with every string in it redacted (JSON-shaped data: dicts, lists, scalars)."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item, secrets) for item in value]
    return value


# --- terminal ----------------------------------------------------------------


def _verdict_cell(passed: bool) -> Text:
    return Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(value: object) -> str | Text:
    """Floats to one decimal, anything else as plain text (names must not parse as markup)."""
    return _fmt(value) if isinstance(value, float) else Text("-" if value is None else str(value))


def _status_counts(counts: dict[str, int]) -> str:
    # Numeric codes in order, then "error" and friends.
    keys = sorted(counts, key=lambda k: (not k.isdigit(), k))
    return ", ".join(f"{k}: {counts[k]}" for k in keys) or "-"


def _roles_table(report: RunReport) -> Table:
    table = Table(title="Connections by role")
    for name in ("role", "processes", "pool size", "expected", "observed steady", "max observed"):
        table.add_column(name, justify="left" if name == "role" else "right")
    table.add_column("result")
    for r in report.roles:
        table.add_row(
            Text(r.role),
            str(r.processes),
            str(r.pool_size),
            str(r.expected),
            str(r.observed_steady),
            str(r.max_observed),
            _verdict_cell(r.passed),
        )
    table.add_section()
    # The total's maximum is the worst single sample, not the sum of per-role maxima
    # (web and worker need not peak at the same moment).
    peak = max((s.total for s in report.samples), default=sum(r.max_observed for r in report.roles))
    table.add_row(
        Text("total", style="bold"),
        str(sum(r.processes for r in report.roles)),
        "",
        f"{report.ceiling} (ceiling)",
        str(sum(r.observed_steady for r in report.roles)),
        str(peak),
        _verdict_cell(peak <= report.ceiling and all(r.passed for r in report.roles)),
    )
    return table


def _checks_table(report: RunReport, secrets: tuple[str, ...]) -> Table:
    table = Table(title="Checks")
    table.add_column("#", justify="right")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for c in report.checks:
        # Text(), not a str: details quote error messages, and "[...]" must not parse as markup.
        table.add_row(
            str(c.number),
            Text(redact_text(c.name, secrets)),
            _verdict_cell(c.passed),
            Text(redact_text(c.detail, secrets)),
        )
    return table


def _load_table(report: RunReport) -> Table:
    load, lat = report.load, report.load.latency_ms
    table = Table(title="Load")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests", str(load.requests))
    table.add_row("failures", str(load.failures))
    table.add_row("req/s", _fmt(load.requests_per_s))
    table.add_row("p50 / p95 / p99 ms", " / ".join(_fmt(lat.get(k)) for k in ("p50", "p95", "p99")))
    table.add_row("status counts", _status_counts(load.status_counts))
    table.add_row("tasks enqueued / completed", f"{load.tasks_enqueued} / {load.tasks_completed}")
    table.add_row("tasks/s", _fmt(load.tasks_per_s))
    return table


def _endpoints_table(report: RunReport) -> Table:
    table = Table(title="Endpoints")
    columns = (
        ("endpoint", "name"),
        ("requests", "requests"),
        ("failures", "failures"),
        ("p50 ms", "p50"),
        ("p99 ms", "p99"),
        ("req/s", "rps"),
    )
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "endpoint" else "right")
    for ep in report.load.endpoints:
        table.add_row(*(_cell(ep.get(key)) for _, key in columns))
    return table


def _overlap_lines(report: RunReport) -> list[str]:
    if not report.overlaps:
        return ["never above the ceiling"]
    return [f"over the ceiling by {o.excess} for {o.duration:.2f} s at t={o.start:.2f} s" for o in report.overlaps]


def verdict(report: RunReport) -> str:
    """One plain line. A naive run exists to fail, so its failure is the expected outcome."""
    failed = sum(1 for c in report.checks if not c.passed)
    if not report.checks:
        return "naive run (hooks off): no checks ran" if report.naive else "FAIL: no checks ran"
    if report.naive:
        if failed:
            return (
                f"naive run (hooks off): {failed} check(s) failed, as expected: "
                "this is what the per-process hooks prevent"
            )
        return "naive run passed every check: the failure it demonstrates did not show this time"
    return "PASS: every ceiling held" if failed == 0 else f"FAIL: {failed} check(s) failed"


def render_terminal(report: RunReport, console: Console) -> None:
    """Print the run's tables, overlaps and verdict to `console`."""
    secrets = _secrets(report)
    mode = " (naive: hooks off)" if report.naive else ""
    console.print(
        Text(
            f"suite {report.suite_id}{mode}: started {report.started_at}, "
            f"{report.duration_s:.1f} s, ceiling {report.ceiling}",
            style="bold",
        )
    )
    if report.pgbouncer:
        b = report.pgbouncer
        console.print(
            Text(
                f"PgBouncer {b['version']} ({b['pool_mode']} pooling, prepared statements {b['prepare']}): "
                f"client connections peak {b['client_peak']} of ceiling {report.ceiling}; server "
                f"connections at PostgreSQL peak {b['server_peak']} of pool {b['pool_size']} + reserve "
                f"{b['reserve']}"
            )
        )
    console.print(_roles_table(report))
    console.print(_checks_table(report, secrets))
    console.print(_load_table(report))
    if report.load.endpoints:
        console.print(_endpoints_table(report))
    for line in _overlap_lines(report):
        console.print(Text(line))
    for error in report.load.errors:
        console.print(Text(f"load error: {redact_text(error, secrets)}", style="yellow"))
    # Green/red on what the reader should conclude: a naive run failing is "as expected".
    good = report.passed != report.naive and bool(report.checks)
    console.print(Text(verdict(report), style="bold green" if good else "bold red"))


# --- files -------------------------------------------------------------------


def write_json(report: RunReport, path: Path) -> None:
    """The whole report as JSON, every string redacted."""
    body = _redact(report.to_json(), _secrets(report))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=1, default=str)
        fh.write("\n")


def _roles_seen(report: RunReport) -> list[str]:
    """web and worker first (always drawn), then any other role the samples show; a fleet's roles as seen."""
    seen = {role for s in report.samples for role in s.by_role()}
    if any("@" in role for role in seen):  # web@h1, ...: an unlabelled "web" line would always be 0
        return sorted(seen)
    return list(_ROLE_ORDER) + sorted(seen - set(_ROLE_ORDER))


def _draw_failed(ax: Any, failed: list[tuple[float, str, int]]) -> None:
    by_status: dict[str, list[tuple[float, int]]] = {}
    for t, status, n in failed:
        by_status.setdefault(status, []).append((t, n))
    for status, points in sorted(by_status.items()):
        ax.bar([t for t, _ in points], [n for _, n in points], width=1.0, align="edge", label=status, alpha=0.7)
    ax.set_ylabel("failed responses / s")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def write_chart(report: RunReport, path: Path) -> None:
    """Connections over time per role and in total, against the ceiling."""
    # Figure + Agg canvas directly: no pyplot global state, safe off the main thread.
    failed = report.status_timeline
    fig = Figure(figsize=(10, 7 if failed else 5), dpi=100)
    FigureCanvasAgg(fig)
    if failed:  # the responses that failed, below, on the same seconds: where they fall against the events
        ax, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        _draw_failed(bottom, failed)
    else:
        ax = bottom = fig.add_subplot()
    ts = [s.t for s in report.samples]
    if report.samples:
        per_role = [s.by_role() for s in report.samples]
        for role in _roles_seen(report):
            ax.step(
                ts,
                [r.get(role, 0) for r in per_role],
                where="post",
                label=role,
                color=_ROLE_COLOURS.get(role),
                linewidth=1.2,
            )
        ax.step(ts, [s.total for s in report.samples], where="post", label="total", color="black", linewidth=2)
        if report.pgbouncer:  # behind PgBouncer the lines above are its clients; the server sees this
            ax.step(
                ts,
                [s.servers or 0 for s in report.samples],
                where="post",
                label="servers (at PostgreSQL)",
                color="darkgoldenrod",
                linewidth=2.5,
            )
            bound = report.pgbouncer["pool_size"] + report.pgbouncer["reserve"]
            ax.axhline(
                bound, color="darkgoldenrod", linestyle="--", linewidth=1.2, label=f"PgBouncer pool + reserve = {bound}"
            )
    ax.axhline(report.ceiling, color="tab:red", linestyle="--", linewidth=1.2, label=f"ceiling = {report.ceiling}")
    for i, o in enumerate(report.overlaps):
        ax.axvspan(
            o.start, o.start + o.duration, color="tab:red", alpha=0.15, label="above ceiling" if i == 0 else None
        )
    labelled: set[str] = set()
    for e in report.events:
        if e.kind in _EVENT_COLOURS:
            ax.axvline(
                e.t,
                color=_EVENT_COLOURS[e.kind],
                linestyle=":",
                linewidth=1.2,
                label=e.kind if e.kind not in labelled else None,
            )
            labelled.add(e.kind)
    peak = max([report.ceiling, *(s.total for s in report.samples)])
    ax.set_ylim(0, peak * 1.15 + 1)  # headroom so the ceiling line is never on the frame
    ax.set_xlim(0, max([report.duration_s, *ts, 1.0]))
    bottom.set_xlabel("seconds since start")
    ax.set_ylabel("client connections (at PgBouncer)" if report.pgbouncer else "server connections")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # connections come whole
    mode = " (naive)" if report.naive else ""
    ax.set_title(f"{report.suite_id}{mode}: {'PASS' if report.passed else 'FAIL'}")
    ax.grid(True, alpha=0.3)
    # Outside the axes, on the right: inside, it would hide the lines it explains.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def write_reports(report: RunReport, directory: Path) -> dict[str, Path]:
    """report.json, connections.png and report.txt (the terminal tables) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / "report.json",
        "chart": directory / "connections.png",
        "text": directory / "report.txt",
    }
    write_json(report, paths["json"])
    write_chart(report, paths["chart"])
    if report.rss:
        from .rss import write_memory_chart

        paths["memory"] = directory / "memory.png"
        write_memory_chart(report.rss, paths["memory"])
    console = Console(record=True, width=120, file=io.StringIO())
    render_terminal(report, console)
    # Redact again as a whole: cheap, and covers any string a table cell let through.
    paths["text"].write_text(redact_text(console.export_text(), _secrets(report)), encoding="utf-8")
    return paths


def render_stats(found: dict[str, Any], console: Console | None = None) -> None:
    """`forkpool stats`: one row per process, then totals per role beside the server's count."""
    console = console or Console()
    server = found["server_checked"]
    table = Table(title=f"Pools of suite {found['suite_id']}")
    for name in ("role", "pid", "size", "idle", "in use", "waiting", "max", "server"):
        table.add_column(name, justify="left" if name == "role" else "right")
    for row in found["processes"]:
        table.add_row(
            row["role"],
            str(row["pid"]),
            *(str(row.get(k, "")) for k in ("size", "idle", "in_use", "waiting", "max_size")),
            str(row["server"]) if server else "-",
        )
    console.print(table)
    totals = Table(title="Per role")
    for name in ("role", "processes", "size", "in use", "waiting", "timeouts", "server"):
        totals.add_column(name, justify="left" if name == "role" else "right")
    for role, t in sorted(found["roles"].items()):
        totals.add_row(
            role,
            *(str(t.get(k, 0)) for k in ("processes", "size", "in_use", "waiting", "timeouts")),
            str(t.get("server", 0)) if server else "-",
        )
    console.print(totals)
