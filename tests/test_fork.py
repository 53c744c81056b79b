"""Fork safety: children detach inherited pools without touching the parent's sessions."""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import sys

import pytest

import forkpool
import forkpool.fork
from forkpool import _base as keys
from tests.conftest import backend_pids

# Every test here runs once per driver (psycopg2, psycopg 3): the same guarantees for both.
pytestmark = pytest.mark.usefixtures("driver")


def child_uses_its_own_pool(report_fd: int, size: int) -> None:
    """Runs in the child: build a pool, report its backend pids, close it properly."""
    try:
        pool = forkpool.get_pool()
        pids = backend_pids(pool, size)
        os.write(report_fd, (",".join(map(str, pids)) + "\n").encode())
        forkpool.close_all()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - the parent reads the failure
        os.write(report_fd, f"error {exc!r}\n".encode())
        code = 1
    os._exit(code)


def read_report(fd: int) -> list[int]:
    with os.fdopen(fd) as stream:
        line = stream.readline().strip()
    assert not line.startswith("error"), line
    return [int(p) for p in line.split(",")]


@pytest.mark.parametrize("child_closes", ["close_all", "exit_without_closing"])
def test_os_fork_child_gets_own_pool_and_parent_sessions_survive(count_settles, monkeypatch, child_closes):
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    pool = forkpool.get_pool()
    parent_pids = backend_pids(pool, 3)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        if child_closes == "exit_without_closing":
            forkpool.get_pool()  # the inherited pool is never touched again; the process just ends
            os._exit(0)
        child_uses_its_own_pool(write_fd, 3)
    os.close(write_fd)
    if child_closes == "close_all":
        child_pids = read_report(read_fd)
        assert set(child_pids).isdisjoint(parent_pids)
    else:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Every one of the parent's sessions still answers, on the same backends.
    assert sorted(backend_pids(pool, 3)) == sorted(parent_pids)
    assert pool.stats()[keys.CONNECTIONS_DISCARDED] == 0
    assert count_settles(3) == 3


def test_while_children_run_the_server_sees_exactly_what_each_process_owns(sessions, count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    assert pool.wait(10)
    children, go_fds = [], []
    for _ in range(3):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r), os.close(go_w)
            child = forkpool.get_pool()
            ok = child is not pool and child.wait(10)
            os.write(ready_w, b"1" if ok else b"0")
            os.read(go_r, 1)  # hold the pool open until the parent has counted
            forkpool.close_all()
            os._exit(0 if ok else 1)
        os.close(ready_w), os.close(go_r)
        assert os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        children.append(pid)
        go_fds.append(go_w)
    by_pid: dict[str, int] = {}
    for name, _ in sessions():
        by_pid[name.rsplit(":", 1)[1]] = by_pid.get(name.rsplit(":", 1)[1], 0) + 1
    assert by_pid == {str(p): 2 for p in [os.getpid(), *children]}
    for fd in go_fds:
        os.write(fd, b"x")
        os.close(fd)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert count_settles(2) == 2
    assert len(backend_pids(pool, 2)) == 2


def _mp_child(queue) -> None:
    pool = forkpool.get_pool()
    queue.put(backend_pids(pool, 2))
    forkpool.close_all()


def test_multiprocessing_fork_children_get_their_own_pools(count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    parent_pids = backend_pids(pool, 2)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_mp_child, args=(queue,)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    child_pids = {pid for result in results for pid in result}
    assert len(child_pids) == 4 and child_pids.isdisjoint(parent_pids)
    assert sorted(backend_pids(pool, 2)) == sorted(parent_pids)
    assert count_settles(2) == 2


def test_inherited_pool_object_refuses_use_in_the_child(monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    pool = forkpool.get_pool()
    assert pool.wait(10)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            pool.getconn()
            os.write(write_fd, b"handed out an inherited connection")
        except forkpool.PoolClosed as exc:
            os.write(write_fd, b"ok" if "inherited across fork" in str(exc) else str(exc).encode())
        os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 200) == b"ok"
    os.waitpid(pid, 0)
    assert len(backend_pids(pool, 1)) == 1


def test_after_fork_in_child_is_idempotent(count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    assert pool.wait(10)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        forkpool.fork.after_fork_in_child()
        child = forkpool.get_pool()
        forkpool.fork.after_fork_in_child()  # again: must not drop the child's own pool
        ok = forkpool.get_pool() is child and child.wait(10)
        os.write(write_fd, b"ok" if ok else b"no")
        forkpool.close_all()
        os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 2) == b"ok"
    os.waitpid(pid, 0)
    assert count_settles(2) == 2


def test_reload_and_double_import_do_not_create_a_second_pool(count_settles, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    assert pool.wait(10)
    for name in ("forkpool._registry", "forkpool._pool", "forkpool._process", "forkpool._base", "forkpool"):
        importlib.reload(sys.modules[name])
    assert forkpool.get_pool() is pool
    # The same file imported again under another module name (a second sys.path entry).
    spec = importlib.util.spec_from_file_location(
        "registry_copy", forkpool._registry.__file__, submodule_search_locations=None
    )
    copy = importlib.util.module_from_spec(spec)
    copy.__package__ = "forkpool"
    spec.loader.exec_module(copy)
    assert copy.get_pool() is pool
    assert count_settles(2) == 2
