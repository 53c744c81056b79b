"""Real servers for tests: a process started as a user starts it, its children, HTTP, and sessions by identity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from harness._procs import log_tail, spawn
from harness.processes import child_pids


class Server:
    """A server started from a recipe's directory as a user would, logging to a file; stop() ends it."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.proc = spawn(argv, log_path=log_path, cwd=cwd, user=None, death_signal=signal.SIGTERM, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        return child_pids(self.pid) if self.proc.poll() is None else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{what}: the server exited ({self.proc.returncode}): {log_tail(self.log_path, 12)}")
            if ready():
                return
            time.sleep(0.05)
        pytest.fail(f"{what}: not after {timeout:.0f} s: {log_tail(self.log_path, 12)}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: workers run their exit hooks), then SIGKILL whatever of its session is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait(timeout)


def gunicorn_argv(app: str, port: int, workers: int, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{port}", *options]
    if int(metadata.version("gunicorn").split(".")[0]) >= 25:
        argv.append("--no-control-socket")  # else parallel servers share ~/.gunicorn/gunicorn.ctl
    return [*argv, app]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def by_process(sessions: Callable[..., list], suite_id: str) -> dict[tuple[str, int], list[int]]:
    """This test's sessions as {(role, process pid): [backend pids]}, every role."""
    found: dict[tuple[str, int], list[int]] = {}
    for name, backend in sessions():
        sid, role, pid = name.rsplit(":", 2)
        assert sid == suite_id
        found.setdefault((role, int(pid)), []).append(backend)
    return found
