"""One harness run: boot the suite (on one host or a fleet, directly or through PgBouncer), load it,
disturb it, and prove the connection ceiling."""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
from rich.console import Console

from forkpool.budget import Budget, DeploymentPlan, PoolerLimits, read_server_limits
from suite.queue import TASK_RECORD_EVENT
from suite.schema import init_schema_at

from . import checks
from .chaos import DirectEnqueuer, Killer, producer, worker_pool_reports
from .fleet import Fleet, check_fleet_ceiling, host_labels, qualified, start_fleet
from .load import LocustRun
from .model import Check, Event, LoadResult, RunReport, Sample
from .pgbouncer import BouncerSettings, EmbeddedPgBouncer, prepares_itself
from .processes import RQ, SuitePlan
from .rss import RssSampler, check_handles_flat, check_memory_flat
from .sampler import BouncerSampler, Sampler, ServersSampler
from .services import redact_url, services
from .socket_watch import SocketWatch
from .suite_probe import pid_alive, rows_for_keys, wait_for_rows, web_pool_reports, writers_for_keys

if TYPE_CHECKING:
    from .fault_schedule import FaultSchedule

STEADY_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0
# A naive run never reaches the plan's steady state: waiting the full time would only slow the contrast.
NAIVE_WAIT_S = 3.0


