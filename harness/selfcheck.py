"""A short proof of the pool on a real server: forked processes, one pool each, nothing shared.

This is what `forkpool demo` runs until the full harness (Gunicorn + Celery
under load) lands: the parent and N forked children each open a pool of P
connections; the server must see exactly (N + 1) x P sessions of this run,
grouped by pid, and the parent's sessions must survive its children.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import psycopg2

import shared

CHILD_ROLE = "child"
PARENT_ROLE = "parent"


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class SelfCheckReport:
    suite_id: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _backend_pids(pool: shared.Pool, count: int) -> list[int]:
    conns = [pool.getconn(timeout=10) for _ in range(count)]
    try:
        pids = []
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.append(cur.fetchone()[0])
        return pids
    finally:
        for conn in conns:
            pool.putconn(conn)


def _child(size: int, results: "multiprocessing.Queue[list[int]]", release: "multiprocessing.Event") -> None:
    shared.set_process_role(CHILD_ROLE)
    pool = shared.get_pool()
    results.put(_backend_pids(pool, size))
    release.wait(30)
    shared.close_all()


def _sessions(admin_url: str, suite_id: str) -> dict[str, int]:
    conn = psycopg2.connect(admin_url, application_name="forkpool-observer")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE %s GROUP BY 1",
                (f"{suite_id}:%",),
            )
            return dict(cur.fetchall())
    finally:
        conn.close()


def run_selfcheck(database_url: str, children: int = 3, size: int = 4,
                  progress: Callable[[str], None] = print) -> SelfCheckReport:
    suite_id = f"selfcheck-{uuid.uuid4().hex[:8]}"
    shared.set_identity(suite_id=suite_id, role=PARENT_ROLE)
    shared.configure(dsn=database_url, min_size=size, max_size=size, timeout=10)
    report = SelfCheckReport(suite_id)
    pool = shared.get_pool()
    parent_pids = _backend_pids(pool, size)
    progress(f"parent {os.getpid()}: pool of {size}, backends {parent_pids}")

    ctx = multiprocessing.get_context("fork")
    results, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_child, args=(size, results, release)) for _ in range(children)]
    for proc in procs:
        proc.start()
    child_pids = [results.get(timeout=30) for _ in procs]
    progress(f"{children} children forked, each with its own pool")
    seen = _sessions(database_url, suite_id)
    expected = (children + 1) * size
    total = sum(seen.values())
    report.checks.append(Check("server sees (children + 1) x pool size", total == expected,
                               f"expected {expected}, observed {total} in {len(seen)} processes"))
    shared_backends = {p for pids in child_pids for p in pids} & set(parent_pids)
    report.checks.append(Check("no backend shared across processes", not shared_backends,
                               f"{len(shared_backends)} shared"))
    release.set()
    for proc in procs:
        proc.join(30)
    survived = sorted(_backend_pids(pool, size)) == sorted(parent_pids)
    report.checks.append(Check("parent's sessions survive its children", survived,
                               f"parent backends {'unchanged' if survived else 'changed'}"))
    shared.close_all()
    deadline = time.monotonic() + 10
    while sum(_sessions(database_url, suite_id).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = sum(_sessions(database_url, suite_id).values())
    report.checks.append(Check("nothing left after close", left == 0, f"{left} sessions left"))
    return report
