"""One harness run: boot the suite, load it, disturb it, and prove the connection ceiling."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psycopg2
from rich.console import Console

from forkpool.budget import Budget, DeploymentPlan, read_server_limits
from suite.schema import init_schema_at

from . import checks
from .chaos import DirectEnqueuer, Killer, producer, worker_pool_reports
from .load import LocustRun
from .model import Check, Event, LoadResult, RunReport, Sample
from .processes import RunningSuite, SuitePlan, start_suite
from .rss import RssSampler, check_memory_flat
from .socket_watch import SocketWatch
from .sampler import Sampler
from .services import redact_url, services
from .suite_probe import pid_alive, wait_for_rows, web_pool_reports

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
    soak: bool = False  # add check 7: memory per process stays flat
    faults: bool = False  # soak --faults: a restart, a blackhole, a latency spike (check 8)

    def deployment(self) -> DeploymentPlan:
        return DeploymentPlan(self.web_workers, self.web_threads, self.worker_concurrency, self.pool_size,
                              self.other_clients, self.asgi_workers)

    @property
    def asgi_users(self) -> int:
        """Load users sent to the async tier: half of them (at least one) when it runs."""
        return max(self.users // 2, 1) if self.asgi_workers else 0


def run_loadtest(options: LoadOptions, console: Console, log_dir: Path | None = None) -> RunReport:
    """Start embedded servers (or use DATABASE_URL / REDIS_URL) and run once on them."""
    if options.faults:
        from .fault_schedule import run_with_faults

        return run_with_faults(options, console, log_dir)
    max_connections = max(options.max_connections, 10)
    with services(max_connections=max_connections) as running:
        assert running.redis_url is not None
        console.print(f"PostgreSQL {redact_url(running.database_url)}, Redis {redact_url(running.redis_url)}")
        return run_on(running.database_url, running.redis_url, options, console, log_dir)


def check_budget(database_url: str, plan: DeploymentPlan) -> Budget:
    conn = psycopg2.connect(database_url, application_name="forkpool-budget", connect_timeout=5)
    try:
        return Budget(plan, read_server_limits(conn))
    finally:
        conn.close()


def run_on(database_url: str, redis_url: str, options: LoadOptions, console: Console,
           log_dir: Path | None = None, observe_url: str | None = None,
           schedule: Callable | None = None) -> RunReport:
    """`observe_url`: where the harness counts sessions, if not `database_url` (a proxy in between);
    `schedule(sampler, exact)`: faults to run during the load (harness/fault_schedule.py)."""
    suite_id = f"run{uuid.uuid4().hex[:8]}"
    plan = SuitePlan(database_url=database_url, redis_url=redis_url, suite_id=suite_id,
                     web_workers=options.web_workers, web_threads=options.web_threads,
                     worker_concurrency=options.worker_concurrency, pool_size=options.pool_size,
                     asgi_workers=options.asgi_workers, max_requests=options.max_requests,
                     max_tasks_per_child=options.max_tasks_per_child,
                     preload=options.preload or options.naive, naive=options.naive, stack=options.stack)
    report = RunReport(suite_id=suite_id, plan=asdict(options), naive=options.naive,
                       started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       duration_s=0.0, ceiling=plan.ceiling)
    budget = check_budget(database_url, options.deployment())
    report.budget = {"fits": budget.fits, "arithmetic": budget.explain(), **asdict(budget.limits)}
    for line in budget.explain():
        console.print(f"  budget  {line}")
    if not budget.fits:
        report.checks.append(Check(0, "budget: the plan fits the server's connection slots", False,
                                   budget.explain()[-1]))
        return report
    init_schema_at(database_url)
    started = time.monotonic()
    sampler = Sampler(observe_url or database_url, suite_id).start()
    logs = log_dir or Path(tempfile.mkdtemp(prefix=f"forkpool-{suite_id}-"))
    asgi = f", {options.asgi_workers} asgi workers" if options.asgi_workers else ""
    console.print(f"starting {options.web_workers} web workers, {options.worker_concurrency} task processes{asgi}, "
                  f"pool {options.pool_size} each: ceiling {plan.ceiling}; logs in {logs}")
    suite = start_suite(plan, logs)
    rss = RssSampler(suite, sampler.now).start()
    steady = None
    try:
        steady = _drive(suite, sampler, options, report, console, logs, schedule)
    finally:
        report.rss = rss.stop()
        suite.stop()
        report.samples = sampler.stop()
        report.duration_s = round(time.monotonic() - started, 2)
    _conclude(report, options, steady)
    return report


def _drive(suite: RunningSuite, sampler: Sampler, options: LoadOptions, report: RunReport,
           console: Console, logs: Path, schedule: Callable | None = None) -> Sample | None:
    """Steady state, load with disturbances, drain, settle; appends checks 1, 3, 4, 5 and 6."""
    plan = suite.plan
    expected = checks.expected_by_role(plan.web_workers, plan.worker_concurrency, plan.pool_size, plan.asgi_workers)
    patience = NAIVE_WAIT_S if plan.naive else STEADY_TIMEOUT_S
    steady = _wait_for(sampler, lambda s: {r: n for r, n in s.by_role().items() if n} == expected, patience)
    report.checks.append(checks.check_steady_state(steady, expected, suite.master_pids, plan.pool_size))
    report.events.append(Event(sampler.now(), "phase", "load starts"))
    celery = producer(plan.redis_url)
    load_start = time.monotonic()
    watch = SocketWatch(plan.database_url, plan.redis_url, suite.master_pids).start()
    try:
        faults = schedule(sampler, lambda s: {r: n for r, n in s.by_role().items() if n} == expected) \
            if schedule else None
        load = _run_load(suite, sampler, options, report, console, logs, celery, faults)
    finally:
        watch.stop()
    load_end = sampler.now()
    report.events.append(Event(load_end, "phase", "load ends"))
    keys = load.event_keys + load.direct_keys
    rows = wait_for_rows(plan.database_url, keys, DRAIN_TIMEOUT_S)
    load.tasks_completed = sum(1 for k in load.direct_keys if rows.get(k))
    load.tasks_per_s = round(load.tasks_completed / max(time.monotonic() - load_start, 1e-9), 2)
    report.load = load
    _wait_for(sampler, lambda s: s.t > load_end and {r: n for r, n in s.by_role().items() if n} == expected,
              NAIVE_WAIT_S if plan.naive else checks.SETTLE_BOUND_S)
    report.checks.append(checks.check_settled([s for s in sampler.samples if s.t > load_end], expected,
                                              plan.pool_size, pid_alive))
    report.checks.append(checks.check_work_done(keys, rows, load.status_counts, _in_flight_on_killed(report, options)))
    web_reports, worker_reports, asgi_reports, final = _pool_reports(suite, sampler, celery)
    report.checks.append(checks.check_stats_agree(web_reports, worker_reports, final.by_pid(), pid_alive,
                                                  asgi_reports))
    watch.look()  # twice more after the load, recycling and kills: a finding must be seen twice
    watch.look()
    report.checks.append(watch.check())
    return steady


def _run_load(suite: RunningSuite, sampler: Sampler, options: LoadOptions, report: RunReport,
              console: Console, logs: Path, celery, faults: FaultSchedule | None = None) -> LoadResult:
    plan = suite.plan
    # The async tier gets its share of the users (harness/locustfile.py's AsgiUser), the web tier the rest.
    asgi_env = ({"FORKPOOL_ASGI_HOST": suite.asgi.url, "FORKPOOL_ASGI_USERS": str(options.asgi_users)}
                if suite.asgi else {"FORKPOOL_ASGI_HOST": ""})
    locust = LocustRun(suite.web.url, users=options.users, duration=options.duration,
                       suite_id=plan.suite_id, workdir=logs / "locust", env=asgi_env).start()
    enqueuer = DirectEnqueuer(celery, plan.queue, plan.suite_id, options.task_rate).start()
    killer = Killer(suite, options.kill_workers, options.duration, sampler.now).start()
    if faults is not None:
        faults.start()
    try:
        with console.status("load running") as status:
            deadline = time.monotonic() + options.duration
            while time.monotonic() < deadline:
                latest = sampler.latest()
                seen = latest.by_role() if latest else {}
                status.update(f"load: {max(deadline - time.monotonic(), 0):4.0f} s left; connections "
                              f"{sum(seen.values())}/{plan.ceiling} {seen}")
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
        report.checks.append(faults.check(8))
    load.tasks_enqueued = len(enqueuer.keys)
    load.direct_keys = list(enqueuer.keys)
    return load


def _conclude(report: RunReport, options: LoadOptions, steady: Sample | None) -> None:
    """Checks that need the whole series: the ceiling under load, per-role summaries, recycles."""
    check, report.overlaps = checks.check_ceiling(report.samples, report.ceiling, options.pool_size)
    report.checks.insert(1, check)
    if options.soak:
        report.checks.append(check_memory_flat(report.rss))
    report.checks.sort(key=lambda c: c.number)
    processes = {checks.WEB: options.web_workers, checks.WORKER: options.worker_concurrency}
    if options.asgi_workers:
        processes[checks.ASGI] = options.asgi_workers
    report.roles = checks.role_summaries(report.samples, steady, processes, options.pool_size)
    killed = {int(e.detail.rsplit(" ", 1)[1]) for e in report.events if e.kind == "kill"}
    report.events.extend(_recycles(report.samples, killed))
    report.events.sort(key=lambda e: e.t)


def _in_flight_on_killed(report: RunReport, options: LoadOptions) -> int:
    """Requests a kill may drop: a web worker's threads; an asgi worker's users (each has one request open)."""
    kills = [e.detail for e in report.events if e.kind == "kill"]
    web = sum(1 for d in kills if d.startswith("SIGKILL web worker"))
    asgi = sum(1 for d in kills if d.startswith("SIGKILL asgi worker"))
    return web * options.web_threads + asgi * options.asgi_users


def _recycles(samples: list[Sample], killed: set[int]) -> list[Event]:
    """Processes whose sessions ended without the harness killing them: recycled (or died)."""
    found, before = [], set()
    for sample in samples:
        now = {pid for pid, n in sample.by_pid().items() if n}
        for pid in sorted(before - now - killed):
            found.append(Event(sample.t, "recycle", f"process {pid} ended its sessions"))
        before = now
    return found


def _pool_reports(suite: RunningSuite, sampler: Sampler, celery, rounds: int = 3
                  ) -> tuple[dict[int, dict], dict[int, dict], dict[int, dict] | None, Sample]:
    """Each process's own stats (check 5), then the server's count; asked again while a role has no live report.

    Asking recycles processes too: the stats tasks count towards max_tasks_per_child,
    the GET /pool requests towards max_requests. A role whose every reporter then
    exited is asked again (its replacements answer), at most `rounds` times.
    """
    plan = suite.plan
    for _ in range(rounds):
        web = web_pool_reports(suite.web.url, set(suite.web.children()))
        asgi = web_pool_reports(suite.asgi.url, set(suite.asgi.children())) if suite.asgi else None
        worker = worker_pool_reports(celery, plan.queue, plan.worker_concurrency)  # last: it recycles the most
        final = sampler.sample_now()  # after the reports: a process that answered and then recycled is gone now
        _let_recycled_exit({**web, **worker, **(asgi or {})}, final)
        if all(any(pid_alive(pid) for pid in reports) for reports in (web, worker, asgi) if reports is not None):
            break
    return web, worker, asgi, final


def _let_recycled_exit(reports: dict[int, dict], final: Sample, grace: float = 3.0) -> None:
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
