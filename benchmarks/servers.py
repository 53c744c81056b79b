"""The suite benchmark's servers as subprocesses: Gunicorn serving bench_app, Celery running
bench_celery, one per variant, each with its own FORKPOOL_NAME (so its connections are named
``<suite-id>:<mode-or-role>:<pid>``) and its own start-up file; plus what is read from
outside: worker pids, RSS (VmRSS, by psutil) and server sessions."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from harness._procs import free_port
from harness.processes import SuiteProcess
from harness.rss import rss_kb

from .startup_probe import STARTUP_FILE_ENV, read_records

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
GUNICORN_CONF = BENCH_DIR / "gunicorn_bench.conf.py"
GUNICORN_ASGI_CONF = BENCH_DIR / "gunicorn_bench_asgi.conf.py"  # worker class "asgi": uvicorn workers

# Inherited settings that would change what a variant measures (the pools run on their defaults).
_DROP_ENV = (
    "PROCESS_ROLE",
    "PROMETHEUS_MULTIPROC_DIR",
    "DB_MAX_POOLS",
    "WEB_BIND",
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "CELERY_QUEUE",
)
_DROP_PREFIXES = ("DB_POOL_", "BENCH_")


@dataclass(frozen=True)
class Variant:
    """One server to measure: which server, which worker class, which way to a connection."""

    server: str  # "web" | "celery"
    worker_class: str  # "sync" | "gthread" | "asgi" (Gunicorn + uvicorn_worker.UvicornWorker) | "prefork"
    mode: str  # "pool" | "connect" | "floor"
    processes: int
    threads: int
    pool_size: int  # pool mode only: DB_POOL_SIZE
    control: bool = False  # a second, identical server: its ratio to the first is the noise

    @property
    def name(self) -> str:
        return self.mode + ("-b" if self.control else "")

    @property
    def key(self) -> str:
        return f"{self.worker_class}/{self.name}"

    @property
    def suite_id(self) -> str:
        return f"bench-{self.worker_class}-{self.name}"


def variant_env(variant: Variant, dsn: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith(_DROP_PREFIXES)}
    env.update(
        DATABASE_URL=dsn,
        REDIS_URL=redis_url,
        FORKPOOL_NAME=variant.suite_id,
        BENCH_DB_MODE=variant.mode,
        BENCH_WORKERS=str(variant.processes),
        BENCH_THREADS=str(variant.threads),
        DB_POOL_SIZE=str(variant.pool_size),
        DB_BUDGET_CHECK="warn",
        LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


class BenchProcess(SuiteProcess):
    """A started server with its start-up records and its worker processes."""

    def __init__(self, variant: Variant, argv: list[str], env: dict[str, str], work_dir: Path) -> None:
        self.variant = variant
        self.startup_file = work_dir / f"startup-{variant.suite_id}.jsonl"
        env[STARTUP_FILE_ENV] = str(self.startup_file)
        super().__init__(argv, env, work_dir / f"{variant.suite_id}.log")
        self.name = f"{variant.server} {variant.key}"

    def startup_records(self) -> list[dict[str, Any]]:
        return read_records(self.startup_file)

    def wait_started(self, records: int, timeout: float) -> None:
        """Until `records` processes have logged their start-up, and the server runs them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._fail("exited during start-up")
            if (
                len(self.startup_records()) >= records
                and len(self.children()) >= self.variant.processes
                and self.serving()
            ):
                return
            time.sleep(0.02)
        raise self._fail(f"not ready after {timeout:.0f} s")

    def serving(self) -> bool:
        return True

    def worker_rss_kib(self) -> dict[int, int]:
        return {pid: rss for pid in self.children() if (rss := rss_kb(pid)) is not None}

    def worker_cpu_seconds(self) -> float:
        """User + system CPU time the worker processes have used so far."""
        return sum(cpu_seconds(pid) for pid in self.children())


class BenchWeb(BenchProcess):
    def __init__(self, variant: Variant, dsn: str, redis_url: str, work_dir: Path, keepalive: int = 0) -> None:
        self.port = free_port()
        env = variant_env(variant, dsn, redis_url)
        env.update(BENCH_BIND=f"127.0.0.1:{self.port}", BENCH_KEEPALIVE=str(keepalive))
        conf = GUNICORN_ASGI_CONF if variant.worker_class == "asgi" else GUNICORN_CONF
        argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--no-control-socket"]
        # uvicorn cannot be told to close after each response: the client asks, with `Connection: close`.
        self.close_each = variant.worker_class == "asgi" and not keepalive
        super().__init__(variant, argv, env, work_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serving(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


class BenchCelery(BenchProcess):
    def __init__(self, variant: Variant, dsn: str, redis_url: str, work_dir: Path) -> None:
        env = variant_env(variant, dsn, redis_url)
        env["BENCH_QUEUE"] = self.queue_for(variant)
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.bench_celery",
            "worker",
            "--concurrency",
            str(variant.processes),
            "--pool",
            "prefork",
            "--queues",
            self.queue_for(variant),
            "--hostname",
            f"{variant.suite_id}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ]
        super().__init__(variant, argv, env, work_dir)

    @staticmethod
    def queue_for(variant: Variant) -> str:
        return f"{variant.suite_id}-{os.getpid()}"

    @property
    def queue(self) -> str:
        return self.queue_for(self.variant)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def sessions_by_variant(dsn: str, variants: list[Variant]) -> dict[str, int]:
    """Server sessions each variant holds now, by connection name."""
    conn = psycopg2.connect(dsn, application_name="suite_bench:probe")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            found = {}
            for variant in variants:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (f"{variant.suite_id}:%",)
                )
                found[variant.key] = cur.fetchone()[0]
            return found
    finally:
        conn.close()
