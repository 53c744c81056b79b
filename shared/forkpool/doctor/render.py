"""How a doctor's report looks: a rich table for people, JSON for programs."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from .discovery import REDIS, Examined
from .findings import ERROR, Expectations, Finding, database_counts, tree_database_sockets
from .survey import Survey


def as_json(found: Survey, findings: list[Finding], expect: Expectations | None = None) -> dict[str, Any]:
    redis = _counts(found, REDIS)
    database = database_counts(found)
    return {
        "servers": found.servers,
        # Database connections expected per worker, by server kind ("*": any): --pool-size, or --app's pools.
        "expected_per_worker": dict(expect.pool_size) if expect is not None else {},
        "processes": [{**asdict(p), "postgresql": database[p.pid], "redis": redis[p.pid]} for p in found.processes],
        "connections": [asdict(c) for c in found.connections.values()],
        "sessions": [asdict(s) for s in found.sessions],
        "findings": [asdict(f) for f in findings],
        "took_ms": round(found.took_ms, 1),
    }


def as_table(found: Survey, findings: list[Finding], expect: Expectations) -> Any:
    from rich.console import Group, RenderableType
    from rich.table import Table
    from rich.text import Text

    database, redis = database_counts(found), _counts(found, REDIS)
    shared = Counter(pid for c in found.connections.values() if len(c.pids) > 1 for pid in c.pids)
    table = Table(title="forkpool doctor", title_justify="left")
    for column in ("tree", "role", "pid", "process", "postgresql", "redis", "shared"):
        table.add_column(column, justify="right" if column in ("pid", "postgresql", "redis", "shared") else "left")
    trees: dict[int, list[Examined]] = {}
    for proc in found.processes:
        trees.setdefault(proc.tree, []).append(proc)
    for master, members in sorted(trees.items()):
        for number, proc in enumerate(members):
            style = "red" if shared[proc.pid] or (proc.role == "master" and database[proc.pid]) else None
            table.add_row(
                f"{proc.server} {master}" if number == 0 else "",
                proc.role,
                str(proc.pid),
                _label(proc),
                str(database[proc.pid]),
                str(redis[proc.pid]),
                str(shared[proc.pid] or ""),
                style=style,
            )
        workers = sum(1 for p in members if p.role == "worker")
        size = expect.for_server(members[0].server)
        ceiling = f", ceiling {workers} x {size} = {workers * size}" if size is not None else ""
        table.add_row(
            "",
            "total",
            "",
            f"{workers} workers{ceiling}",
            str(tree_database_sockets(found, members)),
            str(sum(redis[p.pid] for p in members)),
            "",
            style="bold",
            end_section=True,
        )
    lines: list[RenderableType] = [
        table,
        Text(
            f"servers: {', '.join(found.servers) or 'none found'}; "
            f"{len(found.sessions)} server sessions; surveyed in {found.took_ms:.0f} ms",
            style="dim",
        ),
    ]
    if not found.processes:
        lines.append(Text("no Gunicorn or Celery process found (give master pids with --pid)", style="yellow"))
    for finding in findings:
        mark = Text(
            "FINDING " if finding.severity == ERROR else "note    ",
            style="red" if finding.severity == ERROR else "yellow",
        )
        lines.append(mark + Text(finding.message))
    if not any(f.severity == ERROR for f in findings):
        lines.append(
            Text("clean: no shared socket, no master holding a connection, nothing above the pool size", style="green")
        )
    return Group(*lines)


def _label(proc: Any) -> str:
    # "python" says nothing: show what it runs (without the interpreter and -m), shortened.
    words = [w.rsplit("/", 1)[-1] for w in proc.cmdline.split()[:6]]
    if words and proc.name.startswith("python"):
        words = words[2:] if words[1:2] == ["-m"] else words[1:]
    text = " ".join(words) or proc.name
    return text if len(text) <= 30 else text[:29] + "…"


def _counts(found: Survey, kind: str) -> Counter[int]:
    counts: Counter[int] = Counter()
    for conn in found.connections.values():
        if conn.kind == kind:
            counts.update(conn.pids)
    return counts
