"""Prometheus metrics of the pools, across the processes of a suite (prometheus_client multiprocess mode).

Each process exports its pools' stats from the pool's maintainer thread, once
a second, never on the checkout path. With ``PROMETHEUS_MULTIPROC_DIR`` set
(before Python starts, as prometheus_client requires) every process writes to
that directory and ``render_metrics()`` in any of them serves the whole suite:
gauges per process (prometheus_client adds the ``pid`` label), counters and the
wait histogram summed per pool and role. Gauges of dead processes are dropped
(``mark_dead``, and a sweep at each scrape for processes that died by SIGKILL).

Protected pools (``forkpool.protect``: SQLAlchemy engines, psycopg_pool, redis
clients...) are in the same gauge families, told apart by the ``integration``
label ("forkpool" for forkpool's own pools, "sqlalchemy", "psycopg_pool",
"redis"...) and ``backend`` ("postgresql", "mysql", "redis"...): one panel sums
a process's connections to a server whichever library holds them. What a
library does not say (a waiting count) has no series. They are exported
before each scrape and, in a server's workers, once a second by a small thread
(``start_exporter``: protected pools have no maintainer of forkpool's to do it).
Counters and the wait histogram are forkpool's own pools' only.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

from .errors import import_extra

import_extra("prometheus_client", "prometheus", "forkpool.metrics")

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,  # noqa: F401 - re-exported for /metrics endpoints
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from . import _base as keys  # noqa: E402
from . import _process as fork_quiet  # noqa: E402
from . import _protect as protection  # noqa: E402
from ._base import add_stats_listener  # noqa: E402
from ._metrics_dir import MULTIPROC_ENV, multiprocess_dir, pid_alive, pids_with_files  # noqa: E402,F401
from ._process import install_fork_hooks  # noqa: E402
from ._registry import open_pools  # noqa: E402
from .identity import process_role  # noqa: E402

logger = logging.getLogger("forkpool.metrics")

LABELS = ("pool", "role")
# The gauges also say whose pool it is: forkpool's own, or a protected library's, and of which server.
GAUGE_LABELS = (*LABELS, "integration", "backend")
OWN = "forkpool"  # the integration label of forkpool's own Pool / AsyncPool
OWN_BACKEND = "postgresql"
EXPORT_INTERVAL = 1.0  # seconds between exports of protected pools, as the maintainers' rounds

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

GAUGES = {
    k: Gauge(f"forkpool_pool_{k}", f"Pool {text}.", GAUGE_LABELS, multiprocess_mode="liveall")
    for k, text in _GAUGE_KEYS.items()
}
COUNTERS = {k: Counter(f"forkpool_pool_{k}", f"Pool {text}.", LABELS) for k, text in _COUNTER_KEYS.items()}
WAIT_SECONDS = Histogram(
    "forkpool_pool_wait_seconds", "Time callers spent queued for a connection.", LABELS, buckets=WAIT_BUCKETS
)

# Last exported counter values per pool object: counters advance by the difference.
_exported: dict[int, dict[str, float]] = {}
_export_lock = threading.Lock()


# Pools whose gauges were dropped at close: a late export of theirs changes nothing.
_forgotten: weakref.WeakSet[Any] = weakref.WeakSet()
# (pool name, role) -> id of the pool whose stats the gauges under those labels show.
_gauge_owner: dict[tuple[str, str], int] = {}


def export_pool(pool: Any) -> None:
    """Publish one pool's current stats (called by its maintainer, and before a scrape)."""
    snapshot = pool.stats()
    waits = pool.drain_wait_times()
    labels = (snapshot[keys.NAME], process_role())
    with _export_lock:
        if pool in _forgotten:
            # Its maintainer's round outlived close() (a stop's join timed out): its last counts were
            # published before forget_pool, and the gauges belong to a newer pool of the name by now.
            return
        # Invariant: a counter only ever advances by what this pool did since its last export.
        # Every prometheus_client call is made under this lock, which fork holds (below):
        # a child never inherits one of its locks mid-update from an exporting thread.
        for key, gauge in GAUGES.items():
            gauge.labels(*labels, OWN, OWN_BACKEND).set(snapshot[key])
        _gauge_owner[labels] = id(pool)
        before = _exported.setdefault(id(pool), {})
        for key, counter in COUNTERS.items():
            delta = snapshot[key] - before.get(key, 0)
            if delta > 0:
                counter.labels(*labels).inc(delta)
            before[key] = snapshot[key]
        for seconds in waits:
            WAIT_SECONDS.labels(*labels).observe(seconds)


def export_process() -> None:
    """Publish every open pool of this process now, protected ones too (before a scrape, so it is not
    a second stale)."""
    for pool in open_pools():
        export_pool(pool)
    export_protected()


