"""Silent-network scenarios: the server's port drops every packet for a while, under load.

Each runs inside a private network namespace (harness/netfault.py), because only dropped packets
trip the kernel's timers that the pool relies on; the harness watches the server over its unix
socket, which the silence does not reach.

The bound (the pool's defaults, forkpool/settings.py): a query on a silenced connection fails
after tcp_user_timeout (10 s); an idle one is closed by keepalives at ~11 s; a new connection
fails after connect_timeout (5 s). A request may meet one of each: at most ~15 s, inside
Gunicorn's 30 s worker timeout. The server ends a silenced session at ~11 s (its own keepalives
and tcp_user_timeout, faults.SERVER_NETWORK_SETTINGS).
"""

from __future__ import annotations

import threading
import time

import psycopg2

from .chaos import DirectEnqueuer, producer
from .faults import Bench, FaultResult, Prober, error_kinds, outcome_counts, recovery_time
from .model import Check
from .netfault import PacketDrop, run_isolated
from .suite_probe import wait_for_rows

BOUND_S = 15.0  # documented: the longest a caller should wait on a silent PostgreSQL
SESSION_BOUND_S = 11.0  # documented: how long the server keeps a silenced session
REDIS_BOUND_S = 11.0  # documented: one Redis call (5 s reply, one retry on a fresh connection)
HANG_GUARD_S = 25.0  # what the checks allow: generous, and still inside Gunicorn's 30 s
READERS = 3


def _tasks_check(number: int, keys_: list[str], rows: dict[str, int]) -> Check:
    missing = [k for k in keys_ if not rows.get(k)]
    twice = [k for k in keys_ if rows.get(k, 0) > 1]
    return Check(number, "every task accepted was done exactly once", bool(keys_) and not missing and not twice,
                 f"{len(keys_)} accepted, {len(keys_) - len(missing)} done, missing {missing[:5]}, twice {twice[:5]}")


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
            cur.execute("SELECT pid FROM pg_stat_activity WHERE left(application_name, %s) = %s",
                        (len(self.prefix), self.prefix))
            return {row[0] for row in cur.fetchall()}

    def start(self) -> "SessionWatch":
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

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()
        left = sorted(self.watched - set(self.ended))
        return {"sessions_at_start": len(self.watched), "ended": len(self.ended),
                "longest_s": max(self.ended.values(), default=None), "still_there": len(left)}


def _worker_timeouts(bench: Bench) -> int:
    assert bench.suite is not None
    return bench.suite.web.log_text().count("WORKER TIMEOUT")


def _pg_blackhole(silence: float = 20.0) -> FaultResult:
    result = FaultResult("blackhole")
    bench = Bench("blackhole", observe_by_socket=True)
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        clock = bench.sampler.now
        web_workers = set(suite.web.children())
        readers = [Prober(suite.web.url + "/items?limit=1", clock=clock, timeout=60).start() for _ in range(READERS)]
        tasks = DirectEnqueuer(producer(bench.plan.redis_url), bench.plan.queue, bench.plan.suite_id, 5).start()
        time.sleep(2)
        watch = SessionWatch(bench.observe_url, bench.plan.suite_id).start()
        drop = PacketDrop(bench.pg.port)
        down = clock()
        drop.on()
        time.sleep(silence)
        sessions = watch.stop()
        drop.off()
        back = clock()
        bench.wait_exact(back, 30)
        full = bench.sampler.latest()
        full_after = round(full.t - back, 2) if full is not None and bench.exact(full) else None
        time.sleep(3)
        tasks.stop()
        probes = [p for r in readers for p in r.stop()]
        waits = [d for r in readers for d in r.durations]
        failed_waits = [d for r in readers for d, p in zip(r.durations, r.results) if not p[1].startswith("2")]
        rows = wait_for_rows(bench.observe_url, tasks.keys, 90)
        kinds = error_kinds(probes)
        timeouts = _worker_timeouts(bench)
        replaced = len(set(suite.web.children()) ^ web_workers)
        result.figures = {
            "silence_s": round(back - down, 2), "requests": len(probes), "by_status": outcome_counts(probes),
            "errors_by_kind": kinds, "longest_request_s": round(max(waits), 2),
            "longest_failed_request_s": round(max(failed_waits), 2) if failed_waits else None,
            "recovery_s": _round(recovery_time(probes, back)), "pools_full_after_s": full_after,
            "server_sessions": sessions, "gunicorn_worker_timeouts": timeouts, "web_workers_replaced": replaced,
            "tasks": len(tasks.keys), "tasks_done": sum(1 for k in tasks.keys if rows.get(k)),
            "bound_s": BOUND_S, "session_bound_s": SESSION_BOUND_S,
        }
        failed_late = [p for p in probes if p[0] > back + 5 and not p[1].startswith("2")]
        result.checks = [
            Check(1, f"every request answered, none waited past {HANG_GUARD_S:.0f} s (bound {BOUND_S:.0f} s)",
                  max(waits) < HANG_GUARD_S and not kinds.get("error"), f"longest {max(waits):.2f} s; {kinds}"),
            Check(2, "failures are 503s, never a 500", not any(k.startswith("500") for k in kinds), f"{kinds}"),
            Check(3, "no web worker killed by Gunicorn's timeout", timeouts == 0 and replaced == 0,
                  f"{timeouts} WORKER TIMEOUT lines, {replaced} workers replaced"),
            Check(4, "every pool full again within seconds of the network's return", full_after is not None,
                  f"exact counts {full_after} s after"),
            Check(5, f"no silenced session outlived {HANG_GUARD_S:.0f} s on the server (bound {SESSION_BOUND_S:.0f} s)",
                  (sessions["longest_s"] or 0) < HANG_GUARD_S and (silence < HANG_GUARD_S or not sessions["still_there"]),
                  f"{sessions}"),
            Check(6, "requests succeed again once the network is back", not failed_late,
                  f"{len(failed_late)} failed more than 5 s after"),
            _tasks_check(7, tasks.keys, rows),
            *bench.settle_checks(back, 8),
        ]
    finally:
        bench.close()
    return result


