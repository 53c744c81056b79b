"""Silent-network scenarios: the server's port drops every packet for a while, under load.

Each runs inside a private network namespace (harness/netfault.py), because only dropped packets
trip the kernel's timers that the pool relies on; the harness watches the server over its unix
socket, which the silence does not reach.

The bounds, derived below from the defaults they rest on (forkpool/settings.py,
forkpool/redis.py, faults.SERVER_NETWORK_SETTINGS); each check allows ALLOWANCE_S more:
- BOUND_S, a request on a silent PostgreSQL (16 s): its query, or the check of a connection that
  sat idle, goes unacknowledged and fails after tcp_user_timeout (10 s); the pool then opens a new
  connection, which gives up after connect_timeout (5 s); the kernel fires the timer late by up to
  KERNEL_SLACK_S (0.5-0.7 s measured here on a 10 s tcp_user_timeout). An idle connection the
  kernel has already ended (keepalives: ~11 s) fails its check at once and costs nothing. Inside
  Gunicorn's 30 s worker timeout. One reader per web worker: a third waits in Gunicorn's backlog
  behind a stuck worker, which is the worker's wait, not the pool's (the 15.5-15.7 s of the runs
  with three readers were 10.5 s there and a 5 s connect; had the idle check met a socket the
  kernel had not yet ended, ~26 s).
- SESSION_BOUND_S, a silenced session on the server (12 s): the server's keepalives probe after
  5 s idle, every 2 s, and end the connection at the first probe unanswered past its
  tcp_user_timeout (10 s): 11 s, plus KERNEL_SLACK_S. The silence lasts longer, so a session still
  there after it is one the server would keep until its own defaults (hours) run out.
- REDIS_BOUND_S, one Redis call of the web's client (11.4 s): the reply is awaited SOCKET_TIMEOUT
  (5 s); the one retry reconnects, and redis-py retries that connect once, CONNECT_TIMEOUT (3 s)
  each, 0.2 s of backoff before each retry. Socket timeouts are the process's own: no kernel slack.
  (A client idle past its 30 s health_check_interval first sends a PING with the same retries:
  ~17.8 s; the scenario's clients are never idle that long.) An enqueue is that call, then kombu's
  publish, which waits SOCKET_TIMEOUT and reconnects twice, CONNECT_TIMEOUT each (11 s: web/api.py's
  PUBLISH_RETRY, held to this bound by tests/test_web_app.py); a call that failed is the last: the
  request makes no further Redis call, so the two never add up.
- CELERY_LOSS_BOUND_S, from the silence's start to the Celery consumer logging the broker lost
  (11 s): its BRPOP asks the server to answer within BRPOP_TIMEOUT_S (1 s, kombu's default); kombu
  drops the connection once the reply is overdue by the broker's health_check_interval (5 s,
  workers/celeryconfig.py) and looks every health_check_interval: 1 + 2 x 5 s. The kernel's
  keepalives end the same socket at ~11 s too. This holds only with the worker's heartbeat off
  (`--without-heartbeat`): the heartbeat publishes inside the consumer's event loop with kombu's
  retry policy left open (`retry=True`, from celery#5066; the hang: kombu#1024, #902), so on a silent broker it reconnected in that loop for as
  long as the silence lasted (measured: the loss logged 0.8 s after a 20 s silence ended).
- celery_resume_bound_s(silence), from the network's return to the first task written after it
  (8.5 s for a silence of 14 or 20 s): a consumer that noticed the loss during the silence retries
  on kombu's schedule (2, 4, 6 ... s apart, each connect up to CONNECT_TIMEOUT 3 s), so its next
  attempt may come up to ~8 s after the return; the web enqueues again within ~2.5 s (a retransmission
  or its socket timeout, then a fresh connect); the task itself runs in milliseconds.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime

import psycopg2

from forkpool import redis as redis_client
from forkpool.settings import PoolSettings

from .chaos import DirectEnqueuer, producer
from .faults import SERVER_NETWORK_SETTINGS, Bench, FaultResult, Prober, error_kinds, outcome_counts, recovery_time
from .model import Check
from .netfault import PacketDrop, run_isolated
from .suite_probe import wait_for_rows


def keepalive_end_s(idle: float, interval: float, user_timeout: float) -> float:
    """When Linux ends a connection that went silent while idle, at the latest: the first keepalive
    probe that finds nothing received for tcp_user_timeout (the probe count is then ignored)."""
    return idle + math.ceil(max(user_timeout - idle, 0.0) / interval) * interval


KERNEL_SLACK_S = 1.0  # the retransmission timer fires past tcp_user_timeout: 0.46-0.68 s measured
ALLOWANCE_S = 1.0  # a check's margin over a bound: HTTP, Python, 0.2 s polls, a loaded 2-core machine
_POOL = PoolSettings()
BOUND_S = _POOL.tcp_user_timeout + _POOL.connect_timeout + KERNEL_SLACK_S
_SERVER = {k: float(v) for k, v in SERVER_NETWORK_SETTINGS.items()}
SESSION_BOUND_S = (
    max(
        keepalive_end_s(
            _SERVER["tcp_keepalives_idle"], _SERVER["tcp_keepalives_interval"], _SERVER["tcp_user_timeout"] / 1000
        ),
        _SERVER["tcp_user_timeout"] / 1000,
    )
    + KERNEL_SLACK_S
)
REDIS_BACKOFF_S = 0.2  # redis_client's ExponentialBackoff(base=0.1, cap=0.5) after one failure
REDIS_BOUND_S = round(redis_client.SOCKET_TIMEOUT + 2 * (REDIS_BACKOFF_S + redis_client.CONNECT_TIMEOUT), 2)
ENQUEUE_RESUME_S = 2.5  # the web's client after the return: <= 2 s to a retransmission or timeout, then a connect
BRPOP_TIMEOUT_S = 1.0  # kombu's redis Transport.brpop_timeout
BROKER_HEALTH_CHECK_S = 5.0  # workers/celeryconfig.py's health_check_interval (tests/test_faults.py holds them equal)
CELERY_LOSS_BOUND_S = BRPOP_TIMEOUT_S + 2 * BROKER_HEALTH_CHECK_S


def kombu_reconnect_worst_s(
    silence: float,
    connect: float = redis_client.CONNECT_TIMEOUT,
    start: float = 2.0,
    step: float = 2.0,
    cap: float = 30.0,
) -> float:
    """The latest, after a `silence` ends, that a consumer which lost the broker at any moment of it
    connects again: kombu's ensure_connection tries at once, then sleeps start, start + step, ...
    (its defaults); a connect started during the silence succeeds only if a SYN goes out after it
    ends (Linux retransmits the SYN 1 s after the first, and the next lands on the 3 s timeout)."""
    worst = 0.0
    for step_ms in range(0, int(silence * 1000) + 1, 10):
        at, tries = step_ms / 1000, 0
        while at < silence - 1.0:
            at += connect + min(start + step * tries, cap)
            tries += 1
        worst = max(worst, (at + 1.0 if at < silence else at) - silence)
    return round(worst, 1)


def celery_resume_bound_s(silence: float) -> float:
    """From the network's return to the first task accepted after it and written (module docstring)."""
    return max(kombu_reconnect_worst_s(silence), ENQUEUE_RESUME_S) + 0.5


