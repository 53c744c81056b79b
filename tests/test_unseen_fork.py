"""A fork Python's at-fork hooks never see (uWSGI's, C code calling fork()): the pid check releases what it inherited.

The child here is made by libc's ``fork()`` called through ctypes, so none of
``os.register_at_fork``'s hooks run, as under uWSGI. ``ctypes.PyDLL`` keeps the
GIL across the call (``CDLL`` releases it, and a child forked while another
thread holds the GIL could never take it again: uWSGI forks with it held too).
The first forkpool call in the child (``get_pool()``, a ``per_process`` client,
``protect``, ``close_all`` at exit) notices the new pid and runs the same
routine the at-fork hook runs: every socket the child inherited to the servers
goes to /dev/null or is closed, none is shared with the parent any more, the
child's sessions are its own, and the parent's answer on the same backends.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Callable

import psycopg2
import pytest

import forkpool
import forkpool.identity
from forkpool import _protect as protection
from forkpool import _sockets as kernel_sockets
from forkpool._base import drop_without_io
from forkpool._endpoints import postgres
from tests.conftest import backend_pids, on_devnull


def c_fork() -> int:
    """fork() from C: no Python at-fork hook runs in the parent or the child."""
    return int(ctypes.PyDLL(None).fork())


def in_c_child(work: Callable[[], dict]) -> dict:
    """C-fork; the child runs `work` and reports its dict as JSON (or {"error": ...}); returns it."""
    read_fd, write_fd = os.pipe()
    pid = c_fork()
    if pid == 0:
        try:
            try:
                report = json.dumps(work())
            except BaseException as exc:  # noqa: BLE001 - the parent asserts on it
                report = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
            os.write(write_fd, report.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(b"".join(chunks))
    assert "error" not in report, report
    return report


def server_sockets(database_url: str) -> dict[int, int]:
    """This process's sockets connected to the database server: {fd: socket inode}."""
    ends = postgres(database_url)
    return {
        fd: inode
        for fd, inode in kernel_sockets.socket_fds("self").items()
        if kernel_sockets._leads_to(kernel_sockets.own_peer(fd), ends)
    }


def forkpool_sockets(database_url: str, baseline: dict[int, int]) -> dict[int, int]:
    """In the parent: its sockets to the server that forkpool's objects opened (those not in `baseline`,
    taken at the test's start: an observer connection the test process holds is no business of forkpool's)."""
    return {fd: inode for fd, inode in server_sockets(database_url).items() if baseline.get(fd) != inode}


def released(owned: dict[int, int], baseline: dict[int, int], database_url: str) -> dict:
    """In the child: what became of the sockets forkpool's objects held in the parent, and what is shared."""
    now = kernel_sockets.socket_fds("self")
    parent = set(kernel_sockets.socket_inodes(os.getppid())) - set(baseline.values())
    return {
        "inherited": len(owned),
        "still_inherited": sum(1 for fd, inode in owned.items() if now.get(fd) == inode),
        # where each inherited descriptor points now: /dev/null (detached, its object still alive), closed
        # (detached, then the object was dropped), or reused by something of the child's since
        "now": sorted(_points_to(fd, inode, now) for fd, inode in owned.items()),
        # no socket of the child to the server is one the parent holds (the observer's aside)
        "shared_with_parent": len(set(server_sockets(database_url).values()) & parent),
    }


def _points_to(fd: int, inode: int, now: dict[int, int]) -> str:
    try:
        if on_devnull(fd):
            return "/dev/null"
    except OSError:
        return "closed"
    return "the inherited socket" if now.get(fd) == inode else "reused"


def assert_released(report: dict) -> None:
    assert report["inherited"] > 0, report  # the child did inherit the parent's sockets
    assert report["still_inherited"] == 0, report
    assert "the inherited socket" not in report["now"], report
    assert report["shared_with_parent"] == 0, report


@pytest.fixture
def forget_protected():
    yield
    protection.unprotect_all()


def test_get_pool_in_a_c_forked_child_builds_its_own_and_the_parents_survive(monkeypatch, database_url, count_settles):
    baseline = server_sockets(database_url)
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    parent = backend_pids(pool, 2)
    owned = forkpool_sockets(database_url, baseline)

    def child() -> dict:
        mine = forkpool.get_pool()
        report = released(owned, baseline, database_url)
        report.update(same=mine is pool, backends=backend_pids(mine, 2), pid=os.getpid())
        try:
            pool.getconn(timeout=1)
            report["inherited_pool"] = "handed out a connection"
        except forkpool.PoolClosed as exc:
            report["inherited_pool"] = "refused" if "inherited across fork" in str(exc) else str(exc)
        forkpool.close_all()  # the child's own sessions end with a goodbye
        return report

    seen = in_c_child(child)
    assert_released(seen)
    assert not seen["same"] and seen["inherited_pool"] == "refused"
    assert len(set(seen["backends"])) == 2 and set(seen["backends"]).isdisjoint(parent)
    assert sorted(backend_pids(pool, 2)) == sorted(parent)  # the parent's sessions answer, on the same backends
    assert count_settles(2) == 2