def _redis_blackhole(silence: float = 20.0) -> FaultResult:
    # A task taken but not acknowledged while the broker was silent comes back after the
    # visibility timeout: 10 s here instead of an hour, so the run sees every task done.
    result = FaultResult("redis-blackhole")
    bench = Bench("redisbh", observe_by_socket=True, extra_env={"CELERY_VISIBILITY_TIMEOUT": "10"})
    try:
        suite = bench.start()
        bench.wait_exact(0, 30)
        clock = bench.sampler.now
        counter = iter(range(10**9))
        jobs = Prober(suite.web.url + "/jobs", "POST", clock=clock, timeout=60,
                      body=lambda: {"kind": "record_event", "args": {"key": f"{bench.plan.suite_id}:{next(counter)}"}})
        ready = Prober(suite.web.url + "/readyz", clock=clock, timeout=60)
        reads = Prober(suite.web.url + "/items?limit=1", clock=clock, timeout=60)
        for prober in (jobs, ready, reads):
            prober.start()
        time.sleep(2)
        drop = PacketDrop(bench.redis.port)
        down = clock()
        drop.on()
        time.sleep(silence)
        drop.off()
        back = clock()
        time.sleep(8)
        job_probes, ready_probes, read_probes = jobs.stop(), ready.stop(), reads.stop()
        accepted = [sent["args"]["key"] for (_, status, _), sent in zip(job_probes, jobs.sent) if status == "202"]
        rows = wait_for_rows(bench.observe_url, accepted, 90)
        longest = {"jobs": round(max(jobs.durations), 2), "readyz": round(max(ready.durations), 2),
                   "items": round(max(reads.durations), 2)}
        worker_log = suite.worker.log_text()
        timeouts = _worker_timeouts(bench)
        result.figures = {
            "silence_s": round(back - down, 2), "longest_request_s": longest,
            "jobs": outcome_counts(job_probes), "jobs_errors_by_kind": error_kinds(job_probes),
            "readyz": outcome_counts(ready_probes), "reads": outcome_counts(read_probes),
            "enqueue_recovery_s": _round(recovery_time(job_probes, back)),
            "accepted": len(accepted), "done": sum(1 for k in accepted if rows.get(k)),
            "worker_broker_reconnects": worker_log.count("Connection to broker lost"),
            "gunicorn_worker_timeouts": timeouts, "bound_s": REDIS_BOUND_S,
        }
        read_failures = [p for p in read_probes if not p[1].startswith("2")]
        result.checks = [
            Check(1, f"no request waited past {HANG_GUARD_S:.0f} s on the silent Redis",
                  max(longest.values()) < HANG_GUARD_S, f"longest {longest}"),
            Check(2, "enqueueing fails as a 503, never a 500 or a dropped connection",
                  not any(k.startswith(("500", "error")) for k in error_kinds(job_probes)), f"{error_kinds(job_probes)}"),
            Check(3, "reads that need no Redis keep being served", not read_failures,
                  f"{len(read_failures)} of {len(read_probes)} failed"),
            Check(4, "no web worker killed by Gunicorn's timeout", timeouts == 0, f"{timeouts} WORKER TIMEOUT lines"),
            Check(5, "enqueueing resumes after the network is back", recovery_time(job_probes, back) is not None,
                  f"202 again {_round(recovery_time(job_probes, back))} s after"),
            _tasks_check(6, accepted, rows),
            *bench.settle_checks(back, 7),
        ]
    finally:
        bench.close()
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


ISOLATED = {"blackhole": _pg_blackhole, "redis-blackhole": _redis_blackhole}


def blackhole(silence: float = 20.0) -> FaultResult:
    """PostgreSQL's port drops every packet for `silence` seconds under load, closing nothing."""
    return run_isolated("blackhole", silence=silence)


def redis_blackhole(silence: float = 20.0) -> FaultResult:
    """Redis's port (broker, results, the web's client) drops every packet for `silence` seconds."""
    return run_isolated("redis-blackhole", silence=silence)
