"""Server wiring: masters hold nothing, children open their own pool eagerly and close it on exit.

Real Gunicorn and Celery runs come with the suite's tests; these drive the same
hook functions through real forks and Celery's real signal objects.
"""

from __future__ import annotations

import os
import time

import pytest
from celery import signals

import forkpool
from forkpool import celery as celery_signals
from forkpool import gunicorn as gunicorn_hooks
from forkpool._servers import start_in_child


def fork_child(body) -> tuple[int, int]:
    """Fork a child that runs `body()` then waits for a byte on its pipe before exiting."""
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
            os.write(ready_w, b"1")
            os.read(go_r, 1)
        except BaseException:  # noqa: BLE001 - exit code tells the parent
            os.write(ready_w, b"0")
            code = 1
        os._exit(code)
    os.close(go_r), os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid, go_w


def release(children: list[tuple[int, int]]) -> None:
    for pid, go in children:
        os.write(go, b"x")
        os.close(go)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_gunicorn_hooks_master_holds_none_each_worker_holds_its_pool(sessions, count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    assert forkpool.get_pool().wait(10)  # the app opened a pool at import (preload_app)
    gunicorn_hooks.when_ready(server=None)
    assert count_settles(0) == 0

    def worker() -> None:
        gunicorn_hooks.pre_fork(server=None, worker=None)
        gunicorn_hooks.post_fork(server=None, worker=None)
        assert forkpool.get_pool().stats()["size"] == 3  # eager: full before serving
        gunicorn_hooks.worker_exit(server=None, worker=None)
        gunicorn_hooks.post_fork(server=None, worker=None)  # reopen to be counted while alive

    children = [fork_child(worker) for _ in range(3)]
    names = [name for name, _ in sessions()]
    assert len(names) == 9 and all(":web:" in n for n in names)
    assert {n.rsplit(":", 1)[1] for n in names} == {str(pid) for pid, _ in children}
    release(children)
    assert count_settles(0) == 0


def forkpool_receivers(signal) -> list[str]:
    """forkpool's receivers connected to a Celery signal, by dispatch_uid."""
    return [key[0] for key, _ in signal.receivers if str(key[0]).startswith("forkpool.")]


def test_celery_signals_open_in_each_child_and_close_on_shutdown(sessions, count_settles, monkeypatch):
    from celery import Celery

    monkeypatch.setenv("DB_POOL_SIZE", "2")
    celery_signals.wire_celery(Celery("first", set_as_current=False))
    celery_signals.wire_celery(Celery("second", set_as_current=False))  # idempotent: one receiver per signal
    celery_signals.wire_celery()
    assert forkpool_receivers(signals.worker_init) == ["forkpool.worker_init"]
    assert forkpool_receivers(signals.worker_process_init) == ["forkpool.worker_process_init"]
    assert forkpool_receivers(signals.worker_process_shutdown) == ["forkpool.worker_process_shutdown"]
    forkpool.get_pool().wait(10)
    signals.worker_init.send(sender=None)
    assert count_settles(0) == 0

    def child() -> None:
        signals.worker_process_init.send(sender=None)
        assert forkpool.get_pool().stats()["size"] == 2

    children = [fork_child(child) for _ in range(2)]
    assert count_settles(4, role="worker") == 4

    def shutting_down() -> None:
        signals.worker_process_init.send(sender=None)
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)

    extra = fork_child(shutting_down)
    assert count_settles(4, role="worker") == 4  # the third child closed its pool already
    release(children + [extra])
    assert count_settles(0) == 0


def test_child_start_is_bounded_when_the_database_is_down(pg_server, monkeypatch):
    if pg_server is None:
        pytest.skip("needs the embedded server")
    monkeypatch.setenv("DATABASE_URL", pg_server.url.replace(f":{pg_server.port}/", ":1/"))  # nothing listens
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    started = time.monotonic()
    assert start_in_child("worker", timeout=1.0) is False
    assert time.monotonic() - started < 3.5  # inside Celery's 4 s worker_process_init budget


def test_plain_scripts_close_their_pools_at_interpreter_exit(database_url):
    import subprocess
    import sys

    script = (
        "import atexit\n"
        "seen = {}\n"
        "atexit.register(lambda: print('closed at exit:', seen['pool'].closed))  # runs after forkpool's handler\n"
        "import forkpool\n"
        "seen['pool'] = forkpool.get_pool()\n"
        "assert seen['pool'].wait(10)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database_url, "DB_POOL_SIZE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "closed at exit: True" in result.stdout


def test_a_worker_opens_forkpools_default_pool_only_when_its_size_is_set_or_it_was_used(monkeypatch, sessions):
    """An app that only protects its own engine gets no second pool from DATABASE_URL alone."""
    from forkpool import _registry as registry

    monkeypatch.delenv("DB_POOL_SIZE", raising=False)
    assert registry.pool_names() == []
    monkeypatch.setenv("DB_POOL_MIN", "1")
    assert registry.pool_names() == ["default"]
    monkeypatch.delenv("DB_POOL_MIN")
    forkpool.get_pool()  # used (in a master before forking, say): its workers open it too
    assert registry.pool_names() == ["default"]