def _tasks_check(number: int, keys_: list[str], rows: dict[str, int]) -> Check:
    missing = [k for k in keys_ if not rows.get(k)]
    twice = [k for k in keys_ if rows.get(k, 0) > 1]
    return Check(
        number,
        "every task accepted was done exactly once",
        bool(keys_) and not missing and not twice,
        f"{len(keys_)} accepted, {len(keys_) - len(missing)} done, missing {missing[:5]}, twice {twice[:5]}",
    )


class SessionWatch:
    """When each of the suite's server sessions present at `start()` disappeared (seconds after)."""

    def __init__(self, socket_url: str, suite_id: str) -> None:
        self.url, self.prefix = socket_url, f"{suite_id}:"
        self.ended: dict[int, float] = {}
        self.watched: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-session-watch", daemon=True)

    def _pids(self, conn) -> set[int]:  # type: ignore[no-untyped-def]
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE left(application_name, %s) = %s",
                (len(self.prefix), self.prefix),
            )
            return {row[0] for row in cur.fetchall()}

    def start(self) -> SessionWatch:
        self._conn = psycopg2.connect(self.url, application_name="forkpool-session-watch")
        self._conn.autocommit = True
        self.watched = self._pids(self._conn)
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            alive = self._pids(self._conn)
            for pid in self.watched - alive - set(self.ended):
                self.ended[pid] = round(time.monotonic() - self._t0, 2)

    def finish(self, deadline_s: float) -> dict:
        """Watch on until every session seen at start has ended, or `deadline_s` after start."""
        while set(self.watched) - set(self.ended) and time.monotonic() - self._t0 < deadline_s:
            time.sleep(0.2)
        self._stop.set()
        self._thread.join(5)
        self._conn.close()
        left = sorted(self.watched - set(self.ended))
        return {
            "sessions_at_start": len(self.watched),
            "ended": len(self.ended),
            "longest_s": max(self.ended.values(), default=None),
            "still_there": len(left),
            "watched_for_s": round(time.monotonic() - self._t0, 2),
        }


