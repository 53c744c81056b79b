"""`forkpool fault failover --suite`: the primary switched under the whole suite's load, with run_on's checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from .failover import VARIANTS
from .model import Check, Event, RunReport, Sample
from .services import EmbeddedRedis, ReplicatedPostgres, query_server

SWITCH_AT = 0.4  # of the load: steady load before, and most of it after, to see every tier come back
RECOVERY_BOUND_S = 60.0  # bounds on waits, far above what they take: no timing is asserted
LEFT_BOUND_S = 30.0  # the suite's sessions must have left the old primary within this of the promotion
EXACT_BOUND_S = 30.0
POLL_S = 0.05
DATABASE = "suite"
# The suite's sessions on one server, by the identity prefix every suite connection carries.
_OURS = "SELECT count(*) FROM pg_stat_activity WHERE left(application_name, %s) = %s"
# The first rows a tier wrote on the new primary: created_at is its transaction's start. Every row from the
# old primary began before the promotion was asked for (read-only variant: wait_caught_up() saw no write
# left there; stopped: it was down), and no transaction on the standby could write before it: a row that
# began later was written on the new primary.
# The first item each web tier wrote (the load names items locust-<tier>-...) and the first task row, after
# the promotion was asked: every tier must write on the new primary, not only the first to get there.
_FIRST_WRITES = (
    "SELECT extract(epoch FROM (SELECT min(created_at) FROM items WHERE created_at > to_timestamp(%s) "
    "AND name LIKE 'locust-web-%%')), "
    "extract(epoch FROM (SELECT min(created_at) FROM items WHERE created_at > to_timestamp(%s) "
    "AND name LIKE 'locust-asgi-%%')), "
    "extract(epoch FROM (SELECT min(created_at) FROM events WHERE created_at > to_timestamp(%s)))"
)


class SwitchSchedule:
    """At SWITCH_AT of the load: the old primary made read-only (then the standby caught up) or stopped,
    then the standby promoted; then, on the run's clock, until each tier writes on the new primary, until
    none of the suite's sessions is left on the old one, and until the counts (summed over both servers)
    are exact again. Plugs into run_on like harness/fault_schedule.py's FaultSchedule."""

    def __init__(
        self,
        pair: ReplicatedPostgres,
        variant: str,
        duration: float,
        suite_prefix: str,
        clock: Callable[[], float],
        latest: Callable[[], Sample | None],
        exact: Callable[[Sample], bool],
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        self.pair, self.variant, self.duration, self.prefix = pair, variant, duration, suite_prefix
        self.clock, self.latest, self.exact = clock, latest, exact
        self.events: list[Event] = []
        # On the run's clock (the sampler's): None until it happened.
        self.switched_t: float | None = None
        self.promote_asked_t: float | None = None  # pg_promote() called: the standby may take writes from here
        self.promoted_t: float | None = None  # pg_promote() returned (it polls: writes may come first)
        self.items_back_t: float | None = None  # when both web tiers had an item committed by the new primary
        self.tasks_back_t: float | None = None  # first task row there (a Celery task's transaction)
        self.left_on_old: int | None = None  # the suite's sessions on the old primary at the end of the wait
        self.old_empty_t: float | None = None
        self.exact_t: float | None = None
        self.error: str | None = None
        self._wall_at_zero = time.time() - clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-switch-schedule", daemon=True)

    def start(self) -> SwitchSchedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No switch starts after this; one under way is measured to its end (each wait is bounded)."""
        self._stop.set()
        self._thread.join(RECOVERY_BOUND_S + LEFT_BOUND_S + EXACT_BOUND_S + 60)

    def wait(self, timeout: float) -> bool:
        """True once the switch and every measurement after it are over (or the schedule failed)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def service_restarts(self) -> None:
        """Nothing to start from the main thread: a promotion and a stop start no process."""

    def _mark(self, kind: str, detail: str) -> float:
        t = self.clock()
        self.events.append(Event(t, kind, detail))
        return t

    def _run(self) -> None:
        if self._stop.wait(SWITCH_AT * self.duration):
            return
        try:
            self._switch()
            self._wait_for_writes()
            self._wait_old_empty()
            self._wait_exact()
        except Exception as exc:  # noqa: BLE001 - reported by check(), never lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _switch(self) -> None:
        pair = self.pair
        if self.variant == "read-only":
            self.switched_t = self._mark("fault", "failover: the old primary made read-only")
            pair.make_read_only()
            # Promote only once nothing can commit on the old primary any more: a commit there after the
            # promotion would wait for its synchronous standby for ever (a switchover tool waits the same way).
            pair.wait_caught_up()
        else:
            self.switched_t = self._mark("fault", "failover: the old primary stopped (immediate: a crash)")
            pair.stop_primary("immediate")
        self._promote_asked = time.time()
        self.promote_asked_t = self._mark("phase", "failover: the standby's promotion asked")
        pair.promote()
        self.promoted_t = self._mark("phase", "failover: the standby promoted (pg_promote returned)")

    def _wait_for_writes(self) -> None:
        asked = self._promote_asked
        deadline = time.monotonic() + RECOVERY_BOUND_S
        while time.monotonic() < deadline and (self.items_back_t is None or self.tasks_back_t is None):
            web, asgi, tasks = query_server(self.pair.standby, _FIRST_WRITES, asked, asked, asked, dbname=DATABASE)[0]
            if web is not None and asgi is not None and self.items_back_t is None:
                self.items_back_t = max(float(web), float(asgi)) - self._wall_at_zero
                self.events.append(
                    Event(
                        self.items_back_t, "phase", "failover: both web tiers have written an item on the new primary"
                    )
                )
            if tasks is not None and self.tasks_back_t is None:
                self.tasks_back_t = float(tasks) - self._wall_at_zero
                self.events.append(Event(self.tasks_back_t, "phase", "failover: first task row on the new primary"))
            time.sleep(POLL_S)

    def on_old(self) -> int:
        """The suite's sessions on the old primary (0 once it is down: it holds none)."""
        if not self.pair.primary.is_running():
            return 0
        return int(query_server(self.pair.primary, _OURS, len(self.prefix), self.prefix)[0][0])

    def _wait_old_empty(self) -> None:
        deadline = time.monotonic() + LEFT_BOUND_S
        while (left := self.on_old()) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        self.left_on_old = left
        if not left:
            self.old_empty_t = self._mark("phase", "failover: none of the suite's sessions on the old primary")

    def _wait_exact(self) -> None:
        after = self.clock()
        deadline = time.monotonic() + EXACT_BOUND_S
        while time.monotonic() < deadline:
            latest = self.latest()
            if latest is not None and latest.t > after and self.exact(latest):
                self.exact_t = latest.t
                return
            time.sleep(POLL_S)

    @property
    def recovered(self) -> bool:
        return self.items_back_t is not None and self.tasks_back_t is not None

    def since_switch(self, t: float | None) -> float | None:
        return None if t is None or self.switched_t is None else round(t - self.switched_t, 3)

    def report(self) -> list[dict[str, Any]]:
        """The run report's faults, in the soak's shape (harness/fault_schedule.py's Occurrence): the one switch."""
        if self.switched_t is None:
            return []
        back = [t for t in (self.items_back_t, self.tasks_back_t) if t is not None]
        return [
            {
                "kind": f"failover-{self.variant}",
                "at": self.switched_t,
                "window_s": 0.0,
                "ended": self.switched_t,
                "recovered_s": self.since_switch(max(back)) if self.recovered else None,
            }
        ]

    def check(self, number: int) -> Check:
        """run_on's check for a schedule: the switch happened, and every tier writes on the new primary."""
        detail = (
            f"{self.variant}: an item from each web tier on the new primary {self.since_switch(self.items_back_t)} s after the "
            f"switch, first task row {self.since_switch(self.tasks_back_t)} s (promotion asked at "
            f"{self.since_switch(self.promote_asked_t)} s)"
        )
        if self.error:
            detail += f"; the schedule failed: {self.error}"
        elif self.switched_t is None:
            detail = "the load ended before the switch"
        return Check(
            number,
            f"after the failover: the web and task tiers write on the new primary within {RECOVERY_BOUND_S:.0f} s",
            self.error is None and self.recovered,
            detail,
        )


def _options(duration: float) -> Any:
    from .run import LoadOptions

    # Every tier: Gunicorn (sync), the ASGI tier, Celery; kills and recycling off: the switch is the only churn.
    return LoadOptions(
        web_workers=2, worker_concurrency=2, asgi_workers=1, pool_size=2, duration=duration, users=6, task_rate=5.0
    )


def suite_run(variant: str, duration: float = 30.0, log_dir: Path | None = None) -> tuple[dict[str, Any], RunReport]:
    """One variant on fresh servers: the suite on a primary and a synchronous standby, both in its DSN."""
    from .run import run_on

    console = Console(quiet=True)
    options = _options(duration)
    with ReplicatedPostgres(max_connections=60) as pair, EmbeddedRedis() as redis_server:
        dsn = pair.create_database(DATABASE)
        old, new = pair.primary, pair.standby
        found: list[SwitchSchedule] = []

        def schedule(sampler: Any, exact: Callable[[Sample], bool], _task_through: Any) -> SwitchSchedule:
            # The switch judges writes by the rows committed on the new primary, not by a probe task.
            found.append(SwitchSchedule(pair, variant, duration, sampler.prefix, sampler.now, sampler.latest, exact))
            return found[0]

        # The standby first: a session moving between the two queries of a sample is missed, never counted twice.
        observe = [new.socket_url, old.socket_url]
        report = run_on(dsn, redis_server.url, options, console, log_dir, observe_url=observe, schedule=schedule)
        if not found:
            raise RuntimeError(f"failover {variant}: the run ended before its load: {_failed(report)}")
        figures = _figures(pair, found[0], report)
    return figures, report


def _failed(report: RunReport) -> str:
    return "; ".join(f"{c.number}. {c.name}: {c.detail}" for c in report.checks if not c.passed) or "no check failed"


def _figures(pair: ReplicatedPostgres, sched: SwitchSchedule, report: RunReport) -> dict[str, Any]:
    """The issue's figures, from the schedule, the run's report, and the new primary's tables."""
    switched = sched.switched_t or 0.0
    back = [t for t in (sched.items_back_t, sched.tasks_back_t) if t is not None]
    until = max(back) if sched.recovered else None
    # Per-second statuses: a second [t, t + 1) counts if it overlaps the switch until both tiers write again.
    window = [(t, s, n) for t, s, n in report.status_timeline if t + 1 > switched and (until is None or t <= until)]
    acked = [name for name, _ in report.load.items_created]
    switched_wall = sched._wall_at_zero + switched
    before = sum(1 for _, at in report.load.items_created if at < switched_wall)
    present = {
        row[0]
        for row in query_server(pair.standby, "SELECT name FROM items WHERE name = ANY(%s)", acked, dbname=DATABASE)
    }
    keys = report.load.event_keys + report.load.direct_keys
    rows = dict(
        query_server(
            pair.standby, "SELECT key, count(*) FROM events WHERE key = ANY(%s) GROUP BY 1", keys, dbname=DATABASE
        )
    )
    lost = [name for name in acked if name not in present]
    return {
        "variant": sched.variant,
        "recovered": sched.recovered,
        "seconds_to_first_write": sched.since_switch(min(back)) if back else None,
        "seconds_to_items": sched.since_switch(sched.items_back_t),
        "seconds_to_task_rows": sched.since_switch(sched.tasks_back_t),
        "promotion_asked_after_s": sched.since_switch(sched.promote_asked_t),
        "promoted_after_s": sched.since_switch(sched.promoted_t),
        "responses_503_during_switch": sum(n for _, s, n in window if s == "503"),
        "other_non_2xx_during_switch": _by_status([(s, n) for _, s, n in window if s != "503"]),
        "responses_503_whole_run": report.load.status_counts.get("503", 0),
        "failures": report.load.errors[:8],  # Locust's failures by endpoint and kind ("503 database_unavailable")
        "requests": report.load.requests,
        "items_acknowledged": len(acked),
        "items_acknowledged_before_switch": before,
        "acknowledged_items_lost": len(lost),
        "lost_sample": lost[:10],
        "tasks": len(keys),
        "tasks_missing": sum(1 for k in keys if not rows.get(k)),
        "tasks_done_twice": sum(1 for k in keys if rows.get(k, 0) > 1),
        "left_on_old_primary": sched.left_on_old if sched.variant == "read-only" else None,
        # Stopped: none from the moment it died (by construction), not a figure.
        "seconds_until_none_on_old": sched.since_switch(sched.old_empty_t) if sched.variant == "read-only" else None,
        "seconds_until_counts_exact": sched.since_switch(sched.exact_t),
        "schedule_error": sched.error,
        "run_checks": {f"{c.number}": c.passed for c in report.checks},
    }


def _by_status(entries: list[tuple[str, int]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for status, n in entries:
        found[status] = found.get(status, 0) + n
    return found


def checks_for(figures: dict[str, Any], report: RunReport, first: int) -> list[Check]:
    """run_on's checks (the ceiling and exact counts summed over both servers), then the failover's own."""
    variant = figures["variant"]
    found = [replace(c, number=first + i, name=f"{c.name} ({variant})") for i, c in enumerate(report.checks)]
    n = first + len(found)
    lost, acked = figures["acknowledged_items_lost"], figures["items_acknowledged"]
    found.append(
        Check(
            n,
            f"no acknowledged write lost: every item answered 201 is on the new primary ({variant})",
            acked > 0 and lost == 0,
            f"{acked} acknowledged ({figures['items_acknowledged_before_switch']} before the switch), {lost} missing "
            f"{figures['lost_sample']}",
        )
    )
    if variant == "read-only":
        left = figures["left_on_old_primary"]
        detail = f"{left} left {LEFT_BOUND_S:.0f} s after the promotion at most; none after "
        detail += f"{figures['seconds_until_none_on_old']} s from the switch"
        passed = left == 0
    else:
        detail, passed = "the old primary is down: none can be left on it (by construction)", True
    found.append(Check(n + 1, f"none of the suite's sessions left on the old primary ({variant})", passed, detail))
    return found


def failover_suite(duration: float = 30.0) -> Any:
    """`forkpool fault failover --suite`: both variants, each on fresh servers, under the whole suite's load."""
    from .faults import FaultResult

    result = FaultResult("failover-suite")
    for variant in VARIANTS:
        figures, report = suite_run(variant, duration)
        result.checks += checks_for(figures, report, len(result.checks) + 1)
        figures.pop("variant")
        result.figures[variant] = figures
    return result