def forget_pool(pool: Any) -> None:
    """A closed pool's gauges drop to zero (its process may live on with other pools)."""
    labels = (pool.name, process_role())
    with _export_lock:
        _forgotten.add(pool)
        _exported.pop(id(pool), None)
        # A pool closed late (its maintainer ending) must not zero a newer pool of the same name.
        if _gauge_owner.get(labels, id(pool)) != id(pool):
            return
        _gauge_owner.pop(labels, None)
        for gauge in GAUGES.values():
            gauge.labels(*labels, OWN, OWN_BACKEND).set(0)


def protected_gauges() -> dict[tuple[str, str, str, str], dict[str, float]]:
    """{gauge labels: {gauge key: value}} of this process's protected pools, from ``protection.reports()``.

    Pools reported under one label (two engines on one URL) add up; a value the
    library does not give (None) is left out, and ``idle`` is known only when
    ``open`` and ``in_use`` both are.
    """
    role = process_role()
    found: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for integration, report in protection.reports():
        values = found.setdefault((report.label, role, integration, report.backend), {})
        idle = report.open - report.in_use if report.open is not None and report.in_use is not None else None
        for key, value in (
            (keys.SIZE, report.open),
            (keys.IN_USE, report.in_use),
            (keys.WAITING, report.waiting),
            (keys.MAX_SIZE, report.max_size),
            (keys.IDLE, idle),
        ):
            if value is not None:
                values[key] = values.get(key, 0) + value
    return found


_protected_exported: dict[tuple[str, str, str, str], set[str]] = {}  # labels -> gauge keys set last time


def export_protected() -> None:
    """Publish this process's protected pools; one no longer reported drops to zero (as a closed pool)."""
    try:
        current = protected_gauges()
    except Exception:  # metrics are best effort: a library's report must not break a scrape
        logger.debug("reading protected pools failed", exc_info=True)
        return
    with _export_lock:
        for labels, values in current.items():
            for key, value in values.items():
                GAUGES[key].labels(*labels).set(value)
        for labels, exported in _protected_exported.items():
            for key in exported - set(current.get(labels, {})):
                GAUGES[key].labels(*labels).set(0)
        _protected_exported.clear()
        _protected_exported.update((labels, set(values)) for labels, values in current.items())


class _Exporter:
    """The thread exporting protected pools: one per process, not alive across a fork (_process.py, "background threads no fork sees")."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set to end the thread for a fork
        self._thread: threading.Thread | None = None  # under _lock: the running thread or None
        self._paused = fork_quiet.forking()
        fork_quiet.register(self)

    def start(self) -> None:
        with self._lock:
            # Invariant: at most one thread, and none while a fork is being prepared.
            if self._thread is None and not self._paused and self.pid == os.getpid():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="forkpool-metrics", daemon=True)
                self._thread.start()

    def pause_for_fork(self) -> threading.Thread | None:
        with self._lock:
            self._paused = True
            self._stop.set()
            thread, self._thread = self._thread, None
            return thread

    def resume_after_fork(self) -> None:
        with self._lock:
            self._paused = False
        self.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            export_protected()


_exporter: list[_Exporter] = []


def start_exporter(interval: float = EXPORT_INTERVAL) -> None:
    """Export this process's protected pools every `interval` seconds from a daemon thread (a worker's start).

    Once per process: a forked child that wants one calls this again. The
    thread holds no lock between rounds, and takes only the export lock, which
    fork holds (below); it is ended before a fork and started again after it.
    """
    if _exporter and _exporter[0].pid == os.getpid():
        return
    _exporter[:] = [_Exporter(interval)]
    _exporter[0].start()


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
        for pid in pids_with_files(path):
            if not pid_alive(pid):
                multiprocess.mark_process_dead(pid)  # died without a hook (SIGKILL): its gauges must not linger
    return generate_latest(suite_registry())


def _hold_export_lock() -> None:
    # Before fork, as the logging module does with its lock: no exporting thread is
    # inside prometheus_client at the moment of fork. Bounded, in case one is stuck.
    # The maintainers (which export) end first: one waiting here for this lock could not end.
    fork_quiet.end_threads()
    _HELD[0] = _export_lock.acquire(timeout=1.0)


def _release_export_lock() -> None:
    if _HELD[0]:
        _export_lock.release()
    _HELD[0] = False


def _new_export_lock_in_child() -> None:
    global _export_lock
    _export_lock = threading.Lock()
    _HELD[0] = False
    _protected_exported.clear()  # the parent's series, in the parent's files: not this process's to zero


_HELD = [False]

# Every pool's maintainer publishes through this module from now on.
add_stats_listener("prometheus", export_pool, forget_pool)
install_fork_hooks(
    "metrics", before=_hold_export_lock, after_in_parent=_release_export_lock, after_in_child=_new_export_lock_in_child
)
