"""`forkpool doctor` on one running suite: counts above the pool size, discovery without --pid,
the table a person reads, and --watch.

One deployment (2 web workers, 2 task processes, pools of 2) serves every assertion here. Each
finding is asked for where it must appear and where it must not: a missed flag and an invented
one both fail.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

from harness.processes import SuitePlan, start_suite
from tests.test_doctor import children_of, codes, doctor, get
from tests.test_suite import suite_database  # noqa: F401 - fixture: a database with the suite's schema

POOL = 2


@pytest.fixture(scope="module")
def suite(suite_database, redis_url, tmp_path_factory):  # the fixture imported above
    plan = SuitePlan(
        database_url=suite_database,
        redis_url=redis_url,
        suite_id=f"dcl{uuid.uuid4().hex[:6]}",
        web_workers=2,
        worker_concurrency=2,
        pool_size=POOL,
    )
    running = start_suite(plan, tmp_path_factory.mktemp("doctor-cli"))
    try:
        get(f"{running.web.url}/items?limit=1")
        yield running, suite_database
    finally:
        running.stop()


def _pids(suite) -> tuple[int, int, list[int], list[int]]:
    running, _ = suite
    return running.web.pid, running.worker.pid, children_of(running.web.pid), children_of(running.worker.pid)


def findings_of(report: dict, code: str) -> list[tuple[int, ...]]:
    return sorted(tuple(f["pids"]) for f in report["findings"] if f["code"] == code)


def test_processes_above_the_pool_size_and_trees_above_their_ceiling_are_flagged(suite):
    _, dsn = suite
    web, worker, web_children, worker_children = _pids(suite)
    masters = ["--pid", str(web), "--pid", str(worker), "--dsn", dsn]

    code, right = doctor(*masters, "--pool-size", str(POOL))
    assert code == 0 and codes(right) == set(), right["findings"]  # the true size: nothing invented

    code, small = doctor(*masters, "--pool-size", "1")
    assert code == 1 and codes(small) == {"above-pool-size", "above-ceiling"}, small["findings"]
    # every worker holds 2, above 1; each tree 4 connections, above 2 workers x 1
    assert findings_of(small, "above-pool-size") == sorted((pid,) for pid in web_children + worker_children)
    assert findings_of(small, "above-ceiling") == sorted([(web,), (worker,)])

    code, per_role = doctor(*masters, "--pool-size", f"gunicorn={POOL}", "--pool-size", "celery=1")
    assert code == 1 and codes(per_role) == {"above-pool-size", "above-ceiling"}, per_role["findings"]
    assert findings_of(per_role, "above-pool-size") == sorted((pid,) for pid in worker_children)
    assert findings_of(per_role, "above-ceiling") == [(worker,)]


def test_without_pid_it_finds_the_arbiter_and_the_celery_main_process_by_itself(suite):
    _, dsn = suite
    web, worker, web_children, worker_children = _pids(suite)
    _code, report = doctor("--dsn", dsn, "--pool-size", str(POOL))
    found = {p["pid"]: p for p in report["processes"]}
    # Other tests may run their own servers beside this one: ours must be among what it found.
    assert found[web]["role"] == "master" and found[web]["server"] == "gunicorn", found.get(web)
    assert found[worker]["role"] == "master" and found[worker]["server"] == "celery", found.get(worker)
    for pid in web_children + worker_children:
        assert found[pid]["role"] == "worker" and found[pid]["postgresql"] == POOL, found.get(pid)
    ours = {web, worker, *web_children, *worker_children}
    assert not [f for f in report["findings"] if f["severity"] == "error" and set(f["pids"]) & ours]


def test_the_table_shows_each_process_and_the_trees_totals(suite):
    _, dsn = suite
    web, worker, web_children, _ = _pids(suite)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forkpool",
            "doctor",
            "--pid",
            str(web),
            "--pid",
            str(worker),
            "--pool-size",
            str(POOL),
            "--dsn",
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # tree, role, pid, process, postgresql, redis, shared: the Gunicorn tree's rows come first
    rows = [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    ]
    assert [(r[0], r[1], r[2], r[4], r[6]) for r in rows[:4]] == [
        (f"gunicorn {web}", "master", str(web), "0", ""),
        *[("", "worker", str(pid), str(POOL), "") for pid in web_children],
        ("", "total", "", str(2 * POOL), ""),
    ], result.stdout
    assert rows[3][3] == f"2 workers, ceiling 2 x {POOL} = {2 * POOL}", result.stdout
    assert "clean: no shared socket" in result.stdout and "Traceback" not in result.stderr


def test_watch_refreshes_until_ctrl_c_and_exits_cleanly(suite):
    """On a terminal (a pty here, as a person runs it), the table is redrawn until SIGINT, then exit 0."""
    _, dsn = suite
    web, _, _, _ = _pids(suite)
    controller, terminal = pty.openpty()
    # Run from a shell's background job (`cmd &`), the tests inherit SIGINT ignored, and so would the
    # doctor: Ctrl-C would do nothing, rightly. A person's foreground command has it at its default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "forkpool",
                "doctor",
                "--watch",
                "0.3",
                "--pid",
                str(web),
                "--pool-size",
                str(POOL),
                "--dsn",
                dsn,
            ],
            stdin=terminal,
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    # The terminal stays open on this side until the process has gone, as a person's shell keeps it.
    # Were the process's close the terminal's last, Linux would make the exiting process wait (in
    # the kernel, 10 to 30 s seen here) for its last output to be read, which EIO stops us reading.
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while screen.count(b"surveyed in") < 3 and time.monotonic() < deadline:
            screen += _read_ready(controller)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            screen += _read_ready(controller)  # as a terminal does: the last redraw must not block
        err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(terminal)
        os.close(controller)
    assert screen.count(b"surveyed in") >= 3, screen[-2000:]  # redrawn, not printed once
    assert proc.returncode == 0, err  # clean, as the last refresh found it
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _read_ready(controller: int, wait: float = 0.2) -> bytes:
    ready, _, _ = select.select([controller], [], [], wait)
    return os.read(controller, 65536) if ready else b""
