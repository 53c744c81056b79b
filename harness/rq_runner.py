"""The task tier under RQ (``forkpool loadtest --task-runner rq``): its workers, and a producer shaped like Celery's.

``RqWorkers`` starts one ``rq worker --worker-class forkpool.rq.Worker`` per
task slot (``--worker-concurrency``), each consuming the run's queues; every
job runs in a work-horse the worker forks for it, which opens its own pool and
closes it once the job is done (``forkpool.rq.Worker``). The workers hold no
connection to PostgreSQL (the harness's masters), the horses at most one pool
each: at rest the task tier holds none, under load at most slots x pool size.

``RqProducer`` gives the harness's enqueuer and its stats probe (harness/chaos.py)
the part of Celery's API they use, ``send_task(...).get(timeout)``, over RQ.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from rq.job import Job, JobStatus

from suite.rq_queue import enqueue, rq_connection

from ._procs import ServiceError
from .processes import SuitePlan, SuiteProcess, child_pids

POLL_S = 0.05


def rq_binary() -> Path:
    found = Path(sys.executable).with_name("rq")
    if not found.is_file():
        raise ServiceError(f"RQ is not installed ({found}): pip install 'forkpool[rq]'")
    return found


class RqWorker(SuiteProcess):
    """One ``rq worker``: a master that forks a work-horse per job."""

    name = "rq worker"

    def __init__(self, plan: SuitePlan, log_dir: Path, index: int) -> None:
        queues = list(dict.fromkeys((plan.queue, plan.host_queue)))
        argv = [
            str(rq_binary()),
            "worker",
            "--url",
            plan.redis_url,
            "--worker-class",
            "forkpool.rq.Worker",
            "--config",
            "workers.rq_settings",  # preloads the jobs' module: horses inherit it instead of importing it per job
            "--name",
            f"{plan.name}-{index}",
            *queues,
        ]
        super().__init__(argv, {**plan.env(0), "PROCESS_ROLE": "worker"}, log_dir / f"rq-{plan.name}-{index}.log")

    def ready(self) -> bool:
        return "Listening on" in self.log_text()


class RqWorkers(SuiteProcess):
    """`worker_concurrency` RQ workers, seen by the harness as one task tier: its children are the horses."""

    name = "rq workers"

    def __init__(self, plan: SuitePlan, log_dir: Path) -> None:
        self.workers = [RqWorker(plan, log_dir, i) for i in range(1, plan.worker_concurrency + 1)]
        self.concurrency = plan.worker_concurrency
        self.log_path = self.workers[0].log_path

    def start(self) -> RqWorkers:
        for worker in self.workers:
            worker.start()
        return self

    @property
    def pid(self) -> int:
        return self.workers[0].pid

    @property
    def master_pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    def is_running(self) -> bool:
        return all(worker.is_running() for worker in self.workers)

    def children(self) -> list[int]:
        """The work-horses alive right now (a worker between jobs has none)."""
        return sorted(pid for worker in self.workers if worker.is_running() for pid in child_pids(worker.pid))

    def log_text(self) -> str:
        return "".join(worker.log_text() for worker in self.workers)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.workers:
                if not worker.is_running():
                    raise worker._fail("exited during start-up")
            if all(worker.ready() for worker in self.workers):
                return
            time.sleep(POLL_S)
        raise self._fail(f"not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM each (a warm shutdown: a horse finishes its job), then SIGKILL what is left, all at once."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        codes = [worker.stop(timeout) for worker in self.workers]
        return max((c for c in codes if c is not None), default=None)


class RqResult:
    """The part of Celery's AsyncResult the harness uses: ``get(timeout)``."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def get(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status = self.job.get_status(refresh=True)
            if status == JobStatus.FINISHED:
                return self.job.return_value(refresh=True)
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                raise RuntimeError(f"job {self.job.id} {status}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job.id} still {status} after {timeout:.0f} s")
            time.sleep(POLL_S)


class RqProducer:
    """``send_task(name, kwargs=..., queue=...)`` over RQ, for harness/chaos.py's enqueuer and stats probe."""

    def __init__(self, redis_url: str) -> None:
        self.connection = rq_connection(redis_url)

    def send_task(
        self, name: str, kwargs: dict[str, Any] | None = None, queue: str | None = None, **_: Any
    ) -> RqResult:
        return RqResult(enqueue(name, kwargs or {}, queue=queue, connection=self.connection))