def _worker_timeouts(bench: Bench) -> int:
    assert bench.suite is not None
    return bench.suite.web.log_text().count("WORKER TIMEOUT")


def _pg_blackhole(silence: float = 20.0) -> FaultResult:
    if silence <= SESSION_BOUND_S + ALLOWANCE_S:  # shorter, a silenced session may rightly outlive it
        raise ValueError(
            f"a blackhole must last longer than {SESSION_BOUND_S + ALLOWANCE_S:.0f} s to measure the server's bound"
        )
    result = FaultResult("blackhole")
    bench = Bench("blackhole", observe_by_socket=True)
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        clock = bench.sampler.now
        web_workers = set(suite.web.children())
        readers = [
            Prober(suite.web.url + "/items?limit=1", clock=clock, timeout=60).start()
            for _ in range(bench.plan.web_workers)
        ]  # one each: no request waits in Gunicorn's backlog
        tasks = DirectEnqueuer(producer(bench.plan.redis_url), bench.plan.queue, bench.plan.suite_id, 5).start()
        time.sleep(2)
        watch = SessionWatch(bench.observe_url, bench.plan.suite_id).start()
        drop = PacketDrop(bench.pg.port)
        down = clock()
        drop.on()
        time.sleep(silence)
        drop.off()
        back = clock()
        bench.wait_exact(back, 30)
        full = bench.sampler.latest()
        full_after = round(full.t - back, 2) if full is not None and bench.exact(full) else None
        time.sleep(3)
        # The watch began with the silence: a session it saw then that outlives the session bound
        # (by a margin that lets the last poll land) is one the server kept past its own timers.
        sessions = watch.finish(SESSION_BOUND_S + ALLOWANCE_S + 3)
        tasks.stop()
        probes = [p for r in readers for p in r.stop()]
        waits = [d for r in readers for d in r.durations]
        failed_waits = [
            d for r in readers for d, p in zip(r.durations, r.results, strict=False) if not p[1].startswith("2")
        ]
        rows = wait_for_rows(bench.observe_url, tasks.keys, 90)
        kinds = error_kinds(probes)
        timeouts = _worker_timeouts(bench)
        replaced = len(set(suite.web.children()) ^ web_workers)
        result.figures = {
            "silence_s": round(back - down, 2),
            "requests": len(probes),
            "by_status": outcome_counts(probes),
            "errors_by_kind": kinds,
            "longest_request_s": round(max(waits), 2),
            "longest_failed_request_s": round(max(failed_waits), 2) if failed_waits else None,
            "recovery_s": _round(recovery_time(probes, back)),
            "pools_full_after_s": full_after,
            "server_sessions": sessions,
            "gunicorn_worker_timeouts": timeouts,
            "web_workers_replaced": replaced,
            "tasks": len(tasks.keys),
            "tasks_done": sum(1 for k in tasks.keys if rows.get(k)),
            "readers": len(readers),
            "bound_s": BOUND_S,
            "session_bound_s": SESSION_BOUND_S,
            "allowance_s": ALLOWANCE_S,
        }
        failed_late = [p for p in probes if p[0] > back + 5 and not p[1].startswith("2")]
        longest_session = sessions["longest_s"] or 0.0
        result.checks = [
            Check(
                1,
                f"every request answered within the bound ({BOUND_S:.0f} s, checked at {BOUND_S + ALLOWANCE_S:.0f})",
                max(waits) <= BOUND_S + ALLOWANCE_S and not kinds.get("error"),
                f"longest {max(waits):.2f} s; {kinds}",
                behaved=not kinds.get("error") and max(waits) < back - down,  # answered, none hung the silence out
            ),
            Check(2, "failures are 503s, never a 500", not any(k.startswith("500") for k in kinds), f"{kinds}"),
            Check(
                3,
                "no web worker killed by Gunicorn's timeout",
                timeouts == 0 and replaced == 0,
                f"{timeouts} WORKER TIMEOUT lines, {replaced} workers replaced",
            ),
            Check(
                4,
                "every pool full again within seconds of the network's return",
                full_after is not None,
                f"exact counts {full_after} s after",
            ),
            Check(
                5,
                f"every silenced session ended on the server within the bound ({SESSION_BOUND_S:.0f} s, "
                f"checked at {SESSION_BOUND_S + ALLOWANCE_S:.0f})",
                bool(sessions["sessions_at_start"])
                and not sessions["still_there"]
                and longest_session <= SESSION_BOUND_S + ALLOWANCE_S,
                f"{sessions}",
                behaved=bool(sessions["sessions_at_start"]) and not sessions["still_there"],
            ),
            Check(
                6,
                "requests succeed again once the network is back",
                not failed_late,
                f"{len(failed_late)} failed more than 5 s after",
            ),
            _tasks_check(7, tasks.keys, rows),
            *bench.settle_checks(back, 8),
        ]
    finally:
        bench.close()
    return result