@pytest.fixture
def key(request) -> str:
    return f"tests.unseen.{request.node.name}"


def test_a_per_process_client_first_releases_everything_inherited(key, monkeypatch, database_url):
    baseline = server_sockets(database_url)
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    pool = forkpool.get_pool()
    make = forkpool.per_process(
        lambda: psycopg2.connect(database_url, application_name=forkpool.identity.application_name()),
        detach=drop_without_io,
        close=lambda c: c.close(),
        key=key,
    )

    def backend(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return int(cur.fetchone()[0])

    parent_client, parent_pool = backend(make()), backend_pids(pool, 1)
    owned = forkpool_sockets(database_url, baseline)

    def child() -> dict:
        mine = backend(make())  # the first forkpool call in the child: the pid check runs the routine
        report = released(owned, baseline, database_url)
        report.update(client=mine, pool=backend_pids(forkpool.get_pool(), 1))
        forkpool.close_all()
        return report

    seen = in_c_child(child)
    assert_released(seen)
    assert seen["inherited"] == 2  # the client's connection and the pool's
    assert seen["client"] != parent_client and seen["pool"] != parent_pool
    assert backend(make()) == parent_client and backend_pids(pool, 1) == parent_pool
    make.close()


def _engine(database_url: str):
    from sqlalchemy import create_engine

    return create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg2://", 1), pool_size=2, max_overflow=0, pool_timeout=10
    )


def _engine_backends(engine) -> set[int]:
    from sqlalchemy import text

    held = [engine.connect() for _ in range(engine.pool.size())]
    try:
        return {int(conn.execute(text("SELECT pg_backend_pid()")).scalar()) for conn in held}
    finally:
        for conn in held:
            conn.close()


@pytest.mark.parametrize("first_call", ["get_pool", "close_all"])
def test_a_protected_engine_in_a_c_forked_child(first_call, monkeypatch, database_url, forget_protected):
    """`get_pool`: the child then uses the engine, on sessions of its own. `close_all`: the child only
    exits the way a worker does (atexit, uwsgi.atexit): what it inherited is detached, not closed."""
    pytest.importorskip("sqlalchemy", reason="forkpool.protect(engine) needs SQLAlchemy")
    baseline = server_sockets(database_url)
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    engine = forkpool.protect(_engine(database_url))
    parent = _engine_backends(engine)
    pool_parent = backend_pids(forkpool.get_pool(), 1)
    owned = forkpool_sockets(database_url, baseline)

    def child() -> dict:
        if first_call == "close_all":
            forkpool.close_all()
            return released(owned, baseline, database_url)
        forkpool.get_pool()
        report = released(owned, baseline, database_url)
        report["engine"] = sorted(_engine_backends(engine))
        forkpool.close_all()
        return report

    seen = in_c_child(child)
    assert_released(seen)
    assert seen["inherited"] == 3  # the engine's two and the pool's one
    if first_call == "get_pool":
        assert len(seen["engine"]) == 2 and parent.isdisjoint(seen["engine"])
    assert _engine_backends(engine) == parent  # the parent's sessions were not ended by the child
    assert backend_pids(forkpool.get_pool(), 1) == pool_parent
    engine.dispose()


