"""`forkpool up`: the suite in the foreground until Ctrl-C or SIGTERM, then nothing left running."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path

from forkpool.settings import env_bool, env_int
from suite.schema import init_schema_at

from .pgbouncer import BouncerSettings, EmbeddedPgBouncer, prepares_itself
from .processes import SuitePlan, start_suite
from .services import redact_url, services
from .stats_view import clear_state, write_state


def run_foreground(
    port: int, web_workers: int, web_threads: int, worker_concurrency: int, pool_size: int, pgbouncer: bool = False
) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ceiling = (web_workers + worker_concurrency) * pool_size
    with services(max_connections=max(100, ceiling * 2)) as running, ExitStack() as stack:  # PgBouncer stops first
        assert running.redis_url is not None
        init_schema_at(running.database_url)
        suite_url, env, bouncer = running.database_url, {}, None
        if pgbouncer:
            bouncer = stack.enter_context(
                EmbeddedPgBouncer(running.database_url, BouncerSettings(max_client_conn=max(200, 2 * ceiling)))
            )
            suite_url = bouncer.url
            env = {"DB_BUDGET_MAX_CLIENT_CONN": str(bouncer.settings.max_client_conn)}
            if not prepares_itself(bouncer.version):
                env["DB_POOL_PREPARE"] = "off"
        plan = SuitePlan(
            database_url=suite_url,
            redis_url=running.redis_url,
            extra_env=env,
            suite_id=os.environ.get("FORKPOOL_NAME") or f"up{uuid.uuid4().hex[:6]}",
            web_workers=web_workers,
            web_threads=web_threads,
            worker_concurrency=worker_concurrency,
            pool_size=pool_size,
            port=port,
            max_requests=env_int("WEB_MAX_REQUESTS", 0),
            max_tasks_per_child=env_int("WORKER_MAX_TASKS_PER_CHILD", 0),
            preload=env_bool("WEB_PRELOAD", False),
        )
        logs = Path(tempfile.mkdtemp(prefix=f"forkpool-up-{plan.suite_id}-"))
        suite = start_suite(plan, logs)
        # `forkpool stats` counts the suite's connections where they end: PgBouncer's clients, when it stands between.
        write_state(
            web_url=suite.web.url,
            database_url=bouncer.admin_url if bouncer else running.database_url,
            suite_id=plan.suite_id,
        )
        try:
            print(f"web        {suite.web.url}  (try {suite.web.url}/pool)", flush=True)
            print(f"PostgreSQL {redact_url(running.database_url)}", flush=True)
            if bouncer is not None:
                print(
                    f"PgBouncer  {bouncer.url}  (transaction pooling; SHOW CLIENTS on {bouncer.admin_url})", flush=True
                )
            print(f"Redis      {redact_url(running.redis_url)}", flush=True)
            print(
                f"ceiling    ({web_workers} + {worker_concurrency}) x {pool_size} = {ceiling} connections", flush=True
            )
            print(f"logs       {logs}", flush=True)
            print("running; Ctrl-C or SIGTERM stops everything", flush=True)
            while not stop.wait(1.0):
                if not (suite.web.is_running() and suite.worker.is_running()):
                    print("forkpool: a server exited unexpectedly; see the logs", file=sys.stderr, flush=True)
                    return 1
            print("stopping", flush=True)
            return 0
        finally:
            clear_state()
            suite.stop()
