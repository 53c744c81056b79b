"""What a harness run records and concludes: plain data, written to JSON as is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One poll of pg_stat_activity: this run's sessions by (role, client pid)."""

    t: float  # seconds since the run started
    sessions: dict[tuple[str, int], int]  # (role, pid) -> connections (behind PgBouncer: its clients)
    servers: int | None = None  # behind PgBouncer: its server connections, as PostgreSQL counts them

    @property
    def total(self) -> int:
        return sum(self.sessions.values())

    def by_role(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for (role, _), count in self.sessions.items():
            found[role] = found.get(role, 0) + count
        return found

    def by_pid(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for (_, pid), count in self.sessions.items():
            found[pid] = found.get(pid, 0) + count
        return found

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "t": round(self.t, 3),
            "sessions": [[r, p, c] for (r, p), c in sorted(self.sessions.items())],
        }
        if self.servers is not None:
            body["servers"] = self.servers
        return body


@dataclass(frozen=True)
class Event:
    """Something the harness did or saw during the run (a kill, a recycle, a phase)."""

    t: float
    kind: str  # "phase", "kill", "recycle", "restart", ...
    detail: str


@dataclass(frozen=True)
class Check:
    """One assertion of the proof, reported PASS/FAIL.

    A check that holds a time bound (a request answered within N s) also says whether the
    behaviour behind it held, bound aside (`behaved`): `forkpool fault` fails on either, while the
    test suite, which runs on machines of any load, asserts the behaviour and reports the time
    (figures are judged where the machine is known: docs/reliability.md).
    """

    number: int
    name: str
    passed: bool
    detail: str
    behaved: bool | None = None  # None: no time bound, `passed` is all there is

    @property
    def behaviour_held(self) -> bool:
        return self.passed if self.behaved is None else self.behaved


@dataclass(frozen=True)
class RoleSummary:
    role: str  # "web", "worker", "asgi"; on a fleet with the host: "web@h1"
    processes: int
    pool_size: int
    expected: int  # processes x pool_size
    observed_steady: int  # after start-up, before load
    max_observed: int  # over the whole run
    passed: bool


@dataclass(frozen=True)
class Overlap:
    """A stretch where the total exceeded the ceiling (a recycled process and its replacement)."""

    start: float
    duration: float
    excess: int  # connections above the ceiling at the worst moment


@dataclass
class LoadResult:
    """What the load generators did and saw."""

    requests: int = 0
    failures: int = 0
    requests_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # "p50", "p95", "p99", "max"
    status_counts: dict[str, int] = field(default_factory=dict)  # "200" -> n, "503" -> n, "error" -> n
    endpoints: list[dict[str, Any]] = field(
        default_factory=list
    )  # per endpoint: name, requests, failures, p50, p99, rps
    job_ids: list[str] = field(default_factory=list)  # POST /jobs answered 202
    event_keys: list[str] = field(default_factory=list)  # record_event keys behind those jobs
    items_created: list[tuple[str, float]] = field(default_factory=list)  # POST /items answered 201: (name, unix time)
    pool_reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # web pid -> last GET /pool body
    direct_keys: list[str] = field(default_factory=list)  # record_event keys the harness sent to Celery itself
    tasks_enqueued: int = 0  # directly through Celery, by the harness
    tasks_completed: int = 0
    tasks_per_s: float = 0.0
    errors: list[str] = field(default_factory=list)  # distinct error messages, truncated
    # Responses per second by status, [unix second, {"200": n, "503": n, ...}]; the run places them on
    # its own clock (RunReport.status_timeline).
    status_by_second: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    dropped_by_tier: dict[str, int] = field(default_factory=dict)  # "web" / "asgi" -> requests with no response


@dataclass
class RunReport:
    suite_id: str
    plan: dict[str, Any]
    naive: bool
    started_at: str  # ISO 8601, UTC
    duration_s: float
    ceiling: int
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    roles: list[RoleSummary] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)
    load: LoadResult = field(default_factory=LoadResult)
    budget: dict[str, Any] = field(default_factory=dict)
    rss: list[tuple[float, str, int, int]] = field(default_factory=list)  # (t, role, pid, kB) every second
    # (t, role, pid, open fds, TCP connections) every second (soak)
    handles: list[tuple[float, str, int, int, int]] = field(default_factory=list)
    # soak --faults: one per fault, kind, at, window_s, ended, recovered_s (harness/fault_schedule.py)
    faults: list[dict[str, Any]] = field(default_factory=list)
    pgbouncer: dict[str, Any] = field(default_factory=dict)  # behind PgBouncer: version, settings, peaks
    # (t, status, n): responses that were not 2xx in each second of the load, on the samples' clock
    status_timeline: list[tuple[float, str, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["samples"] = [s.to_json() for s in self.samples]
        body["passed"] = self.passed
        return body
