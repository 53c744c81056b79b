"""The scenarios behind `forkpool fault NAME`; figures are measured, never assumed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg2

from forkpool import ConnectError, Pool, PoolTimeout
from forkpool import stats as keys
from forkpool.budget import Budget, DeploymentPlan, ServerLimits
from forkpool.settings import build_settings
from suite.queue import TASK_HOLD

from .chaos import DirectEnqueuer, producer
from .failover import failover
from .faults import Bench, FaultResult, Prober, outcome_counts, recovery_time
from .model import Check
from .net_scenarios import blackhole, redis_blackhole
from .proxy_scenarios import latency, reset_mid_query
from .services import EmbeddedPostgres
from .storm import reconnect_storm
from .suite_probe import wait_for_rows

DRAIN_S = 60.0
HELD_S = 4  # longer than the outage: the task is still running when Redis comes back


def _tasks_check(number: int, keys_: list[str], rows: dict[str, int]) -> Check:
    missing = [k for k in keys_ if not rows.get(k)]
    return Check(
        number,
        "every task accepted was done exactly once",
        bool(keys_) and not missing,
        f"{len(keys_)} accepted, {len(keys_) - len(missing)} rows, missing {missing[:5]}",
    )


def pg_restart(outage: float = 2.0) -> FaultResult:
    """PostgreSQL stops (fast shutdown) and starts again on the same port, under load."""
    result, bench = FaultResult("pg-restart"), Bench("pgrestart")
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        clock = bench.sampler.now
        reads = Prober(suite.web.url + "/items?limit=1", clock=clock).start()
        tasks = DirectEnqueuer(producer(bench.plan.redis_url), bench.plan.queue, bench.plan.suite_id, 5).start()
        time.sleep(2)
        down = clock()
        bench.pg.stop("fast")
        time.sleep(outage)
        bench.pg.start_server()
        back = clock()
        time.sleep(5)
        tasks.stop()
        probes = reads.stop()
        rows = wait_for_rows(bench.pg.url, tasks.keys, DRAIN_S)
        counts = outcome_counts(probes)
        late = [p for p in probes if p[0] >= back and not p[1].startswith("2")]
        result.figures = {
            "outage_s": round(back - down, 2),
            "recovery_s": _round(recovery_time(probes, back)),
            "requests": len(probes),
            "by_status": counts,
            "failed_after_server_back": len(late),
            "tasks": len(tasks.keys),
            "tasks_done": sum(1 for k in tasks.keys if rows.get(k)),
        }
        result.checks = [
            Check(
                1,
                "during the outage: 503 with Retry-After, never a 500",
                not counts.get("500") and not counts.get("error"),
                f"{counts}",
            ),
            Check(2, "requests after the server is back succeed", not late, f"{len(late)} failed after it was back"),
            _tasks_check(3, tasks.keys, rows),
            *bench.settle_checks(back, 4),
        ]
    finally:
        bench.close()
    return result


def pg_down_at_start(outage: float = 6.0) -> FaultResult:
    """PostgreSQL is down when the suite starts: it starts anyway and works once the server is up."""
    result, bench = FaultResult("pg-down-at-start"), Bench("pgdown")
    try:
        bench.pg.stop("fast")
        started = time.monotonic()
        suite = bench.start()  # must not hang or crash-loop
        start_s = time.monotonic() - started
        workers = set(suite.worker.children())
        web_workers = set(suite.web.children())
        readyz = Prober(suite.web.url + "/readyz", clock=bench.sampler.now).start()
        producer_app = producer(bench.plan.redis_url)
        key = f"{bench.plan.suite_id}:down"
        producer_app.send_task("workers.record_event", kwargs={"key": key}, queue=bench.plan.queue)
        time.sleep(outage)
        respawns = len(set(suite.worker.children()) ^ workers) + len(set(suite.web.children()) ^ web_workers)
        restarting = bench.sampler.now()
        bench.pg.start_server()
        back = bench.sampler.now()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (readyz.results and readyz.results[-1][1] == "200"):
            time.sleep(0.1)
        time.sleep(0.5)
        probes = readyz.stop()
        while_down = [p for p in probes if p[0] < restarting]
        rows = wait_for_rows(bench.pg.url, [key], DRAIN_S)
        result.figures = {
            "start_s": round(start_s, 2),
            "respawns_while_down": respawns,
            "ready_after_s": _round(recovery_time(probes, back)),
            "readyz_while_down": outcome_counts(while_down),
        }
        result.checks = [
            Check(
                1,
                "web and workers start while the database is down, no respawns",
                respawns == 0,
                f"started in {start_s:.1f} s; {respawns} processes replaced while down",
            ),
            Check(
                2,
                "/readyz says 503 while down",
                bool(while_down) and all(p[1] == "503" for p in while_down),
                f"{outcome_counts(while_down)}",
            ),
            Check(
                3,
                "ready again without a restart once the server is up",
                recovery_time(probes, back) is not None,
                f"ready {_round(recovery_time(probes, back))} s after the server came back",
            ),
            _tasks_check(4, [key], rows),
            *bench.settle_checks(back, 5),
        ]
    finally:
        bench.close()
    return result


def out_of_slots(hold_s: float = 4.0) -> FaultResult:
    """Other clients take every connection slot: the pool backs off with a clear line, then fills."""
    result = FaultResult("out-of-slots")
    lines: list[str] = []
    handler = _Capture(lines)
    logging.getLogger("forkpool.pool").addHandler(handler)
    with EmbeddedPostgres(max_connections=8) as pg:
        hogs = [psycopg2.connect(pg.url, application_name="hog") for _ in range(8)]
        pool = Pool(build_settings(dsn=pg.url, min_size=2, max_size=2, connect_timeout=2, timeout=1), "slots")
        try:
            pool.open()
            time.sleep(hold_s)
            attempts = pool.stats()[keys.CONNECT_ERRORS]
            started = time.monotonic()
            for hog in hogs:
                hog.close()
            filled = pool.wait(15)
            refill_s = time.monotonic() - started
        finally:
            pool.close()
            logging.getLogger("forkpool.pool").removeHandler(handler)
    budget = Budget(DeploymentPlan(1, 1, 0, 2, other_clients=8), ServerLimits(8, 3, 0))
    clear = [line for line in lines if "too many clients" in line and "retrying in" in line]
    result.figures = {
        "held_s": hold_s,
        "connect_attempts": attempts,
        "refill_s": round(refill_s, 2),
        "budget": budget.explain()[-1],
    }
    result.checks = [
        Check(
            1,
            "backs off instead of a tight loop",
            1 <= attempts <= 8,
            f"{attempts} attempts in {hold_s:.0f} s (exponential backoff from 0.25 s)",
        ),
        Check(2, "a clear log line per attempt", bool(clear), clear[0][:160] if clear else "no line"),
        Check(3, "fills once slots are free", filled, f"full {refill_s:.2f} s after the slots were freed"),
        Check(4, "the budget check would have flagged the plan", not budget.fits, budget.explain()[-1]),
    ]
    return result


def redis_restart(outage: float = 2.0) -> FaultResult:
    """Redis (broker, results, the web's client) restarts: reads go on, no accepted task is lost."""
    # A task taken but not acknowledged when Redis went away comes back after the visibility
    # timeout: 10 s here instead of the default hour, so the run can see every task done.
    result = FaultResult("redis-restart")
    bench = Bench("redis", persistent_redis=True, extra_env={"CELERY_VISIBILITY_TIMEOUT": "10"})
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        clock = bench.sampler.now
        counter = iter(range(10**9))
        jobs = Prober(
            suite.web.url + "/jobs",
            "POST",
            clock=clock,
            body=lambda: {"kind": "record_event", "args": {"key": f"{bench.plan.suite_id}:{next(counter)}"}},
        )
        reads = Prober(suite.web.url + "/items?limit=1", clock=clock).start()
        jobs.start()
        time.sleep(2)
        # Nothing is enqueued at the instant Redis stops, and what was is done: kombu's Redis transport
        # pops a message (BRPOP) before recording it as unacknowledged, so one popped as Redis goes
        # down is lost whatever the client does (kombu#305, open; kombu#1733 narrowed it for a worker's
        # own shutdown; a revert, kombu#2154, was closed unmerged). That window is the broker's, not the pools'.
        jobs.pause()
        before = [
            sent["args"]["key"]
            for (_, status, _), sent in zip(jobs.results, jobs.sent, strict=False)
            if status == "202"
        ]
        wait_for_rows(bench.pg.url, before, 30)
        # A late-acknowledged task running while the broker goes away: its message is unacked and
        # the consumer is waiting on BRPOP, the state in which Celery 5.7 stopped for good
        # (suite/celery_consumer.py). It must be done, and the worker must go on consuming. Sent last,
        # so that it is still running when Redis stops (check 5 reads its state then).
        held = producer(bench.plan.redis_url).send_task(TASK_HOLD, kwargs={"seconds": HELD_S}, queue=bench.plan.queue)
        started_by = time.monotonic() + 30  # task_track_started: bounded, not a nap
        while held.state == "PENDING" and time.monotonic() < started_by:
            time.sleep(0.05)
        held_at_stop = held.state
        down = clock()
        bench.redis.stop("fast")
        jobs.resume()  # enqueueing while Redis is down: 503s
        time.sleep(outage)
        bench.redis.start_server()
        back = clock()
        time.sleep(6)
        job_probes, read_probes = jobs.stop(), reads.stop()
        accepted = [
            sent["args"]["key"] for (t, status, _), sent in zip(job_probes, jobs.sent, strict=False) if status == "202"
        ]
        rows = wait_for_rows(bench.pg.url, accepted, 60)
        reads_failed = [p for p in read_probes if not p[1].startswith("2")]
        job_counts = outcome_counts(job_probes)
        held_state = _final_state(held, 30)
        result.figures = {
            "outage_s": round(back - down, 2),
            "reads": outcome_counts(read_probes),
            "task_in_flight": {"when_redis_stopped": held_at_stop, "after": held_state},
            "jobs": job_counts,
            "enqueue_recovery_s": _round(recovery_time(job_probes, back)),
            "accepted": len(accepted),
            "done": sum(1 for k in accepted if rows.get(k)),
        }
        result.checks = [
            Check(
                1,
                "reads keep being served while Redis is down",
                not reads_failed,
                f"{len(reads_failed)} of {len(read_probes)} reads failed",
            ),
            Check(2, "enqueueing during the outage is a 503, never a 500", not job_counts.get("500"), f"{job_counts}"),
            Check(
                3,
                "enqueueing resumes after Redis is back",
                recovery_time(job_probes, back) is not None,
                f"202 again {_round(recovery_time(job_probes, back))} s after",
            ),
            _tasks_check(4, accepted, rows),
            Check(
                5,
                "a task running when Redis went away is done once Redis is back",
                held_at_stop == "STARTED" and held_state == "SUCCESS",
                f"{TASK_HOLD} ({HELD_S} s, late ack): {held_at_stop} when Redis stopped, {held_state} after",
            ),
            *bench.settle_checks(back, 6),
        ]
    finally:
        bench.close()
    return result


def slow_queries(statement_timeout_ms: int = 500) -> FaultResult:
    """Queries that outlive statement_timeout, and callers starving for a pool that is busy."""
    result = FaultResult("slow-queries")
    options = f"options=-c%20statement_timeout%3D{statement_timeout_ms}"
    bench = Bench("slow")
    try:
        url = f"{bench.pg.url}?{options}"
        bench.plan = bench.plan.__class__(**{**bench.plan.__dict__, "database_url": url})
        bench.start()
        bench.wait_exact(0, 30)
        app = producer(bench.plan.redis_url)
        started = time.monotonic()
        holds = [app.send_task("workers.hold", kwargs={"seconds": 5}, queue=bench.plan.queue) for _ in range(6)]
        states = [_final_state(r, 60) for r in holds]
        holds_s = time.monotonic() - started
        starving = _starve(url)
        back = bench.sampler.now()
        result.figures = {
            "statement_timeout_ms": statement_timeout_ms,
            "hold_tasks": states,
            "hold_tasks_done_s": round(holds_s, 2),
            **starving,
        }
        result.checks = [
            Check(
                1,
                "slow queries end at statement_timeout, not retried for ever",
                all(s == "FAILURE" for s in states) and holds_s < 30,
                f"{states} in {holds_s:.1f} s",
            ),
            Check(
                2,
                "starving callers get PoolTimeout in bounded time, nothing hangs",
                starving["timeouts"] > 0
                and starving["max_wait_s"] < starving["timeout_s"] + 1.0
                and starving["hung"] == 0,
                f"{starving}",
            ),
            Check(
                3,
                "the pool is whole again after the load",
                starving["size_after"] == 2 and starving["in_use_after"] == 0,
                f"{starving}",
            ),
            *bench.settle_checks(back, 4),
        ]
    finally:
        bench.close()
    return result


def _starve(url: str, callers: int = 8, timeout: float = 0.3) -> dict:
    """8 threads on a pool of 2, each running a query the server cancels: who times out, how fast."""
    pool = Pool(build_settings(dsn=url, min_size=2, max_size=2, timeout=timeout), "starved")
    pool.open(wait=True, timeout=5)
    waits: list[float] = []
    outcomes: list[str] = []

    def caller() -> None:
        began = time.monotonic()
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                waits.append(time.monotonic() - began)
                cur.execute("SELECT pg_sleep(2)")
            outcomes.append("ran")
        except PoolTimeout:
            waits.append(time.monotonic() - began)
            outcomes.append("timeout")
        except (psycopg2.Error, ConnectError):
            outcomes.append("cancelled")

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    after = pool.stats()
    pool.close()
    return {
        "callers": callers,
        "timeout_s": timeout,
        "timeouts": outcomes.count("timeout"),
        "cancelled": outcomes.count("cancelled"),
        "max_wait_s": round(max(waits, default=0), 3),
        "hung": sum(t.is_alive() for t in threads),
        "size_after": after[keys.SIZE],
        "in_use_after": after[keys.IN_USE],
    }


def _final_state(result, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.state in ("SUCCESS", "FAILURE"):
            return result.state
        time.sleep(0.1)
    return result.state


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


SCENARIOS: dict[str, Callable[..., FaultResult]] = {
    "pg-restart": pg_restart,
    "pg-down-at-start": pg_down_at_start,
    "out-of-slots": out_of_slots,
    "redis-restart": redis_restart,
    "slow-queries": slow_queries,
    # A bad network (harness/net_scenarios.py, proxy_scenarios.py, storm.py): full length here;
    # tests/test_faults.py runs them shortened (SHORT below).
    "blackhole": blackhole,
    "latency": latency,
    "reset-mid-query": reset_mid_query,
    "reconnect-storm": reconnect_storm,
    "redis-blackhole": redis_blackhole,
    # A primary and a synchronous standby; the standby promoted, the old primary read-only, then stopped.
    "failover": failover,
}

# CI's versions: each well under a minute on 2 cores. A silence must still outlast the bound it
# tests (~11 s), so the blackholes are 14 s, not 20.
SHORT: dict[str, dict[str, float]] = {
    "blackhole": {"silence": 14.0},
    "redis-blackhole": {"silence": 14.0},
    "latency": {"duration": 6.0},
    "reconnect-storm": {"outage": 5.0},
}