@dataclass
class LoadOptions:
    web_workers: int = 3
    web_threads: int = 1
    worker_concurrency: int = 2
    pool_size: int = 4  # every role's
    asgi_workers: int = 0  # the async tier (Gunicorn + uvicorn workers); 0: not started
    duration: float = 20.0
    users: int = 10
    task_rate: float = 5.0
    max_requests: int = 0
    max_tasks_per_child: int = 0
    preload: bool = False
    kill_workers: int = 0
    naive: bool = False
    stack: str = "forkpool"  # the data layer web and workers run on: forkpool, flask-sqlalchemy, django
    max_connections: int = 100  # of the embedded server; ignored with DATABASE_URL
    other_clients: int = 2  # the harness's own sessions (sampler, checks)
    soak: bool = False  # add checks 7 and 8: memory, open files and connections stay flat
    faults: bool = False  # soak --faults: rotating faults, recovery after each (check 9)
    hosts: int = 1  # copies of the suite, each its own host (harness/fleet.py)
    pgbouncer: bool = False  # put a PgBouncer (transaction pooling) between the suite and PostgreSQL
    pgbouncer_pool_size: int = 10  # its default_pool_size: the server connections it may open
    pgbouncer_reserve: int = 2  # its reserve_pool_size
    web_server: str = "gunicorn"  # or "uwsgi": the web tier under uWSGI (harness/processes.py)
    task_runner: str = "celery"  # or "rq": the task tier under RQ workers (harness/rq_runner.py)
    extra_env: dict[str, str] = field(default_factory=dict)  # more environment for every suite process

    def deployment(self) -> DeploymentPlan:
        return DeploymentPlan(
            self.web_workers,
            self.web_threads,
            self.worker_concurrency,
            self.pool_size,
            self.other_clients,
            self.asgi_workers,
            self.hosts,
        )

    def bouncer(self) -> BouncerSettings:
        # Room for every client of the fleet twice over: the client tier is not what a run tests.
        fleet = self.deployment().fleet_ceiling
        return BouncerSettings(self.pgbouncer_pool_size, self.pgbouncer_reserve, max(200, 2 * fleet))

    def pooler(self) -> PoolerLimits | None:
        b = self.bouncer()
        return PoolerLimits(b.max_client_conn, b.pool_size, b.reserve) if self.pgbouncer else None

    @property
    def asgi_users(self) -> int:
        """Load users sent to the async tier: half of them (at least one) when it runs."""
        return max(self.users // 2, 1) if self.asgi_workers else 0


def run_loadtest(options: LoadOptions, console: Console, log_dir: Path | None = None) -> RunReport:
    """Start embedded servers (or use DATABASE_URL / REDIS_URL), PgBouncer if asked, and run once on them."""
    if options.faults:
        from .fault_schedule import run_with_faults

        return run_with_faults(options, console, log_dir)
    max_connections = max(options.max_connections, 10)
    with services(max_connections=max_connections) as running, ExitStack() as stack:  # PgBouncer stops first
        assert running.redis_url is not None
        console.print(f"PostgreSQL {redact_url(running.database_url)}, Redis {redact_url(running.redis_url)}")
        bouncer = None
        if options.pgbouncer:
            bouncer = stack.enter_context(EmbeddedPgBouncer(running.database_url, options.bouncer()))
            b = bouncer.settings
            console.print(
                f"PgBouncer {'.'.join(map(str, bouncer.version))} at {bouncer.url}: transaction pooling, "
                f"pool {b.pool_size} + reserve {b.reserve}, max_client_conn {b.max_client_conn}"
            )
        return run_on(running.database_url, running.redis_url, options, console, log_dir, bouncer)


def check_budget(database_url: str, plan: DeploymentPlan, pooler: PoolerLimits | None = None) -> Budget:
    conn = psycopg2.connect(database_url, application_name="forkpool-budget", connect_timeout=5)
    try:
        return Budget(plan, read_server_limits(conn), pooler)
    finally:
        conn.close()


def plans_for(
    options: LoadOptions, suite_id: str, database_url: str, redis_url: str, bouncer: EmbeddedPgBouncer | None = None
) -> list[SuitePlan]:
    """One plan per host; behind PgBouncer the suite's DATABASE_URL is PgBouncer's."""
    env = {**options.extra_env, "DB_BUDGET_HOSTS": str(options.hosts)}  # each host's start-up check counts the fleet
    if bouncer is not None:
        env["DB_BUDGET_MAX_CLIENT_CONN"] = str(bouncer.settings.max_client_conn)
        if not prepares_itself(bouncer.version):
            env["DB_POOL_PREPARE"] = "off"  # < 1.21: a statement prepared on one server connection is lost
    return [
        SuitePlan(
            database_url=bouncer.url if bouncer else database_url,
            redis_url=redis_url,
            suite_id=suite_id,
            web_workers=options.web_workers,
            web_threads=options.web_threads,
            worker_concurrency=options.worker_concurrency,
            pool_size=options.pool_size,
            asgi_workers=options.asgi_workers,
            max_requests=options.max_requests,
            max_tasks_per_child=options.max_tasks_per_child,
            preload=options.preload or options.naive,
            naive=options.naive,
            stack=options.stack,
            host=host,
            web_server=options.web_server,
            task_runner=options.task_runner,
            extra_env=env,
        )
        for host in host_labels(options.hosts)
    ]


def run_on(
    database_url: str,
    redis_url: str,
    options: LoadOptions,
    console: Console,
    log_dir: Path | None = None,
    bouncer: EmbeddedPgBouncer | None = None,
    observe_url: str | Sequence[str] | None = None,
    schedule: Callable | None = None,
) -> RunReport:
    """`bouncer`: the PgBouncer in between, if any; `observe_url`: where the harness counts sessions, if
    not `database_url` (a proxy in between), or several servers whose counts are summed (a primary and its
    standby: harness/suite_failover.py); `schedule(sampler, exact, task_through)`: faults to run during the
    load (harness/fault_schedule.py, harness/suite_failover.py)."""
    suite_id = f"run{uuid.uuid4().hex[:8]}"
    plans = plans_for(options, suite_id, database_url, redis_url, bouncer)
    report = RunReport(
        suite_id=suite_id,
        plan=asdict(options),
        naive=options.naive,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        duration_s=0.0,
        ceiling=sum(plan.ceiling for plan in plans),
    )
    budget = check_budget(database_url, options.deployment(), bouncer and options.pooler())
    report.budget = {"fits": budget.fits, "arithmetic": budget.explain(), **asdict(budget.limits)}
    for line in budget.explain():
        console.print(f"  budget  {line}")
    if not budget.fits:
        report.checks.append(
            Check(0, "budget: the plan fits the server's connection slots", False, budget.explain()[-1])
        )
        return report
    init_schema_at(database_url)
    started = time.monotonic()
    sampler = (
        BouncerSampler(bouncer.admin_url, database_url, suite_id, bouncer.server_role)
        if bouncer
        else ServersSampler(observe_url, suite_id)
        if observe_url is not None and not isinstance(observe_url, str)
        else Sampler(observe_url or database_url, suite_id)
    ).start()
    logs = log_dir or Path(tempfile.mkdtemp(prefix=f"forkpool-{suite_id}-"))
    asgi = f", {options.asgi_workers} asgi workers" if options.asgi_workers else ""
    hosts = f"{options.hosts} hosts of " if options.hosts > 1 else ""
    console.print(
        f"starting {hosts}{options.web_workers} web workers, {options.worker_concurrency} task processes"
        f"{asgi}, pool {options.pool_size} each: ceiling {report.ceiling}; logs in {logs}"
    )
    fleet = start_fleet(plans, logs)
    processes = fleet.processes()
    rss = RssSampler(fleet.hosts, sampler.now).start()
    steady = None
    try:
        steady = _drive(fleet, sampler, options, report, console, logs, database_url, schedule)
    finally:
        report.rss = rss.stop()
        report.handles = rss.handles
        fleet.stop()
        report.samples = sampler.stop()
        report.duration_s = round(time.monotonic() - started, 2)
    _conclude(report, options, steady, processes, bouncer)
    return report


def _drive(
    fleet: Fleet,
    sampler: Sampler,
    options: LoadOptions,
    report: RunReport,
    console: Console,
    logs: Path,
    direct_url: str,
    schedule: Callable | None = None,
) -> Sample | None:
    """Steady state, load with disturbances, drain, settle; appends checks 1, 3, 4, 5 and 6."""
    plan = fleet.hosts[0].plan
    expected = fleet.expected()
    patience = NAIVE_WAIT_S if plan.naive else STEADY_TIMEOUT_S
    steady = _wait_for(sampler, lambda s: {r: n for r, n in s.by_role().items() if n} == expected, patience)
    report.checks.append(checks.check_steady_state(steady, expected, fleet.master_pids, plan.pool_size))
    report.events.append(Event(sampler.now(), "phase", "load starts"))
    celery = _producer(plan)
    load_start = time.monotonic()
    watch = SocketWatch(plan.database_url, plan.redis_url, fleet.master_pids).start()
    try:
        faults = (
            schedule(
                sampler,
                lambda s: {r: n for r, n in s.by_role().items() if n} == expected,
                _task_through(celery, plan, direct_url),
            )
            if schedule
            else None
        )
        load = _run_load(fleet, sampler, options, report, console, logs, celery, faults)
    finally:
        watch.stop()
    load_end = sampler.now()
    report.events.append(Event(load_end, "phase", "load ends"))
    keys = load.event_keys + load.direct_keys
    rows = wait_for_rows(direct_url, keys, DRAIN_TIMEOUT_S)  # the harness's own queries never go through PgBouncer
    load.tasks_completed = sum(1 for k in load.direct_keys if rows.get(k))
    load.tasks_per_s = round(load.tasks_completed / max(time.monotonic() - load_start, 1e-9), 2)
    report.load = load
    _wait_for(
        sampler,
        lambda s: s.t > load_end and {r: n for r, n in s.by_role().items() if n} == expected,
        NAIVE_WAIT_S if plan.naive else checks.SETTLE_BOUND_S,
    )
    report.checks.append(
        checks.check_settled([s for s in sampler.samples if s.t > load_end], expected, plan.pool_size, pid_alive)
    )
    # Which host ran each task, by the name its transaction carried: on a fleet, or through PgBouncer.
    writers = writers_for_keys(direct_url, keys) if options.hosts > 1 or options.pgbouncer else None
    report.checks.append(
        checks.check_work_done(
            keys,
            rows,
            load.status_counts,
            _in_flight_on_killed(report, options),
            writers,
            load.dropped_by_tier,
            _in_flight_by_tier(report, options),
        )
    )
    by_role, final = _pool_reports(fleet, sampler, celery)
    report.checks.append(checks.check_reports_agree(by_role, final.by_pid(), pid_alive))
    watch.look()  # twice more after the load, recycling and kills: a finding must be seen twice
    watch.look()
    report.checks.append(watch.check())
    return steady


def _run_load(
    fleet: Fleet,
    sampler: Sampler,
    options: LoadOptions,
    report: RunReport,
    console: Console,
    logs: Path,
    celery,
    faults: FaultSchedule | None = None,
) -> LoadResult:
    plan = fleet.hosts[0].plan
    # The async tier gets its share of the users (harness/locustfile.py's AsgiUser), the web tier the rest;
    # on a fleet, each tier's users take its hosts in turn.
    asgi_urls = [suite.asgi.url for suite in fleet.hosts if suite.asgi]
    env = (
        {"FORKPOOL_ASGI_HOST": ",".join(asgi_urls), "FORKPOOL_ASGI_USERS": str(options.asgi_users)}
        if asgi_urls
        else {"FORKPOOL_ASGI_HOST": ""}
    )
    if len(fleet.hosts) > 1:
        env["FORKPOOL_WEB_HOSTS"] = ",".join(suite.web.url for suite in fleet.hosts)
    locust = LocustRun(
        fleet.hosts[0].web.url,
        users=options.users,
        duration=options.duration,
        suite_id=plan.suite_id,
        workdir=logs / "locust",
        env=env,
    ).start()
    enqueuer = DirectEnqueuer(celery, plan.queue, plan.suite_id, options.task_rate).start()
    killer = Killer(fleet.hosts, options.kill_workers, options.duration, sampler.now).start()
    if faults is not None:
        faults.start()
    try:
        with console.status("load running") as status:
            deadline = time.monotonic() + options.duration
            while time.monotonic() < deadline:
                latest = sampler.latest()
                seen = latest.by_role() if latest else {}
                status.update(
                    f"load: {max(deadline - time.monotonic(), 0):4.0f} s left; connections "
                    f"{sum(seen.values())}/{report.ceiling} {seen}"
                )
                if faults is not None:
                    faults.service_restarts()  # from this, the main thread (see FaultSchedule)
                time.sleep(0.5)
        load = locust.wait(timeout=options.duration + 60)
    finally:
        enqueuer.stop()
        killer.stop()
        locust.stop()
        if faults is not None:
            faults.stop()
    report.events.extend(killer.events)
    if faults is not None:
        report.events.extend(faults.events)
        report.faults = faults.report()
        report.checks.append(faults.check(9))
    load.tasks_enqueued = len(enqueuer.keys)
    load.direct_keys = list(enqueuer.keys)
    report.status_timeline = failed_per_second(load.status_by_second, time.time() - sampler.now())
    return load


def _task_through(celery, plan: SuitePlan, direct_url: str) -> Callable[[float], bool]:
    """`task_through(timeout)`: a record_event task enqueued now (again while the broker refuses), True once its
    row is written. Its key is the run's but none of the load's: check 4 does not count it."""
    keys = itertools.count()

    def task_through(timeout: float) -> bool:
        key = f"{plan.suite_id}:probe:{next(keys)}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                celery.send_task(TASK_RECORD_EVENT, kwargs={"key": key}, queue=plan.queue)
                break
            except Exception:  # noqa: BLE001 - the broker may still be coming back: try again until the deadline
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.25)
        while time.monotonic() < deadline:
            try:
                if rows_for_keys(direct_url, [key]):
                    return True
            except psycopg2.Error:
                pass  # the server may be coming back too
            time.sleep(0.1)
        return False

    return task_through


