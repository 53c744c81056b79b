"""RQ forks a work-horse per job (``os.fork()``) and ends it with ``os._exit()``: a real ``rq worker``, 30 jobs.

Each job uses ``forkpool.get_pool()`` in its horse: one session per horse (the
at-fork hook released what the horse inherited), none left after the run.
A horse leaves without ``atexit``, so with plain ``rq.Worker`` every one of
those sessions ends without libpq's goodbye (PostgreSQL logs it); with
``--worker-class forkpool.rq.Worker`` none does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness.services import EmbeddedPostgres
from tests.conftest import wait_for
from tests.runner_support import holders, logged_pg, without_goodbye  # noqa: F401 - logged_pg is a fixture

pytest.importorskip("rq", reason="the RQ tests need rq (the dev extra pins it)")
from redis import Redis
from rq import Queue

APPS = Path(__file__).with_name("runner_apps")
JOBS = 30


@pytest.mark.parametrize("worker_class", ["rq.Worker", "forkpool.rq.Worker"])
def test_thirty_jobs_thirty_horses_one_session_each(
    worker_class, logged_pg: EmbeddedPostgres, redis_url, suite_id, tmp_path
):
    name = f"{suite_id}-{uuid.uuid4().hex[:4]}"
    with Redis.from_url(redis_url) as redis:
        queue = Queue(name, connection=redis)
        jobs = [queue.enqueue("rq_jobs.backend") for _ in range(JOBS)]
        env = {**os.environ, "DATABASE_URL": logged_pg.url, "DB_POOL_SIZE": "1", "FORKPOOL_NAME": suite_id}
        log = tmp_path / "rq.log"
        with log.open("w") as out:
            done = subprocess.run(
                [
                    str(Path(sys.executable).with_name("rq")),
                    "worker",
                    "--burst",
                    "--url",
                    redis_url,
                    "--worker-class",
                    worker_class,
                    name,
                ],
                cwd=APPS,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        assert done.returncode == 0, log.read_text()[-3000:]
        answers = [job.return_value(refresh=True) for job in jobs]
        queue.delete(delete_jobs=True)
    assert all(answer is not None for answer in answers), log.read_text()[-3000:]
    horses = {pid for pid, _ in answers}
    backends = {backend for _, backend in answers}
    assert len(horses) == JOBS and len(backends) == JOBS  # a horse per job, a session per horse
    assert wait_for(lambda: holders(logged_pg, suite_id) == {}, timeout=10), holders(logged_pg, suite_id)
    abrupt = without_goodbye(logged_pg, backends)
    print(
        f"rq {worker_class}: {JOBS} jobs, {len(horses)} horses, {len(backends)} sessions, "
        f"{len(abrupt)} ended without a goodbye, none left"
    )
    if worker_class == "rq.Worker":
        assert set(abrupt) == backends  # why the worker class exists: os._exit() skips every exit hook
    else:
        assert abrupt == {}