def _redis_blackhole(silence: float = 20.0) -> FaultResult:
    if silence <= CELERY_LOSS_BOUND_S + ALLOWANCE_S:  # shorter, the consumer may rightly notice only after
        raise ValueError(
            f"a Redis blackhole must last longer than {CELERY_LOSS_BOUND_S + ALLOWANCE_S:.0f} s "
            "to measure the consumer's bound"
        )
    # A task taken but not acknowledged while the broker was silent comes back after the
    # visibility timeout: 10 s here instead of an hour, so the run sees every task done.
    result = FaultResult("redis-blackhole")
    resume_bound = celery_resume_bound_s(silence)
    bench = Bench("redisbh", observe_by_socket=True, extra_env={"CELERY_VISIBILITY_TIMEOUT": "10"})
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        clock = bench.sampler.now
        counter = iter(range(10**9))
        jobs = Prober(
            suite.web.url + "/jobs",
            "POST",
            clock=clock,
            timeout=60,
            body=lambda: {"kind": "record_event", "args": {"key": f"{bench.plan.suite_id}:{next(counter)}"}},
        )
        ready = Prober(suite.web.url + "/readyz", clock=clock, timeout=60)
        reads = Prober(suite.web.url + "/items?limit=1", clock=clock, timeout=60)
        for prober in (jobs, ready, reads):
            prober.start()
        time.sleep(2)
        drop = PacketDrop(bench.redis.port)
        down, down_wall = clock(), time.time()
        drop.on()
        time.sleep(silence)
        drop.off()
        back, back_wall = clock(), time.time()
        time.sleep(8)
        job_probes, ready_probes, read_probes = jobs.stop(), ready.stop(), reads.stop()
        accepted = [
            sent["args"]["key"] for (_, status, _), sent in zip(job_probes, jobs.sent, strict=False) if status == "202"
        ]
        rows = wait_for_rows(bench.observe_url, accepted, 90)
        resumed = _first_row_after(bench.observe_url, accepted, back_wall)
        longest = {
            "jobs": round(max(jobs.durations), 2),
            "readyz": round(max(ready.durations), 2),
            "items": round(max(reads.durations), 2),
        }
        worker_log = suite.worker.log_text()
        lost = _logged_after(worker_log, "Connection to broker lost", down_wall)
        timeouts = _worker_timeouts(bench)
        result.figures = {
            "silence_s": round(back - down, 2),
            "longest_request_s": longest,
            "jobs": outcome_counts(job_probes),
            "jobs_errors_by_kind": error_kinds(job_probes),
            "readyz": outcome_counts(ready_probes),
            "reads": outcome_counts(read_probes),
            "enqueue_recovery_s": _round(recovery_time(job_probes, back)),
            "accepted": len(accepted),
            "done": sum(1 for k in accepted if rows.get(k)),
            "worker_broker_reconnects": worker_log.count("Connection to broker lost"),
            "celery_loss_logged_s": lost,
            "celery_resumed_after_s": resumed,
            "celery_stuck_s": None if resumed is None else round(back_wall - down_wall + resumed, 2),
            "gunicorn_worker_timeouts": timeouts,
            "bound_s": REDIS_BOUND_S,
            "allowance_s": ALLOWANCE_S,
            "celery_resume_bound_s": resume_bound,
            "celery_loss_bound_s": CELERY_LOSS_BOUND_S,
        }
        read_failures = [p for p in read_probes if not p[1].startswith("2")]
        result.checks = [
            Check(
                1,
                f"no request waited past the bound ({REDIS_BOUND_S:.1f} s, checked at "
                f"{REDIS_BOUND_S + ALLOWANCE_S:.1f}) on the silent Redis",
                max(longest.values()) <= REDIS_BOUND_S + ALLOWANCE_S,
                f"longest {longest}",
                behaved=max(longest.values()) < back - down,  # every request gave up before the silence ended
            ),
            Check(
                2,
                "enqueueing fails as a 503, never a 500 or a dropped connection",
                not any(k.startswith(("500", "error")) for k in error_kinds(job_probes)),
                f"{error_kinds(job_probes)}",
            ),
            Check(
                3,
                "reads that need no Redis keep being served",
                not read_failures,
                f"{len(read_failures)} of {len(read_probes)} failed",
            ),
            Check(4, "no web worker killed by Gunicorn's timeout", timeouts == 0, f"{timeouts} WORKER TIMEOUT lines"),
            Check(
                5,
                "enqueueing resumes after the network is back",
                recovery_time(job_probes, back) is not None,
                f"202 again {_round(recovery_time(job_probes, back))} s after",
            ),
            _tasks_check(6, accepted, rows),
            Check(
                7,
                f"the Celery consumer notices the silent broker within {CELERY_LOSS_BOUND_S:.0f} s, during the "
                f"silence (checked at {CELERY_LOSS_BOUND_S + ALLOWANCE_S:.0f})",
                lost is not None and lost <= min(CELERY_LOSS_BOUND_S + ALLOWANCE_S, back_wall - down_wall),
                f"'Connection to broker lost' logged {lost} s after the silence began (it lasted "
                f"{back_wall - down_wall:.1f} s)",
                behaved=lost is not None and lost <= back_wall - down_wall,  # noticed during the silence
            ),
            Check(
                8,
                f"the task processes consume again within {resume_bound:.1f} s of the network's return "
                f"(checked at {resume_bound + ALLOWANCE_S:.1f})",
                resumed is not None and resumed <= resume_bound + ALLOWANCE_S,
                f"first task written {resumed} s after; {result.figures['worker_broker_reconnects']} broker "
                f"reconnect(s) logged, the loss {lost} s after the silence began",
                behaved=resumed is not None,
            ),
            *bench.settle_checks(back, 9),
        ]
    finally:
        bench.close()
    return result


