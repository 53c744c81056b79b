"""The suite's tasks through RQ (``TASK_RUNNER=rq``): enqueue by task name, read a job's state as Celery's would.

The same task names as Celery's (suite/queue.py) map to the job functions of
workers/rq_jobs.py, which ``rq worker --worker-class forkpool.rq.Worker`` runs
in a work-horse forked per job. The Redis connection is per process, like the
Celery producer: a forked child never reuses its parent's.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from forkpool.redis import redis_url

from .queue import TASK_AGGREGATE, TASK_HOLD, TASK_POOL_STATS, TASK_RECORD_EVENT, queue_name

CELERY, RQ = "celery", "rq"
TASK_RUNNERS = (CELERY, RQ)
RUNNER_ENV = "TASK_RUNNER"

RQ_JOBS = {
    TASK_RECORD_EVENT: "workers.rq_jobs.record_event",
    TASK_AGGREGATE: "workers.rq_jobs.aggregate",
    TASK_HOLD: "workers.rq_jobs.hold",
    TASK_POOL_STATS: "workers.rq_jobs.pool_stats",
}
# A job whose work-horse died (a SIGKILL, an OOM) or that raised is enqueued again at once, this many
# times: every job is idempotent (record_event writes its row once per key). No interval: a delayed
# retry needs RQ's scheduler process beside each worker.
RETRIES = 3
RESULT_TTL_S = 3600
# RQ's states as Celery names them, so GET /jobs/<id> answers alike under either runner.
_STATES = {
    JobStatus.QUEUED: "PENDING",
    JobStatus.DEFERRED: "PENDING",
    JobStatus.SCHEDULED: "PENDING",
    JobStatus.STARTED: "STARTED",
    JobStatus.FINISHED: "SUCCESS",
    JobStatus.FAILED: "FAILURE",
    JobStatus.STOPPED: "REVOKED",
    JobStatus.CANCELED: "REVOKED",
}

_connection: tuple[int, redis.Redis] | None = None
_lock = threading.Lock()


def task_runner() -> str:
    return os.environ.get(RUNNER_ENV) or CELERY


def rq_connection(url: str | None = None) -> redis.Redis:
    """This process's connection for RQ (`url`: another Redis than REDIS_URL, made afresh)."""
    global _connection
    if url is not None:
        return redis.Redis.from_url(url)
    pid = os.getpid()
    with _lock:
        # Invariant: one connection per process; a forked child never reuses its parent's.
        if _connection is None or _connection[0] != pid:
            _connection = (pid, redis.Redis.from_url(redis_url()))
        return _connection[1]


def enqueue(
    task: str, kwargs: dict[str, Any], job_id: str | None = None, queue: str | None = None, connection=None
) -> Job:
    """`task` (a suite task name) with `kwargs` on `queue` (default CELERY_QUEUE's), retried as RETRIES says."""
    return Queue(queue or queue_name(), connection=connection or rq_connection()).enqueue_call(
        RQ_JOBS[task],
        kwargs=kwargs,
        job_id=job_id,
        retry=Retry(max=RETRIES),
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,
    )


def job_state(job_id: str) -> dict[str, Any]:
    """{"state": ...} as Celery's AsyncResult would say it, with "result" or "error" once the job ended."""
    try:
        job = Job.fetch(job_id, connection=rq_connection())
    except Exception:  # noqa: BLE001 - rq raises NoSuchJobError (or a deserialisation error): not there yet
        return {"state": "PENDING"}
    status = job.get_status(refresh=False)
    found: dict[str, Any] = {"state": _STATES.get(status, "PENDING") if status else "PENDING"}
    if status == JobStatus.FINISHED:
        found["result"] = job.return_value()
    elif status == JobStatus.FAILED:
        result = job.latest_result()
        last = (result.exc_string or "").strip().splitlines()[-1:] if result else []
        found["error"] = last[0].split(":", 1)[0] if last else "JobFailed"
    return found
