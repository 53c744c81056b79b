"""multiprocessing and ProcessPoolExecutor (fork, forkserver, spawn): a child's pool is its own, and it says goodbye.

A multiprocessing child leaves through ``os._exit()`` after running
multiprocessing's own finalizers, never ``atexit``: forkpool registers its
close there (``per_process.watch_exit``). A session that ends without libpq's
Terminate message is logged by PostgreSQL (``unexpected EOF on client
connection``, at DEBUG1; "Connection reset by peer" when data was unread), so
a dedicated server logs every connection, disconnection and DEBUG1 line with
the backend pid and application name, and the children's sessions must have
ended without one. A control child that leaves with a bare ``os._exit(0)``
shows the log catching it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import pytest

import forkpool
from harness.services import EmbeddedPostgres
from tests.conftest import backend_pids, wait_for
from tests.runner_support import holders, logged_pg, without_goodbye  # noqa: F401 - logged_pg is a fixture

POOL = 2


@pytest.fixture
def logged_db(logged_pg: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> EmbeddedPostgres:
    monkeypatch.setenv("DATABASE_URL", logged_pg.url)
    monkeypatch.setenv("DB_POOL_SIZE", str(POOL))
    return logged_pg


def child_work(_: object = None) -> tuple[int, list[int]]:
    """In a child: its pool (made on first use), both connections asked for their backend pid."""
    return os.getpid(), backend_pids(forkpool.get_pool(), POOL)


def _process_target(queue, bare_exit: bool) -> None:
    queue.put(child_work())
    if bare_exit:
        queue.close()
        queue.join_thread()  # the report is sent (the queue's feeder thread flushed it)
        os._exit(0)  # the control: no finalizers, no goodbye


def run_processes(method: str, count: int, bare_exit: bool = False) -> list[tuple[int, list[int]]]:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process_target, args=(queue, bare_exit)) for _ in range(count)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return results


def run_executor(method: str, workers: int, tasks: int) -> list[tuple[int, list[int]]]:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as executor:
        return list(executor.map(child_work, range(tasks)))


METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("runner", ["Process", "ProcessPoolExecutor"])
@pytest.mark.parametrize("method", METHODS)
def test_children_have_their_own_pools_and_end_them_with_a_goodbye(method, runner, logged_db, suite_id):
    pool = forkpool.get_pool()
    parent = backend_pids(pool, POOL)
    results = run_processes(method, 2) if runner == "Process" else run_executor(method, 2, 6)
    children = {pid for pid, _ in results}
    backends = {b for _, pids in results for b in pids}
    assert os.getpid() not in children and backends.isdisjoint(parent)
    # One pool per child process, whatever number of tasks each ran.
    assert len(backends) == POOL * len(children), results
    assert without_goodbye(logged_db, backends) == {}
    assert sorted(backend_pids(pool, POOL)) == sorted(parent)  # the parent's sessions survived every child
    assert wait_for(lambda: holders(logged_db, suite_id) == {os.getpid(): POOL}, timeout=10), holders(
        logged_db, suite_id
    )
    print(
        f"multiprocessing {method} {runner}: {len(children)} children x {POOL} sessions, "
        f"all ended with a goodbye; the parent's {POOL} survived"
    )


def test_the_log_catches_a_child_that_leaves_without_a_goodbye(logged_db):
    results = run_processes("fork", 1, bare_exit=True)
    backends = {b for _, pids in results for b in pids}
    assert set(without_goodbye(logged_db, backends)) == backends