def _first_row_after(url: str, keys: list[str], wall: float) -> float | None:
    """Seconds from `wall` (this machine's clock, the server's too) to the first of `keys` written after it."""
    if not keys:
        return None
    conn = psycopg2.connect(url, application_name="forkpool-harness-check")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM min(created_at)) FROM events"
                " WHERE key = ANY(%s) AND created_at >= to_timestamp(%s)",
                (keys, wall),
            )
            first = cur.fetchone()[0]
    finally:
        conn.close()
    return None if first is None else round(float(first) - wall, 2)


def _logged_after(log: str, needle: str, wall: float) -> float | None:
    """Seconds from `wall` to the first line after it that holds `needle` (the suite logs local time, ms)."""
    for line in log.splitlines():
        if needle in line:
            try:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if at >= wall:
                return round(at - wall, 2)
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


ISOLATED = {"blackhole": _pg_blackhole, "redis-blackhole": _redis_blackhole}


def blackhole(silence: float = 20.0) -> FaultResult:
    """PostgreSQL's port drops every packet for `silence` seconds under load, closing nothing."""
    return run_isolated("blackhole", silence=silence)


def redis_blackhole(silence: float = 20.0) -> FaultResult:
    """Redis's port (broker, results, the web's client) drops every packet for `silence` seconds."""
    return run_isolated("redis-blackhole", silence=silence)
