"""What the harness does to the suite while load runs: enqueue tasks directly, kill processes."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable

from celery import Celery

from suite.queue import TASK_POOL_STATS, TASK_RECORD_EVENT

from .model import Event
from .processes import RunningSuite


def producer(redis_url: str) -> Celery:
    """The harness's own Celery producer (it never imports the workers' code)."""
    app = Celery("forkpool-harness", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


class DirectEnqueuer:
    """Sends record_event tasks straight to Celery at a steady rate, remembering every key."""

    def __init__(self, app: Celery, queue: str, suite_id: str, rate: float) -> None:
        self.app, self.queue, self.suite_id, self.rate = app, queue, suite_id, rate
        self.keys: list[str] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-enqueuer", daemon=True)

    def start(self) -> DirectEnqueuer:
        if self.rate > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        period, n = 1.0 / self.rate, 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            key = f"{self.suite_id}:direct:{n}"
            try:
                self.app.send_task(
                    TASK_RECORD_EVENT,
                    kwargs={"key": key},
                    queue=self.queue,
                    retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.1},
                )
                self.keys.append(key)
            except Exception:  # noqa: BLE001 - a broker hiccup is counted, the run goes on
                self.errors += 1
            n += 1
            next_at += period
            self._stop.wait(max(next_at - time.monotonic(), 0.0))


def worker_pool_reports(
    app: Celery, queue: str, processes: int, timeout: float = 20.0, calls: int = 4, linger: float = 0.3
) -> dict[int, dict]:
    """Each task process's own pool stats: enough lingering calls (`calls` per process) that every process takes one.

    Under RQ every call runs in a new work-horse: one per worker, no linger, is enough.
    """
    pending = [app.send_task(TASK_POOL_STATS, kwargs={"linger": linger}, queue=queue) for _ in range(processes * calls)]
    reports: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    for result in pending:
        try:
            body = result.get(timeout=max(deadline - time.monotonic(), 0.1))
            reports[body["pid"]] = body["pool"]
        except Exception:  # noqa: BLE001 - a missing answer shows up as an unheard pid in check 5
            continue
    return reports


# How a kill is described: run.py counts "web worker" kills (dropped requests allowed) by this text.
KIND = {"web": "web worker", "worker": "task process", "asgi": "asgi worker"}
# How long a kill waits for its role to have a process at all. A Celery pool of one has none
# between a child leaving at max_tasks_per_child and its replacement finishing
# worker_process_init: seen taking 5 s on a loaded 2-core machine, when a 2 s wait gave up.
CANDIDATE_WAIT_S = 10.0


class Killer:
    """SIGKILLs `count` times, spread over the load phase, a random process of each role in turn.

    On a fleet, each time is a kill on every host at once (one process of the
    same role on each): the fleet must come back from several hosts' losses together.
    """

    def __init__(
        self, hosts: RunningSuite | list[RunningSuite], count: int, duration: float, clock: Callable[[], float]
    ) -> None:
        self.hosts = hosts if isinstance(hosts, list) else [hosts]
        self.count, self.duration, self.clock = count, duration, clock
        self.events: list[Event] = []
        self.killed: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-killer", daemon=True)
        self._rng = random.Random()

    def start(self) -> Killer:
        if self.count > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        """No new round starts; one under way finishes (at most CANDIDATE_WAIT_S), so every host gets its kill."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(CANDIDATE_WAIT_S + 5)

    def _run(self) -> None:
        # Kills between 20 % and 70 % of the load phase leave time to recover under load.
        start = time.monotonic()
        for i in range(self.count):
            at = self.duration * (0.2 + 0.5 * i / max(self.count - 1, 1))
            if self._stop.wait(max(start + at - time.monotonic(), 0.0)):
                return
            self._kill_round(self._turns()[i % len(self._turns())])

    def _turns(self) -> list[str]:
        return ["web", "worker"] + (["asgi"] if self.hosts[0].asgi is not None else [])

    def _kill_round(self, role: str) -> None:
        """One process of `role` on every host; a host with none right now is tried again, the others not held up.

        The end of the load does not cut a round short: a host whose only task process was
        being replaced when the round began would otherwise be skipped (seen on CI, where a
        replacement's worker_process_init outlasted the load's last 2 s).
        """
        pending = list(self.hosts)
        deadline = time.monotonic() + CANDIDATE_WAIT_S
        while True:
            pending = [suite for suite in pending if not self._kill_one(suite, role)]
            if not pending or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _kill_one(self, suite: RunningSuite, role: str) -> bool:
        """SIGKILL a random process of `role` on `suite`: False when it has none to kill now."""
        server = {"web": suite.web, "worker": suite.worker, "asgi": suite.asgi}[role]
        assert server is not None
        for _ in range(5):  # a chosen process may have just recycled on its own: pick again
            candidates = server.children()
            if not candidates:  # between a recycled child and its replacement
                return False
            pid = self._rng.choice(candidates)
            try:
                os.kill(pid, signal.SIGKILL)
                break
            except ProcessLookupError:
                continue
        else:
            return False
        self.killed.add(pid)
        where = f" on {suite.plan.host}" if suite.plan.host else ""
        self.events.append(Event(self.clock(), "kill", f"SIGKILL {KIND[role]}{where} {pid}"))
        return True
