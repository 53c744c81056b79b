"""A Django process with its database open and a thread querying forks, again and again; one JSON report on stdout.

Run by tests/test_protect_django.py with DJANGO_SETTINGS_MODULE=probe_site.settings,
PROTECT=1 and DJANGO_DB=pool|classic. The parent keeps its connection (the
main thread's, checked out of the pool when pooled) and a second thread
queries on its own all the time, so forks land while a query, a pool checkout
or a return is under way. Each child reports what it inherited after the
at-fork hook, queries on a connection of its own, closes it and exits; the
parent says which sessions it held before and after.
Usage: django_fork_program.py FORKS
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time

import django

django.setup()

from django.db import connection, connections  # noqa: E402
from django.db.backends.postgresql.base import DatabaseWrapper  # noqa: E402

import forkpool  # noqa: E402
from forkpool.django.databases import graveyard  # noqa: E402

HANG_S = 20.0


def whoami() -> tuple[int, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        backend, name = cursor.fetchone()
    return backend, name


def sessions_named(name: str) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid", [name])
        return [row[0] for row in cursor.fetchall()]


def sessions_of_others(name: str) -> list[str]:
    """Sessions of this run (same suite id) not named like the parent's: the children's."""
    suite = name.split(":", 1)[0]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s AND application_name <> %s",
            [f"{suite}:%", name],
        )
        return [row[0] for row in cursor.fetchall()]


def child(report_fd: int) -> None:
    state = {
        "pid": os.getpid(),
        "pools": sorted(DatabaseWrapper._connection_pools),
        "connection": connection.connection is not None,
        "graveyard": len(graveyard()),
    }
    state["backend"], state["name"] = whoami()
    forkpool.close_all()  # what the server hooks do at worker exit
    os.write(report_fd, (json.dumps(state) + "\n").encode())


def main(forks: int) -> dict:
    random.seed(forks)
    _, name = whoami()
    pooled = bool(connection.settings_dict["OPTIONS"].get("pool"))
    stop, started = threading.Event(), threading.Event()
    trouble: list[str] = []
    busy_ops = [0]

    def busy() -> None:
        conn = connections["default"]  # this thread's own wrapper (and connection)
        while not stop.is_set():
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(0.002)")
                busy_ops[0] += 1
                started.set()
                if pooled and random.random() < 0.3:
                    conn.close()  # back to the pool (its lock taken), and out again at the next query
            except Exception as exc:  # noqa: BLE001 - counted: the parent must see none
                trouble.append(f"{type(exc).__name__}: {exc}")
        conn.close()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    started.wait(10)
    before = sessions_named(name)  # the main thread's and the busy thread's: the pool's two, or two connections
    read_fd, write_fd = os.pipe()
    children = []
    for _ in range(forks):
        time.sleep(random.uniform(0.0, 0.02))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child(write_fd)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    statuses = {}
    deadline = time.monotonic() + HANG_S
    while len(statuses) < len(children) and time.monotonic() < deadline:
        for pid in children:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    for pid in children:
        if pid not in statuses:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            statuses[pid] = "hung"
    os.close(write_fd)
    with os.fdopen(read_fd) as reports:
        seen = [json.loads(line) for line in reports]
    backend, _ = whoami()
    after = sessions_named(name)
    children_sessions = sessions_of_others(name)
    deadline = time.monotonic() + 5  # the server ends a session a moment after its client's goodbye
    while children_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
        children_sessions = sessions_of_others(name)
    stop.set()
    thread.join(10)
    return {
        "parent": os.getpid(),
        "name": name,
        "before": before,
        "after": after,
        "main_backend_alive": backend in before,
        "statuses": list(statuses.values()),
        "children": seen,
        "children_sessions": children_sessions,
        "busy_ops": busy_ops[0],
        "trouble": trouble[:5],
    }


if __name__ == "__main__":
    try:
        result = main(int(sys.argv[1]))
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the test shows it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    forkpool.close_all()
