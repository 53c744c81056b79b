"""Scenarios through the fault proxy: a slow link, and connections reset while in use.

The suite reaches PostgreSQL through harness/fault_proxy.py; the harness's own observers go
straight to the server. Besides the suite (sync Gunicorn workers and Celery processes: one
caller per pool at a time, so they never queue), a pool in the harness with more threads than
connections shows what the fault does to waiting: its waits and timeouts are counted.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from forkpool import ConnectError, Pool, PoolTimeout
from forkpool import _base as keys
from forkpool.settings import build_settings

from .chaos import DirectEnqueuer, producer
from .faults import Bench, FaultResult, Prober, error_kinds, outcome_counts
from .model import Check
from .suite_probe import wait_for_rows

READERS = 3
# Celery's line for an autoretry (celery.app.trace, INFO): the task's id, then the reason.
RETRY_LINE = re.compile(r"Task workers\.record_event\[([0-9a-f-]+)\] retry: Retry in")


class PoolUnderLoad:
    """`threads` callers looping on a pool of `size` through the proxy: its counters over a window."""

    def __init__(
        self,
        dsn: str,
        size: int = 2,
        threads: int = 6,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.failures: list[tuple[float, str]] = []  # (when the checkout began, what failed)
        self.pool = Pool(build_settings(dsn=dsn, min_size=size, max_size=size, timeout=timeout), "harness-load")
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        self.outcomes: dict[str, int] = {}
        self._stop = threading.Event()

    def start(self) -> PoolUnderLoad:
        self.pool.open(wait=True, timeout=10)
        for thread in self.threads:
            thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = self.clock()
            try:
                with self.pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                kind = "ok"
            except PoolTimeout:
                kind = "pool_timeout"
            except ConnectError:
                kind = "connect_error"
            except self.pool.driver.Error as exc:
                kind = type(exc).__name__
            self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
            if kind != "ok":
                self.failures.append((began, kind))
            time.sleep(0.01)

    def counters(self) -> dict[str, int]:
        stats = self.pool.stats()
        return {
            k: stats[k]
            for k in (keys.CHECKOUTS, keys.WAITS, keys.TIMEOUTS, keys.CONNECTIONS_OPENED, keys.CONNECTIONS_DISCARDED)
        }

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(10)
        self.pool.close()


def _rate(probes: list[tuple[float, str, dict]], start: float, end: float) -> float:
    ok = [p for p in probes if start <= p[0] < end and p[1].startswith("2")]
    return round(len(ok) / max(end - start, 1e-9), 1)


def latency(added_ms: float = 200.0, jitter_ms: float = 50.0, duration: float = 15.0) -> FaultResult:
    """Every reply from PostgreSQL is `added_ms` +/- `jitter_ms` late for `duration` seconds, under load."""
    result = FaultResult("latency")
    bench = Bench("latency", proxied=True)
    harness_pool = None
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        assert bench.pg_proxy is not None
        clock = bench.sampler.now
        readers = [Prober(suite.web.url + "/items?limit=1", clock=clock, timeout=60).start() for _ in range(READERS)]
        tasks = DirectEnqueuer(producer(bench.plan.redis_url), bench.plan.queue, bench.plan.suite_id, 5).start()
        harness_pool = PoolUnderLoad(bench.plan.database_url).start()
        time.sleep(4)
        before = harness_pool.counters()
        accepted_before = len(bench.pg_proxy.counters.accepted_at)
        slow_from = clock()
        bench.pg_proxy.latency(added_ms, jitter_ms)
        time.sleep(duration)
        during = harness_pool.counters()
        bench.pg_proxy.clear()
        back = clock()
        opened_during = len(bench.pg_proxy.counters.accepted_at) - accepted_before
        time.sleep(5)
        tasks.stop()
        probes = [p for r in readers for p in r.stop()]
        waits = [d for r in readers for d, p in zip(r.durations, r.results, strict=False) if slow_from <= p[0] < back]
        harness_pool.stop()
        rows = wait_for_rows(bench.pg.url, tasks.keys, 60)
        pool_delta = {k: during[k] - before[k] for k in during}
        peak = max((s.total for s in bench.sampler.samples), default=0)
        rates = {
            "before": _rate(probes, slow_from - 4, slow_from),
            "during": _rate(probes, slow_from, back),
            "after": _rate(probes, back + 1, back + 5),
        }
        result.figures = {
            "added_ms": added_ms,
            "jitter_ms": jitter_ms,
            "duration_s": duration,
            "requests_per_s": rates,
            "longest_request_s": round(max(waits, default=0), 2),
            "by_status": outcome_counts(probes),
            "errors_by_kind": error_kinds(probes),
            "harness_pool_during": pool_delta,
            "harness_pool_outcomes": harness_pool.outcomes,
            "connections_opened_through_proxy_during": opened_during,
            "server_peak_sessions": peak,
            "ceiling": bench.plan.ceiling,
            "tasks": len(tasks.keys),
            "tasks_done": sum(1 for k in tasks.keys if rows.get(k)),
        }
        result.checks = [
            Check(
                1,
                "pool waits and timeouts are counted while the link is slow",
                pool_delta[keys.WAITS] > 0,
                f"harness pool of 2 with 6 threads: {pool_delta}",
            ),
            Check(
                2,
                "no extra connections opened to compensate",
                opened_during == 0 and pool_delta[keys.CONNECTIONS_OPENED] == 0,
                f"{opened_during} connections through the proxy during the latency",
            ),
            Check(
                3,
                "the server never sees more than the ceiling",
                peak <= bench.plan.ceiling,
                f"peak {peak} of {bench.plan.ceiling} (suite) ",
            ),
            Check(4, "no request failed, only slower", not error_kinds(probes), f"{error_kinds(probes)}"),
            Check(5, "throughput returns after", rates["after"] >= 0.5 * rates["before"], f"{rates} requests/s"),
            Check(
                6,
                "every task done exactly once",
                len(tasks.keys) > 0 and all(rows.get(k) == 1 for k in tasks.keys),
                f"{len(tasks.keys)} accepted, {sum(1 for k in tasks.keys if rows.get(k))} done",
            ),
            *bench.settle_checks(back, 7),
        ]
    finally:
        if harness_pool is not None and not harness_pool.pool.closed:
            harness_pool.stop()
        bench.close()
    return result


def reset_mid_query(rounds: int = 3, window: float = 0.5) -> FaultResult:
    """`rounds` times, every connection that sends anything for `window` seconds is reset (RST)."""
    result = FaultResult("reset-mid-query")
    bench = Bench("reset", proxied=True)
    harness_pool = None
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        assert bench.pg_proxy is not None
        clock = bench.sampler.now
        readers = [Prober(suite.web.url + "/items?limit=1", clock=clock, timeout=60).start() for _ in range(READERS)]
        tasks = DirectEnqueuer(producer(bench.plan.redis_url), bench.plan.queue, bench.plan.suite_id, 5).start()
        harness_pool = PoolUnderLoad(bench.plan.database_url, size=2, threads=2, timeout=5, clock=clock).start()
        windows: list[tuple[float, float]] = []
        for _ in range(rounds):
            time.sleep(3)
            start = clock()
            bench.pg_proxy.reset_peer(True)
            time.sleep(window)
            bench.pg_proxy.reset_peer(False)
            windows.append((start, clock()))
        back = clock()
        time.sleep(4)
        tasks.stop()
        probes = [p for r in readers for p in r.stop()]
        harness_pool.stop()
        rows = wait_for_rows(bench.pg.url, tasks.keys, 90)
        # A request that fails is one whose query was in flight in a window (sent before it ended).
        # (1 s before a window: a request waiting for its worker, sent before the window began.)
        outside = [p for p in probes if not p[1].startswith("2") and not any(a - 1.0 <= p[0] <= b for a, b in windows)]
        pool_outside = [f for f in harness_pool.failures if not any(a - 1.0 <= f[0] <= b for a, b in windows)]
        kinds = error_kinds(probes)
        assert bench.suite is not None
        retried = set(RETRY_LINE.findall(bench.suite.worker.log_text()))
        result.figures = {
            "rounds": rounds,
            "window_s": window,
            "resets": bench.pg_proxy.counters.resets,
            "requests": len(probes),
            "by_status": outcome_counts(probes),
            "errors_by_kind": kinds,
            "failed_outside_windows": len(outside),
            "harness_pool_outcomes": harness_pool.outcomes,
            "harness_pool_failed_outside_windows": len(pool_outside),
            "tasks": len(tasks.keys),
            "tasks_done": sum(1 for k in tasks.keys if rows.get(k)),
            "tasks_retried": len(retried),
        }
        result.checks = [
            Check(
                1,
                "connections were reset while in use",
                bench.pg_proxy.counters.resets > 0,
                f"{bench.pg_proxy.counters.resets} resets",
            ),
            Check(
                2,
                "only requests in flight during a reset fail, as 503s",
                not outside and not any(k.startswith(("500", "error")) for k in kinds),
                f"{kinds}; {len(outside)} failed outside the windows",
            ),
            Check(
                3,
                "nothing handed out broken: every harness checkout outside a reset worked",
                harness_pool.outcomes.get("ok", 0) > 0 and not pool_outside,
                f"{harness_pool.outcomes}; failures outside the windows: {pool_outside[:5]}",
            ),
            Check(
                4,
                "every task done exactly once",
                len(tasks.keys) > 0 and all(rows.get(k) == 1 for k in tasks.keys),
                f"{len(tasks.keys)} accepted, {sum(1 for k in tasks.keys if rows.get(k))} done",
            ),
            # Else check 4 would hold for a run whose resets never met a task (~7 tasks run in the windows).
            Check(
                5,
                "tasks hit by a reset were retried (Celery logged the retry), then done once (check 4)",
                bool(retried),
                f"{len(retried)} task(s) retried",
            ),
            *bench.settle_checks(back, 6),
        ]
    finally:
        if harness_pool is not None and not harness_pool.pool.closed:
            harness_pool.stop()
        bench.close()
    return result
