"""What is wrong with a surveyed deployment: pure functions of a Survey, one line per finding.

Errors make ``forkpool doctor`` exit 1; notes are shown but are not failures
(a session of a process outside the examined trees is often a psql or a
migration, not a leak).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .discovery import POSTGRESQL, Examined
from .survey import Survey

SHARED_SOCKET = "shared-socket"
MASTER_CONNECTION = "master-connection"
ABOVE_POOL_SIZE = "above-pool-size"
ABOVE_CEILING = "above-ceiling"
ORPHAN_SESSION = "orphan-session"
IDLE_IN_TRANSACTION = "idle-in-transaction"
OUTSIDE_SESSION = "outside-session"
DEAD_SOCKET = "dead-socket"
ERROR, NOTE = "error", "note"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Expectations:
    pool_size: dict[str, int]  # server kind ("gunicorn", "celery", "process") or "*" -> connections per worker
    idle_in_transaction_s: float = 60.0

    def for_server(self, server: str) -> int | None:
        return self.pool_size.get(server, self.pool_size.get("*"))


def evaluate(found: Survey, expect: Expectations) -> list[Finding]:
    return [
        *shared_sockets(found),
        *masters_holding(found),
        *dead_sockets(found),
        *above_pool_size(found, expect),
        *server_sessions(found, expect),
    ]


def database_counts(found: Survey) -> Counter[int]:
    """PostgreSQL connections per examined pid (a shared socket counts in each holder)."""
    counts: Counter[int] = Counter()
    for conn in found.connections.values():
        if conn.kind == POSTGRESQL:
            counts.update(conn.pids)
    return counts


def dead_sockets(found: Survey) -> list[Finding]:
    """Descriptors of sockets whose connection is gone: an error in a master (its pool hands them to the next
    worker it forks), a note elsewhere (a worker's pool may be about to find out and reconnect)."""
    out = []
    role = {p.pid: p for p in found.processes}
    for pid, inodes in sorted(found.dead_sockets.items()):
        proc = role[pid]
        master = proc.role == "master"
        out.append(
            Finding(
                DEAD_SOCKET,
                ERROR if master else NOTE,
                f"{proc.server} {proc.role} {pid} holds {len(inodes)} descriptor(s) of sockets no kernel "
                f"table lists any more (sockets {', '.join(map(str, inodes))}): connections reset or closed "
                "that it never closed" + ("; every worker forked from it inherits them" if master else ""),
                (pid,),
            )
        )
    for conn in sorted(found.connections.values(), key=lambda c: c.inode):
        if conn.closed_by_server:
            holders = ", ".join(f"{pid} ({role[pid].server} {role[pid].role})" for pid in sorted(conn.pids))
            in_master = any(role[pid].role == "master" for pid in conn.pids)
            out.append(
                Finding(
                    DEAD_SOCKET,
                    ERROR if in_master else NOTE,
                    f"{conn.kind} connection {conn.client} -> {conn.server} (socket {conn.inode}) was "
                    f"closed by the server; still held by {holders}",
                    tuple(sorted(conn.pids)),
                )
            )
    return out


def tree_database_sockets(found: Survey, members: list[Examined]) -> int:
    """Distinct database sockets a tree holds: what the server sees, a shared socket counted once."""
    pids = {p.pid for p in members}
    return sum(1 for c in found.connections.values() if c.kind == POSTGRESQL and pids & set(c.pids))


def shared_sockets(found: Survey) -> list[Finding]:
    role = {p.pid: f"{p.server} {p.role}" for p in found.processes}
    out = []
    for conn in sorted(found.connections.values(), key=lambda c: c.inode):
        if len(conn.pids) > 1:
            holders = ", ".join(f"{pid} ({role.get(pid, '?')})" for pid in sorted(conn.pids))
            out.append(
                Finding(
                    SHARED_SOCKET,
                    ERROR,
                    f"{conn.kind} connection {conn.client} -> {conn.server} (socket {conn.inode}) is held by "
                    f"{len(conn.pids)} processes: {holders}; an inherited connection nobody detached",
                    tuple(sorted(conn.pids)),
                )
            )
    return out


def masters_holding(found: Survey) -> list[Finding]:
    counts = database_counts(found)
    return [
        Finding(
            MASTER_CONNECTION,
            ERROR,
            f"{p.server} master {p.pid} holds {counts[p.pid]} database connection(s); "
            "every worker forked from it inherits them",
            (p.pid,),
        )
        for p in found.processes
        if p.role == "master" and counts[p.pid]
    ]


def above_pool_size(found: Survey, expect: Expectations) -> list[Finding]:
    counts = database_counts(found)
    out = []
    trees: dict[int, list[Examined]] = {}
    for proc in found.processes:
        trees.setdefault(proc.tree, []).append(proc)
    for master, members in sorted(trees.items()):
        size = expect.for_server(members[0].server)
        if size is None:
            continue
        workers = [p for p in members if p.role == "worker"]
        for proc in workers:
            if counts[proc.pid] > size:
                out.append(
                    Finding(
                        ABOVE_POOL_SIZE,
                        ERROR,
                        f"{proc.server} worker {proc.pid} holds {counts[proc.pid]} database connections, "
                        f"above its pool size {size}",
                        (proc.pid,),
                    )
                )
        total, ceiling = tree_database_sockets(found, members), len(workers) * size
        if total > ceiling:
            out.append(
                Finding(
                    ABOVE_CEILING,
                    ERROR,
                    f"{members[0].server} tree {master}: {total} database connections, above "
                    f"{len(workers)} workers x pool {size} = {ceiling}",
                    (master,),
                )
            )
    return out


def server_sessions(found: Survey, expect: Expectations) -> list[Finding]:
    out = []
    for session in found.sessions:
        who = f"{session.kind} session {session.server_id} ({session.name or 'no name'}, client {session.client})"
        if session.where == "gone":
            out.append(
                Finding(
                    ORPHAN_SESSION,
                    ERROR,
                    f"{who} has no client process on this host: its client is gone and the server has not noticed",
                )
            )
        elif session.where == "outside":
            out.append(
                Finding(
                    OUTSIDE_SESSION,
                    NOTE,
                    f"{who} belongs to process {session.client_pid}, outside the examined trees",
                    (session.client_pid,) if session.client_pid else (),
                )
            )
        idle = session.idle_in_transaction_s
        if idle is not None and idle > expect.idle_in_transaction_s:
            pids = (session.client_pid,) if session.client_pid else ()
            out.append(
                Finding(
                    IDLE_IN_TRANSACTION,
                    ERROR,
                    f"{who} has been idle in transaction for {idle:.0f} s "
                    f"(threshold {expect.idle_in_transaction_s:g} s): it holds its locks and snapshot",
                    pids,
                )
            )
    return out
