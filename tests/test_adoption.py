"""Adopting forkpool in an existing app: forkpool's Gunicorn hooks called from a user's own, run for real.

Gunicorn runs tests/adoption/own_hooks with 2 workers and DB_POOL_SIZE=2: the
server must show exactly workers x 2 sessions, every one held by a worker,
none by the master.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness._procs import free_port, log_tail, spawn
from harness.processes import child_pids
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[1]
ADOPTION = REPO / "tests" / "adoption"
WORKERS = 2
POOL = 2


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


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def recipe_env(suite_id: str) -> dict[str, str]:
    """The test's environment (DATABASE_URL, REDIS_URL, SUITE_ID) with a fixed-size pool of 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "WORKER_", "PROMETHEUS_"))}
    env.update(DB_POOL_SIZE=str(POOL), PYTHONUNBUFFERED="1")
    return env


def gunicorn_argv(app: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}"]
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


def start_gunicorn(servers: list[Server], recipe: str, app: str, env: dict[str, str], tmp_path: Path
                   ) -> tuple[Server, str]:
    port = free_port()
    server = Server(gunicorn_argv(app, port), ADOPTION / recipe, env, tmp_path / f"{recipe}-gunicorn.log")
    servers.append(server)
    url = f"http://127.0.0.1:{port}/"
    server.wait_until(lambda: len(server.children()) == WORKERS and get(url)[0] == 200, "gunicorn ready")
    return server, url


def by_process(sessions: Callable[..., list], suite_id: str) -> dict[tuple[str, int], list[int]]:
    """This test's sessions as {(role, process pid): [backend pids]}, every role."""
    found: dict[tuple[str, int], list[int]] = {}
    for name, backend in sessions():
        sid, role, pid = name.rsplit(":", 2)
        assert sid == suite_id
        found.setdefault((role, int(pid)), []).append(backend)
    return found


def assert_children_hold_exactly(server: Server, role: str, sessions, count_settles, suite_id: str
                                 ) -> dict[int, list[int]]:
    """processes x POOL sessions, all of this role, each child holding POOL, the master none; {pid: backends}."""
    children = server.children()
    assert len(children) == WORKERS
    assert count_settles(WORKERS * POOL) == WORKERS * POOL  # every role: the master's would count too
    held = by_process(sessions, suite_id)
    assert {key: len(backends) for key, backends in held.items()} == {(role, pid): POOL for pid in children}
    assert server.pid not in {pid for _, pid in held}
    return {pid: backends for (_, pid), backends in held.items()}


# -- Gunicorn: hooks that compose with the user's own -----------------------------------------------

def test_user_hooks_call_forkpool_hooks_in_one_line(servers, recipe_env, tmp_path, sessions, count_settles,
                                                    suite_id):
    hook_log = tmp_path / "hooks.log"
    server, url = start_gunicorn(servers, "own_hooks", "app:app", {**recipe_env, "HOOK_LOG": str(hook_log)},
                                 tmp_path)
    backends = assert_children_hold_exactly(server, "web", sessions, count_settles, suite_id)
    workers = set(backends)

    for _ in range(20):
        status, body = get(url)
        assert status == 200
        answer = json.loads(body)
        assert answer["select"] == 1 and answer["backend_pid"] in backends[answer["pid"]]

    lines = [line.split() for line in hook_log.read_text().splitlines()]
    # The master imported the app (preload_app) and queried at import; when_ready left it no pool.
    assert [line for line in lines if line[0] == "when_ready"] == [["when_ready", str(server.pid), "0"]]
    # Each worker's pool was full (size 2) right after forkpool's post_fork, inside the user's hook.
    assert sorted(line for line in lines if line[0] == "post_fork") == sorted(
        ["post_fork", str(pid), str(POOL)] for pid in workers)

    assert server.stop() == 0
    lines = [line.split() for line in hook_log.read_text().splitlines()]
    assert sorted(line for line in lines if line[0] == "worker_exit") == sorted(
        ["worker_exit", str(pid), "0"] for pid in workers)  # forkpool's worker_exit closed every pool
    assert count_settles(0) == 0