def failed_per_second(by_second: list[tuple[int, dict[str, int]]], wall_at_zero: float) -> list[tuple[float, str, int]]:
    """The responses that were not 2xx, per second and status, on the run's clock (0 = the sampler's start)."""
    return [
        (round(second - wall_at_zero, 1), status, n)
        for second, counts in by_second
        for status, n in sorted(counts.items())
        if not status.startswith("2")
    ]


def _conclude(
    report: RunReport,
    options: LoadOptions,
    steady: Sample | None,
    processes: dict[str, int],
    bouncer: EmbeddedPgBouncer | None,
) -> None:
    """Checks that need the whole series: the ceiling under load (per host), PgBouncer's servers, summaries."""
    labels = host_labels(options.hosts)
    if len(labels) > 1:
        check, report.overlaps = check_fleet_ceiling(
            report.samples, labels, report.ceiling // len(labels), options.pool_size
        )
    else:
        check, report.overlaps = checks.check_ceiling(report.samples, report.ceiling, options.pool_size)
    report.checks.insert(1, check)
    if bouncer is not None:
        report.checks.append(
            checks.check_server_pool(report.samples, bouncer.settings.pool_size, bouncer.settings.reserve)
        )
        report.pgbouncer = {
            "version": ".".join(map(str, bouncer.version)),
            "pool_mode": "transaction",
            **asdict(bouncer.settings),
            "prepare": "on" if prepares_itself(bouncer.version) else "off",
            "client_peak": max((s.total for s in report.samples), default=0),
            "server_peak": max((s.servers or 0 for s in report.samples), default=0),
        }
    if options.soak:
        report.checks.append(check_memory_flat(report.rss))
        load_start = next((e.t for e in report.events if e.kind == "phase" and e.detail == "load starts"), 0.0)
        report.checks.append(check_handles_flat(report.handles, report.samples, since=load_start))
    report.checks.sort(key=lambda c: c.number)
    report.roles = checks.role_summaries(report.samples, steady, processes, options.pool_size)
    killed = {int(e.detail.rsplit(" ", 1)[1]) for e in report.events if e.kind == "kill"}
    report.events.extend(_recycles(report.samples, killed))
    report.events.sort(key=lambda e: e.t)


