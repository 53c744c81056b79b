"""Prometheus metrics of the pools, across the processes of a suite (prometheus_client multiprocess mode).

Each process exports its pools' stats from the pool's maintainer thread, once
a second, never on the checkout path. With ``PROMETHEUS_MULTIPROC_DIR`` set
(before Python starts, as prometheus_client requires) every process writes to
that directory and ``render_metrics()`` in any of them serves the whole suite:
gauges per process (prometheus_client adds the ``pid`` label), counters and the
wait histogram summed per pool and role. Gauges of dead processes are dropped
(``mark_dead``, and a sweep at each scrape for processes that died by SIGKILL).
"""

from __future__ import annotations

import glob
import os
import re
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for /metrics endpoints

from . import stats as keys
from .identity import process_role

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("pool", "role")

_GAUGE_KEYS = {
    keys.SIZE: "open connections (idle + in use)",
    keys.IDLE: "open, free connections",
    keys.IN_USE: "connections checked out",
    keys.WAITING: "callers queued for a connection",
    keys.MAX_SIZE: "the pool's max_size",
}
_COUNTER_KEYS = {
    keys.CHECKOUTS: "successful checkouts",
    keys.TIMEOUTS: "checkouts that gave up (PoolTimeout)",
    keys.CONNECTIONS_OPENED: "connections opened",
    keys.CONNECTIONS_CLOSED: "connections closed, discards included",
    keys.CONNECTIONS_DISCARDED: "connections found broken and discarded",
    keys.CONNECT_ERRORS: "failed connection attempts",
    keys.LEAK_WARNINGS: "connections reported as held too long",
}
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

GAUGES = {k: Gauge(f"forkpool_pool_{k}", f"Pool {text}.", LABELS, multiprocess_mode="liveall")
          for k, text in _GAUGE_KEYS.items()}
COUNTERS = {k: Counter(f"forkpool_pool_{k}", f"Pool {text}.", LABELS) for k, text in _COUNTER_KEYS.items()}
WAIT_SECONDS = Histogram("forkpool_pool_wait_seconds", "Time callers spent queued for a connection.", LABELS,
                         buckets=WAIT_BUCKETS)

# Last exported counter values per pool object: counters advance by the difference.
_exported: dict[int, dict[str, float]] = {}
_export_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def export_pool(pool: Any) -> None:
    """Publish one pool's current stats (called by its maintainer, and before a scrape)."""
    snapshot = pool.stats()
    labels = (snapshot[keys.NAME], process_role())
    for key, gauge in GAUGES.items():
        gauge.labels(*labels).set(snapshot[key])
    with _export_lock:
        # Invariant: a counter only ever advances by what this pool did since its last export.
        before = _exported.setdefault(id(pool), {})
        for key, counter in COUNTERS.items():
            delta = snapshot[key] - before.get(key, 0)
            if delta > 0:
                counter.labels(*labels).inc(delta)
            before[key] = snapshot[key]
    for seconds in pool.drain_wait_times():
        WAIT_SECONDS.labels(*labels).observe(seconds)


def export_process() -> None:
    """Publish every open pool of this process now (before a scrape, so it is not a second stale)."""
    from .registry import current_state

    state = current_state()
    with state.lock:
        pools = [pool for pool in state.pools.values() if not pool.closed]
    for pool in pools:
        export_pool(pool)


def forget_pool(pool: Any) -> None:
    """A closed pool's gauges drop to zero (its process may live on with other pools)."""
    labels = (pool.name, process_role())
    for gauge in GAUGES.values():
        gauge.labels(*labels).set(0)
    with _export_lock:
        _exported.pop(id(pool), None)


def prepare_directory() -> None:
    """At a master's start: create the directory, drop files of processes that no longer exist.

    A fresh run (the harness gives each run its own directory) starts empty; a
    restarted server keeps nothing of processes that are gone.
    """
    path = multiprocess_dir()
    if path is None:
        return
    os.makedirs(path, exist_ok=True)
    for pid in _pids_with_files(path):
        if not _alive(pid):
            for name in glob.glob(os.path.join(path, f"*_{pid}.db")):
                os.remove(name)


def mark_dead(pid: int) -> None:
    """A process ended: its gauges go (counters stay, summed into the totals)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


def suite_registry() -> CollectorRegistry:
    """Every process of the suite with a multiprocess directory, else this process's own registry."""
    path = multiprocess_dir()
    if path is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def render_metrics() -> bytes:
    """The exposition text for a scrape."""
    path = multiprocess_dir()
    if path is not None:
        for pid in _pids_with_files(path):
            if not _alive(pid):
                mark_dead(pid)  # died without a hook (SIGKILL): its gauges must not linger
    return generate_latest(suite_registry())


_PID_IN_NAME = re.compile(r"_(\d+)\.db$")


def _pids_with_files(path: str) -> set[int]:
    return {int(m.group(1)) for name in os.listdir(path) if (m := _PID_IN_NAME.search(name))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
