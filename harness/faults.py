"""Fault scenarios: each breaks something under load and measures how the suite comes back.

Every scenario runs on its own embedded servers (it must stop and restart
them), reports figures (outage, recovery time, failed requests by kind) and
PASS/FAIL checks. `forkpool fault NAME` runs one; the tests run them all.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from suite.schema import init_schema_at

from . import checks
from .fault_proxy import FaultProxy
from .model import Check, Sample
from .processes import RunningSuite, SuitePlan, start_suite
from .sampler import Sampler
from .services import EmbeddedPostgres, EmbeddedRedis
from .suite_probe import pid_alive

POOL = 2
PROBE_INTERVAL = 0.05
# The server's side of a silent network: a session whose client went silent is probed after 5 s
# idle and ended when a probe goes unanswered past 10 s (as the pool's defaults do on the client's
# side); a running query notices a client that hung up within 2 s (PostgreSQL 14+).
SERVER_NETWORK_SETTINGS: dict[str, object] = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 10000,
    "client_connection_check_interval": 2000,
}


@dataclass
class FaultResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


class Prober:
    """One client calling an endpoint every 50 ms, recording (t, outcome) for every request."""

    def __init__(
        self,
        url: str,
        method: str = "GET",
        body: Callable[[], dict] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
    ) -> None:
        self.url, self.method, self.body, self.clock, self.timeout = url, method, body, clock, timeout
        self.results: list[tuple[float, str, dict]] = []  # (t sent, "200"/"503"/"error", JSON body)
        self.durations: list[float] = []  # seconds each request took, aligned with results
        self.sent: list[dict | None] = []  # the body of each request, aligned with results
        self._stop = threading.Event()
        self._going = threading.Event()  # cleared by pause()
        self._going.set()
        self._calling = threading.Lock()  # held for the length of one request
        self._thread = threading.Thread(target=self._run, name="forkpool-prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, str, dict]]:
        self._stop.set()
        self._going.set()
        self._thread.join(15)
        return self.results

    def pause(self) -> None:
        """No new request; returns once the one in flight, if any, has its answer."""
        self._going.clear()
        with self._calling:
            pass

    def resume(self) -> None:
        self._going.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._going.wait()
            with self._calling:
                if self._stop.is_set() or not self._going.is_set():
                    continue
                sent = self.clock()
                outcome = self._call()
                self.durations.append(self.clock() - sent)
                self.results.append((sent, *outcome))
            self._stop.wait(PROBE_INTERVAL)

    def _call(self) -> tuple[str, dict]:
        body = self.body() if self.body else None
        self.sent.append(body)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url, method=self.method, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return str(response.status), json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return str(exc.code), json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return "error", {}


def outcome_counts(results: list[tuple[float, str, dict]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    return counts


def error_kinds(results: list[tuple[float, str, dict]]) -> dict[str, int]:
    """Failed requests by status and the body's error name, e.g. {"503 database_unavailable": 12}."""
    kinds: dict[str, int] = {}
    for _, status, body in results:
        if not status.startswith("2"):
            kind = f"{status} {body.get('error', '')}".strip()
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def recovery_time(results: list[tuple[float, str, dict]], back_at: float) -> float | None:
    """Seconds from `back_at` until the first request of the final unbroken run of successes."""
    first_ok = None
    for sent, status, _ in results:
        if sent < back_at:
            continue
        if status.startswith("2"):
            first_ok = sent if first_ok is None else first_ok
        else:
            first_ok = None
    return None if first_ok is None else max(first_ok - back_at, 0.0)


class Bench:
    """Embedded servers, the suite, a sampler: everything a scenario stands on, stopped in order."""

    def __init__(
        self,
        name: str,
        web_workers: int = 2,
        worker_concurrency: int = 2,
        persistent_redis: bool = False,
        max_connections: int = 60,
        extra_env: dict[str, str] | None = None,
        proxied: bool = False,
        observe_by_socket: bool = False,
    ) -> None:
        """`proxied`: the suite reaches PostgreSQL and Redis through fault proxies (self.pg_proxy,
        self.redis_proxy); the harness's own observers never do. `observe_by_socket`: they use
        PostgreSQL's unix socket, so a silenced TCP port does not blind them."""
        self.stack = ExitStack()
        self.pg = self.stack.enter_context(
            EmbeddedPostgres(max_connections=max_connections, settings=SERVER_NETWORK_SETTINGS)
        )
        self.redis = self.stack.enter_context(EmbeddedRedis(persistent=persistent_redis))
        self.observe_url = self.pg.socket_url if observe_by_socket else self.pg.url
        init_schema_at(self.observe_url)
        database_url, redis_url = self.pg.url, self.redis.url
        self.pg_proxy = self.redis_proxy = None
        if proxied:
            self.pg_proxy = self.stack.enter_context(FaultProxy(self.pg.host, self.pg.port, name="pg-proxy"))
            self.redis_proxy = self.stack.enter_context(
                FaultProxy(self.redis.host, self.redis.port, name="redis-proxy")
            )
            database_url, redis_url = self.pg_proxy.url(database_url), self.redis_proxy.url(redis_url)
        self.plan = SuitePlan(
            database_url=database_url,
            redis_url=redis_url,
            suite_id=f"{name}{uuid.uuid4().hex[:6]}",
            web_workers=web_workers,
            worker_concurrency=worker_concurrency,
            pool_size=POOL,
            extra_env=extra_env or {},
        )
        self.sampler = Sampler(self.observe_url, self.plan.suite_id)
        self.logs = Path(tempfile.mkdtemp(prefix=f"forkpool-fault-{name}-"))
        self.expected = checks.expected_by_role(web_workers, worker_concurrency, POOL)
        self.suite: RunningSuite | None = None

    def start(self) -> RunningSuite:
        self.sampler.start()
        self.stack.callback(self.sampler.stop)
        self.suite = start_suite(self.plan, self.logs)
        self.stack.callback(self.suite.stop)
        return self.suite

    def exact(self, sample: Sample) -> bool:
        return {r: n for r, n in sample.by_role().items() if n} == self.expected

    def wait_exact(self, after: float, timeout: float = checks.SETTLE_BOUND_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = self.sampler.latest()
            if latest is not None and latest.t > after and self.exact(latest):
                return
            time.sleep(0.05)

    def settle_checks(self, after: float, first_number: int) -> list[Check]:
        """The ceiling held throughout, and the counts are exact again with no session of a dead pid."""
        self.wait_exact(after)
        ceiling, _ = checks.check_ceiling(self.sampler.samples, self.plan.ceiling, POOL)
        settled = checks.check_settled([s for s in self.sampler.samples if s.t > after], self.expected, POOL, pid_alive)
        return [replace(ceiling, number=first_number), replace(settled, number=first_number + 1)]

    def close(self) -> None:
        self.stack.close()