def _in_flight_on_killed(report: RunReport, options: LoadOptions) -> int:
    """Requests a kill may drop: a web worker's threads; an asgi worker's users (each has one request open).

    On a fleet, an asgi worker serves only its host's share of the users (they take the hosts in turn).
    """
    kills = [e.detail for e in report.events if e.kind == "kill"]
    web = sum(1 for d in kills if d.startswith("SIGKILL web worker"))
    asgi = sum(1 for d in kills if d.startswith("SIGKILL asgi worker"))
    return web * options.web_threads + asgi * -(-options.asgi_users // options.hosts)


def _producer(plan: SuitePlan):
    """Celery's producer, or under RQ one with the part of its API the enqueuer and the stats probe use."""
    if plan.task_runner == RQ:
        from .rq_runner import RqProducer

        return RqProducer(plan.redis_url)
    return producer(plan.redis_url)


def _in_flight_by_tier(report: RunReport, options: LoadOptions) -> dict[str, int]:
    """`_in_flight_on_killed` per tier: a recycle is graceful, so only a tier's own kills allow it drops."""
    kills = [e.detail for e in report.events if e.kind == "kill"]
    allowed = {"web": sum(1 for d in kills if d.startswith("SIGKILL web worker")) * options.web_threads}
    if options.asgi_workers:
        asgi = sum(1 for d in kills if d.startswith("SIGKILL asgi worker"))
        allowed["asgi"] = asgi * -(-options.asgi_users // options.hosts)
    return allowed


def _recycles(samples: list[Sample], killed: set[int]) -> list[Event]:
    """Processes whose sessions ended without the harness killing them: recycled (or died)."""
    found, before = [], set()
    for sample in samples:
        now = {pid for pid, n in sample.by_pid().items() if n}
        for pid in sorted(before - now - killed):
            found.append(Event(sample.t, "recycle", f"process {pid} ended its sessions"))
        before = now
    return found


def _pool_reports(fleet: Fleet, sampler: Sampler, celery, rounds: int = 3) -> tuple[dict[str, dict[int, dict]], Sample]:
    """Each process's own stats by role (and host), then the server's count; asked again while a role is unheard.

    Asking recycles processes too: the stats tasks count towards max_tasks_per_child,
    the GET /pool requests towards max_requests. A role whose every reporter then
    exited is asked again (its replacements answer), at most `rounds` times.
    Each host's task processes are asked on that host's own queue.
    """
    for _ in range(rounds):
        http: dict[str, dict[int, dict]] = {}
        for suite in fleet.hosts:
            host = suite.plan.host
            http[qualified(checks.WEB, host)] = web_pool_reports(suite.web.url, set(suite.web.children()))
            if suite.asgi is not None:
                http[qualified(checks.ASGI, host)] = web_pool_reports(suite.asgi.url, set(suite.asgi.children()))
        tasks = {
            qualified(checks.WORKER, suite.plan.host):  # last: they recycle the most
            worker_pool_reports(
                celery, suite.plan.host_queue, suite.plan.worker_concurrency, **_REPORT_CALLS[suite.plan.task_runner]
            )
            for suite in fleet.hosts
        }
        final = sampler.sample_now()  # after the reports: a process that answered and then recycled is gone now
        # Roles in check 5's order (web, worker, asgi), hosts in order within each: the sort is stable.
        by_role = dict(sorted({**http, **tasks}.items(), key=lambda item: _ROLE_RANK[item[0].partition("@")[0]]))
        _let_recycled_exit({pid: r for reports in by_role.values() for pid, r in reports.items()}, final)
        if all(
            any(pid_alive(pid) or "server_sessions" in r for pid, r in reports.items()) for reports in by_role.values()
        ):
            break
    return by_role, final


# Stats calls per task process: Celery's processes live on, so lingering calls spread over all of them;
# an RQ work-horse lives for one call.
_REPORT_CALLS = {"celery": {"calls": 4, "linger": 0.3}, RQ: {"calls": 1, "linger": 0.0}}
_ROLE_RANK = {checks.WEB: 0, checks.WORKER: 1, checks.ASGI: 2}  # check 5 names roles in this order


# How long a process that reported, then closed its pool to recycle, may take to exit. Locally
# under 0.1 s; 3 s was once too short on CI with another suite running beside this one.
RECYCLE_EXIT_GRACE_S = 10.0


def _let_recycled_exit(reports: dict[int, dict], final: Sample, grace: float = RECYCLE_EXIT_GRACE_S) -> None:
    """A process that reported, then closed its pool to recycle, may still be exiting: give it `grace`.

    One still alive after that, holding nothing while its stats say otherwise, is a real disagreement.
    """
    closing = [pid for pid in reports if not final.by_pid().get(pid)]
    deadline = time.monotonic() + grace
    while any(pid_alive(pid) for pid in closing) and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_for(sampler: Sampler, ok: Callable[[Sample], bool], timeout: float) -> Sample | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = sampler.latest()
        if latest is not None and ok(latest):
            return latest
        time.sleep(0.05)
    return sampler.latest()
