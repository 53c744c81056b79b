"""``per_process``: one instance per process, through threads, reload, fork, recycling and exit.

Each failure mode of the naive singletons (docs/per-process.md) has a test here
that shows the naive version failing and ``per_process`` holding.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import psycopg2
import pytest
from celery import signals

import forkpool
from forkpool import gunicorn as gunicorn_hooks
from forkpool._base import drop_without_io
from forkpool._process import home
from forkpool.celery import wire_celery


class Thing:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.closed = False


def run_in_child(body) -> dict:
    """Fork; the child runs `body()` and reports its JSON result; returns it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            result = body()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result, code = {"error": repr(exc)}, 1
        os.write(write_fd, json.dumps(result).encode())
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as stream:
        data = stream.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


@pytest.fixture
def key(request) -> str:
    name = f"tests.per_process.{request.node.name}"
    yield name
    slot = home().slots.pop(name, None)
    if slot is not None and slot.current is not None and slot.current[0] == os.getpid():
        slot.current = None


# -- threads: the factory runs once -------------------------------------------------------


def test_racing_threads_get_one_instance_and_the_factory_runs_once(key):
    calls = []

    def slow_factory() -> Thing:
        calls.append(1)
        time.sleep(0.05)  # a window for every racing thread to miss
        return Thing()

    naive = functools.lru_cache(maxsize=1)(slow_factory)
    good = forkpool.per_process(slow_factory, key=key)
    for make, expect_one in ((naive, False), (good, True)):
        calls.clear()
        barrier = threading.Barrier(16)
        seen: list[int] = []

        def first_use(make=make, barrier=barrier, seen=seen) -> None:
            barrier.wait()
            seen.append(id(make()))

        threads = [threading.Thread(target=first_use) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if expect_one:
            assert len(calls) == 1 and len(set(seen)) == 1
        else:
            assert len(calls) > 1, "the naive version was expected to race"


def test_a_factory_that_fails_leaves_nothing_and_the_next_call_retries(key):
    attempts = []

    def flaky() -> Thing:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("server not up yet")
        return Thing()

    make = forkpool.per_process(flaky, key=key)
    with pytest.raises(OSError):
        make()
    assert make.peek() is None
    assert make() is make() and len(attempts) == 2


def test_a_factory_calling_itself_is_an_error_not_a_deadlock(key):
    make = forkpool.per_process(lambda: make(), key=key)
    with pytest.raises(RuntimeError, match="calls itself"):
        make()


# -- reload: the same instance --------------------------------------------------------------


def test_reload_of_the_defining_module_returns_the_same_instance(tmp_path, monkeypatch):
    (tmp_path / "reloaded_client.py").write_text(
        textwrap.dedent("""
        import functools
        import forkpool

        class Client:
            pass

        @forkpool.per_process
        def make_client():
            return Client()

        @functools.lru_cache(maxsize=1)
        def naive_client():
            return Client()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("reloaded_client")
    try:
        first, naive_first = module.make_client(), module.naive_client()
        module = importlib.reload(module)
        assert module.make_client() is first
        assert module.naive_client() is not naive_first  # the failure per_process fixes
    finally:
        module.make_client.close()
        home().slots.pop("reloaded_client.make_client", None)
        sys.modules.pop("reloaded_client", None)


# -- fork: a new instance in the child, the inherited one detached, never closed -------------


def test_a_forked_child_gets_its_own_instance_and_the_inherited_one_goes_to_detach(key):
    detached, closed = [], []
    make = forkpool.per_process(
        Thing, detach=lambda t: detached.append(t.pid), close=lambda t: closed.append(t.pid), key=key
    )
    naive = functools.lru_cache(maxsize=1)(Thing)
    parent = make()
    naive_parent = naive()

    def child() -> dict:
        mine = make()
        return {
            "pid": os.getpid(),
            "owner": mine.pid,
            "detached": detached,
            "closed": closed,
            "same": mine is parent,
            "naive_owner": naive().pid,
            "naive_same": naive() is naive_parent,
        }

    seen = run_in_child(child)
    assert seen["owner"] == seen["pid"] and not seen["same"]
    assert seen["detached"] == [os.getpid()]  # the parent's instance, handed to detach in the child
    assert seen["closed"] == []  # never closed in the child
    assert seen["naive_same"] and seen["naive_owner"] == os.getpid()  # the naive one leaks across fork
    assert make() is parent and not closed  # the parent's is untouched


class DoubleCheckedSingleton:
    """The singleton most articles write: double-checked locking in __new__, the lock made at import."""

    _lock = threading.Lock()
    _instance: DoubleCheckedSingleton | None = None
    factory_started = threading.Event()
    factory_may_finish = threading.Event()

    def __new__(cls) -> DoubleCheckedSingleton:
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls.factory_started.set()
                    cls.factory_may_finish.wait(30)  # a slow connect, in progress at fork time
                    cls._instance = super().__new__(cls)
        return cls._instance


def test_a_fork_while_a_thread_builds_the_instance_hangs_the_naive_child_not_ours(key):
    """A parent thread is inside the factory (holding the singleton's lock) when the process forks.

    The naive child waits on a lock no thread of the child will ever release; per_process gives
    the child fresh slot locks, so its first use builds its own instance at once.
    """
    started, may_finish = threading.Event(), threading.Event()
    parent = os.getpid()

    def slow_thing() -> Thing:
        if os.getpid() == parent:  # the parent's thread is slow; the child's own first use is not
            started.set()
            may_finish.wait(30)
        return Thing()

    make = forkpool.per_process(slow_thing, key=key)
    threads = [threading.Thread(target=DoubleCheckedSingleton), threading.Thread(target=make)]
    for thread in threads:
        thread.start()
    try:
        assert DoubleCheckedSingleton.factory_started.wait(10) and started.wait(10)

        def child() -> dict:
            # A bounded wait stands for the naive child's unbounded one.
            naive_free = DoubleCheckedSingleton._lock.acquire(timeout=1)
            ours = make()
            return {"naive_lock_free": naive_free, "owner": ours.pid, "pid": os.getpid()}

        seen = run_in_child(child)
    finally:
        DoubleCheckedSingleton.factory_may_finish.set()
        may_finish.set()
        for thread in threads:
            thread.join(10)
    assert seen["naive_lock_free"] is False  # the naive child would hang here forever
    assert seen["owner"] == seen["pid"]  # ours: a new instance, made in the child, no wait
    assert make().pid == os.getpid()  # and the parent's thread finished building the parent's


def test_a_per_process_psycopg2_connection_survives_a_child_using_its_own(key, database_url):
    make = forkpool.per_process(
        lambda: psycopg2.connect(database_url, application_name="pp-test"),
        detach=drop_without_io,
        close=lambda c: c.close(),
        key=key,
    )

    def backend_pid(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    mine = backend_pid(make())
    child = run_in_child(lambda: {"backend": backend_pid(make())})
    assert child["backend"] != mine
    assert backend_pid(make()) == mine  # the parent's session was not ended by the child
    make.close()
    assert make.peek() is None


# -- recycling and exit: close runs where the process ends ---------------------------------------


def test_gunicorn_worker_exit_and_celery_process_shutdown_close_instances(key, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    closed_in: list[int] = []
    make = forkpool.per_process(Thing, close=lambda t: closed_in.append(t.pid), key=key)

    def gunicorn_worker() -> dict:
        gunicorn_hooks.post_fork(server=None, worker=None)
        made = make().pid
        gunicorn_hooks.worker_exit(server=None, worker=None)
        return {"made": made, "closed": closed_in, "alive": make.peek() is not None}

    seen = run_in_child(gunicorn_worker)
    assert seen["closed"] == [seen["made"]] and not seen["alive"]

    wire_celery()

    def celery_child() -> dict:
        signals.worker_process_init.send(sender=None)
        made = make().pid
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        return {"made": made, "closed": closed_in}

    seen = run_in_child(celery_child)
    assert seen["closed"] == [seen["made"]]


def test_a_master_closes_its_instances_before_forking(key):
    closed = []
    make = forkpool.per_process(Thing, close=lambda t: closed.append(t.pid), key=key)
    make()
    gunicorn_hooks.when_ready(server=None)
    assert closed == [os.getpid()] and make.peek() is None


@pytest.mark.parametrize("ending, closes", [("sys.exit(0)", True), ("os._exit(0)", False)])
def test_a_plain_script_closes_at_exit_unless_it_skips_atexit(ending, closes):
    program = textwrap.dedent(f"""
        import os, sys
        import forkpool

        @forkpool.per_process(close=lambda c: print("closed", flush=True))
        def client():
            return object()

        client()
        {ending}
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("closed" in result.stdout) is closes