def test_threads_racing_on_first_use_in_a_c_forked_child_get_one_pool(monkeypatch, database_url, count_settles):
    baseline = server_sockets(database_url)
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    parent = backend_pids(pool, 2)
    owned = forkpool_sockets(database_url, baseline)

    def child() -> dict:
        barrier = threading.Barrier(6)
        found: list[int] = []

        def use() -> None:
            barrier.wait(10)
            found.append(id(forkpool.get_pool()))

        threads = [threading.Thread(target=use) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        report = released(owned, baseline, database_url)
        report.update(pools=len(set(found)), calls=len(found), backends=backend_pids(forkpool.get_pool(), 2))
        forkpool.close_all()
        return report

    seen = in_c_child(child)
    assert_released(seen)
    assert seen["calls"] == 6 and seen["pools"] == 1
    assert set(seen["backends"]).isdisjoint(parent)
    assert sorted(backend_pids(pool, 2)) == sorted(parent)
    assert count_settles(2) == 2


def test_a_pool_held_across_the_fork_refuses_in_a_c_forked_child(monkeypatch, database_url):
    """The child's first forkpool call is getconn() on the parent's Pool object (a module-level
    `pool = get_pool()`): the pool's own pid check runs the routine, then the pool refuses."""
    baseline = server_sockets(database_url)
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    pool = forkpool.get_pool()
    parent = backend_pids(pool, 2)
    owned = forkpool_sockets(database_url, baseline)

    def child() -> dict:
        try:
            pool.getconn(timeout=1)
            refused = "handed out a connection"
        except forkpool.PoolClosed as exc:
            refused = "refused" if "inherited across fork" in str(exc) else str(exc)
        report = released(owned, baseline, database_url)
        report.update(refused=refused, backends=backend_pids(forkpool.get_pool(), 2))
        forkpool.close_all()
        return report

    seen = in_c_child(child)
    assert_released(seen)
    assert seen["refused"] == "refused" and set(seen["backends"]).isdisjoint(parent)
    assert sorted(backend_pids(pool, 2)) == sorted(parent)


def test_the_fork_sentinel_is_wiped_by_every_fork_and_set_once_the_child_has_released():
    """The pid check without a system call: the kernel zeroes the page in a child of any fork
    (MADV_WIPEONFORK); Python's at-fork hook sets it again at once, a C fork's child at its first
    forkpool call."""
    from forkpool._process import _PidSentinel, sentinel

    page = sentinel()
    assert not isinstance(page, _PidSentinel), "Linux 4.14+ wipes a page on fork: the sentinel is that page"
    assert page[0] == 1

    def c_child() -> dict:
        before = page[0]
        forkpool.close_all()  # a forkpool call: the pid check's slow path runs the routine
        return {"before": before, "after": page[0]}

    assert in_c_child(c_child) == {"before": 0, "after": 1}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_fd, bytes([page[0]]))
        os._exit(0)
    os.close(write_fd)
    seen = os.read(read_fd, 1)
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert seen == b"\x01"  # the at-fork hook released what the child inherited, and said so
    assert page[0] == 1  # the parent's is never touched


def test_a_pool_made_in_a_c_forked_child_releases_what_the_process_inherited(monkeypatch, database_url):
    """The child's first forkpool object is a Pool of its own (its pid is the child's): its first
    checkout still sees the fork and releases the parent's sockets before lending anything."""
    baseline = server_sockets(database_url)
    monkeypatch.setenv("DB_POOL_SIZE", "2")
    parent_pool = forkpool.get_pool()
    parent = backend_pids(parent_pool, 2)
    owned = forkpool_sockets(database_url, baseline)
    settings = parent_pool.settings

    def child() -> dict:
        own = forkpool.Pool(settings, name="made-in-child")
        try:
            with own.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                (backend,) = cur.fetchone()
        finally:
            own.close()
        report = released(owned, baseline, database_url)
        report["backend"] = backend
        return report

    seen = in_c_child(child)
    assert_released(seen)
    assert seen["backend"] not in parent
    assert sorted(backend_pids(parent_pool, 2)) == sorted(parent)


def test_the_sentinel_is_a_page_only_if_the_kernel_says_it_wipes_it():
    """An emulator may accept MADV_WIPEONFORK and ignore it: the page's VmFlags decide."""
    import mmap

    from forkpool._process import _wiped_on_fork, sentinel

    assert _wiped_on_fork(sentinel())  # type: ignore[arg-type]
    plain = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    assert not _wiped_on_fork(plain)  # no advice taken: no "wf"


def test_where_no_page_is_wiped_on_fork_the_sentinel_is_the_pid_compare(monkeypatch):
    """Not Linux (or a kernel before 4.14): the same answer from owner_pid == getpid()."""
    import sys

    from forkpool._process import _new_fork_sentinel, _PidSentinel, home

    monkeypatch.setattr(sys, "platform", "darwin")
    fallback = _new_fork_sentinel()
    assert isinstance(fallback, _PidSentinel)
    assert fallback[0] == 1
    monkeypatch.setattr(home(), "owner_pid", os.getpid() + 1)  # as in a child nothing has released yet
    assert fallback[0] == 0


def test_a_second_thread_of_a_c_forked_child_waits_for_the_routine_another_thread_runs():
    """Two pid checks in a C-forked child: the second thread goes on only once the first has released
    everything (the routine used to replace the lock the first thread held, letting the second through)."""
    import time

    from forkpool._process import home, notice_fork, on_fork_in_child

    def child() -> dict:
        started, log = threading.Event(), []

        def slow_release() -> None:  # the last of the routine's steps, made slow
            started.set()
            time.sleep(0.3)
            log.append("released")

        on_fork_in_child("test-slow-release", slow_release)
        first = threading.Thread(target=notice_fork)
        first.start()
        assert started.wait(10)
        notice_fork()  # the second thread: this one
        log.append("second thread went on")
        first.join(10)
        return {"log": log}

    try:
        assert in_c_child(child)["log"] == ["released", "second thread went on"]
    finally:
        home().child_callbacks.pop("test-slow-release", None)
