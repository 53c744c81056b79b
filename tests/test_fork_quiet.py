"""Forking a process that holds forkpool pools emits no threaded-fork DeprecationWarning (Python 3.12+).

Each scenario runs tests/fork_quiet_program.py in a process of its own under
``-W error::DeprecationWarning``, with this test's Python: under 3.11 the warning does
not exist (the scenarios still check the pools' behaviour across forks); bootstrap.py
``test`` also runs this file with each .venv-3.* it builds (3.12, 3.13), where it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).with_name("fork_quiet_program.py")


@pytest.mark.parametrize("scenario", ["pools", "backoff", "recovery", "idle_close", "stuck", "spawn", "gevent", "aio"])
def test_forks_of_a_process_holding_pools(scenario: str, database_url: str) -> None:
    """No scenario warns, except `stuck`, whose one fork may (it checks that nothing hangs instead)."""
    if scenario == "aio":
        pytest.importorskip("psycopg", reason="the asyncio pool needs psycopg 3")
    if scenario == "gevent":
        pytest.importorskip("gevent", reason="gevent is not installed")
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("DB_POOL_IDLE_CLOSE", None)
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(PROGRAM), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.startswith("OK "), done.stdout
    assert "multi-threaded" not in done.stderr


def test_maintainer_benchmark_runs(database_url: str) -> None:
    """benchmarks/maintainer_cost.py still runs (--quick, this Python only); figures are not checked."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.maintainer_cost", "--quick", "--python", sys.executable],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "probe failed" not in done.stdout and " this " in done.stdout, done.stdout
