"""The suite's servers as real processes: Gunicorn or uWSGI (web), a Celery worker, Gunicorn with uvicorn workers (asgi).

Started from the command line exactly as a user would (``gunicorn -c
web/gunicorn.conf.py``, ``celery -A workers.app worker``, ``gunicorn -c
web/gunicorn_asgi.conf.py`` when the plan has ASGI workers; with ``--stack
django``, ``gunicorn -c django_stack/gunicorn.conf.py`` and ``celery -A
django_stack.celery worker`` instead of web and workers; with ``--web-server
uwsgi``, ``uwsgi --module web.wsgi:app --import forkpool.uwsgi`` instead of
the web tier's Gunicorn), configured only by
environment variables, each in its own session, dying with the harness
(PDEATHSIG), and logging to a file. The harness never imports web, workers or
django_stack.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from suite.stacks import DJANGO as DJANGO_STACK

from ._procs import ServiceError, free_port, log_tail, spawn

# Settings the plan decides; inherited values would make its ceiling arithmetic wrong.
# DJANGO_SETTINGS_MODULE too: set, it turns Celery's Django fixup on in any worker, the suite's own included.
_PLAN_OWNS = (
    "DB_POOL_MIN",
    "DB_POOL_MAX",
    "PROCESS_ROLE",
    "WEB_BIND",
    "DB_POOL_SIZE",
    "STACK_POOL_SIZE",
    "ASGI_BIND",
    "ASGI_PORT",
    "ASGI_POOL_SIZE",
    "ASGI_CONCURRENCY",
    "ASGI_MAX_REQUESTS",
    "ASGI_MAX_REQUESTS_JITTER",
    "DJANGO_SETTINGS_MODULE",
    "HOST_LABEL",
    "TASK_RUNNER",
)
DJANGO_PACKAGE = "django_stack"  # the django stack's own project: it replaces web/ and workers/
GUNICORN, UWSGI = "gunicorn", "uwsgi"
WEB_SERVERS = (GUNICORN, UWSGI)
CELERY, RQ = "celery", "rq"  # suite/rq_queue.py's names: the web enqueues through TASK_RUNNER


@dataclass(frozen=True)
class SuitePlan:
    """One deployment of the suite: sizes, recycling, servers, and the run's identity."""

    database_url: str
    redis_url: str
    suite_id: str
    web_workers: int = 3
    web_threads: int = 1
    worker_concurrency: int = 2
    pool_size: int = 4  # every role's: web, worker and asgi processes each hold one pool of this size
    asgi_workers: int = 0  # uvicorn workers of the async tier; 0: not started
    max_requests: int = 0  # web and asgi workers alike
    max_tasks_per_child: int = 0
    preload: bool = False
    naive: bool = False  # the contrast run: web without pool hooks, pool inherited from the master
    stack: str = "forkpool"  # the data layer web and workers run on (suite/stacks.py)
    port: int = 0
    metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR shared by web and workers; start_suite makes a fresh one
    host: str = ""  # HOST_LABEL of one host of a fleet (harness/fleet.py); "": a single host, unlabelled
    web_server: str = GUNICORN  # what serves the web tier: Gunicorn, or uWSGI wired with --import forkpool.uwsgi
    task_runner: str = CELERY  # what runs the tasks: Celery prefork, or RQ workers (harness/rq_runner.py)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        """Where tasks go: one queue for the whole fleet, whose every host's task processes consume it."""
        return f"{self.suite_id}.tasks"

    @property
    def host_queue(self) -> str:
        """This host's own queue (consumed beside the shared one): the harness's stats probes reach each host."""
        return f"{self.suite_id}.{self.host}.tasks" if self.host else self.queue

    @property
    def name(self) -> str:
        """The suite id, with the host label on a fleet: names logs, metrics directories, Celery nodes."""
        return f"{self.suite_id}-{self.host}" if self.host else self.suite_id

    @property
    def ceiling(self) -> int:
        return (self.web_workers + self.worker_concurrency + self.asgi_workers) * self.pool_size

    def env(self, port: int, environ: Mapping[str, str] | None = None, asgi_port: int = 0) -> dict[str, str]:
        """The processes' environment: `environ` (default os.environ) with the plan's settings."""
        env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in _PLAN_OWNS}
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            FORKPOOL_NAME=self.suite_id,
            CELERY_QUEUE=self.queue,
            DB_POOL_SIZE=str(self.pool_size),
            WEB_CONCURRENCY=str(self.web_workers),
            WEB_THREADS=str(self.web_threads),
            WEB_MAX_REQUESTS=str(self.max_requests),
            WEB_PRELOAD="1" if self.preload else "0",
            WORKER_CONCURRENCY=str(self.worker_concurrency),
            WORKER_MAX_TASKS_PER_CHILD=str(self.max_tasks_per_child),
            PORT=str(port),
            SUITE_STACK=self.stack,
            ASGI_CONCURRENCY=str(max(self.asgi_workers, 1)),
            ASGI_POOL_SIZE=str(self.pool_size),
            ASGI_MAX_REQUESTS=str(self.max_requests),
        )
        if asgi_port:
            env["ASGI_PORT"] = str(asgi_port)
        if self.host:
            env["HOST_LABEL"] = self.host
        if self.stack != "forkpool":
            # The stack's own pool has the plan's size; forkpool's default pool stays closed.
            env["STACK_POOL_SIZE"] = env.pop("DB_POOL_SIZE")
        if self.stack == DJANGO_STACK:
            env["DJANGO_SETTINGS_MODULE"] = f"{DJANGO_PACKAGE}.settings"
        if self.task_runner == RQ:
            env["TASK_RUNNER"] = RQ  # the web tier enqueues through RQ (suite/rq_queue.py)
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        env.update(self.extra_env)
        return env


def package_dir(name: str) -> Path:
    """Where a package lives, found without importing (running) any of its code."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, zombies left out (the server's worker processes); [] once it is gone."""
    try:
        children = psutil.Process(parent).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue  # exited and reaped since the listing
    return sorted(found)


class SuiteProcess:
    """A server the harness started; `stop()` ends it and everything it forked."""

    name = "process"

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv, self.env, self.log_path = argv, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> SuiteProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(
            self.argv, log_path=self.log_path, cwd=Path.cwd(), user=None, death_signal=signal.SIGTERM, env=self.env
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        return child_pids(self.pid) if self.is_running() else []

    @property
    def master_pids(self) -> list[int]:
        """The processes of this server that fork the others: each must hold no connection."""
        return [self.pid]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the server serves (each server knows how to tell)."""
        raise NotImplementedError

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """Graceful stop (SIGTERM: workers close their pools), then SIGKILL the whole session."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of its session, if any
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait(timeout)

    def _fail(self, what: str) -> ServiceError:
        return ServiceError(f"{self.name} {what}: {log_tail(self.log_path, 8)}")


class WebServer(SuiteProcess):
    name = "gunicorn"

    def __init__(self, plan: SuitePlan, log_dir: Path) -> None:
        self.port = plan.port or free_port()
        if plan.stack == DJANGO_STACK:
            conf = package_dir(DJANGO_PACKAGE) / "gunicorn.conf.py"
        else:
            conf = package_dir("web") / ("gunicorn_naive.conf.py" if plan.naive else "gunicorn.conf.py")
        argv = [sys.executable, "-m", "gunicorn", "--config", str(conf), "--no-control-socket"]
        super().__init__(argv, plan.env(self.port), log_dir / f"web-{self.port}.log")
        self.workers = plan.web_workers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the master runs all its workers and one of them answers /healthz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._fail("exited during start-up")
            if len(self.children()) >= self.workers and self._healthy():
                return
            time.sleep(0.05)
        raise self._fail(f"not ready after {timeout:.0f} s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200 and json.loads(response.read()).get("status") == "ok"
        except (OSError, urllib.error.URLError, ValueError):
            return False


def uwsgi_binary() -> Path:
    """uWSGI's command, installed beside this Python (``pip install uwsgi`` builds it)."""
    found = Path(sys.executable).with_name("uwsgi")
    if not found.is_file():
        raise ServiceError(
            f"uWSGI is not installed ({found}): pip install uwsgi (it builds with gcc and Python's headers)"
        )
    return found


class UwsgiWebServer(WebServer):
    """The web tier under uWSGI: master + workers, the app loaded in the master, one line of wiring.

    ``--import forkpool.uwsgi`` is the whole integration: the master holds no
    connection when it forks, each worker opens its own pool and closes it when
    it leaves (``--max-requests`` recycling, shutdown). uWSGI's own options
    stand for Gunicorn's: ``--processes``/``--threads``, ``--max-requests``, and
    ``--die-on-term`` so that SIGTERM stops it (uWSGI 2.0 reloads on SIGTERM by default).
    """

    name = "uwsgi"

    def __init__(self, plan: SuitePlan, log_dir: Path) -> None:
        self.port = plan.port or free_port()
        argv = [
            str(uwsgi_binary()),
            "--master",
            "--processes",
            str(plan.web_workers),
            "--http-socket",
            f"127.0.0.1:{self.port}",
            "--module",
            "web.wsgi:app",
            "--import",
            "forkpool.uwsgi",
            "--need-app",
            "--die-on-term",
            "--disable-logging",  # one line per request otherwise; errors are still logged
            # uWSGI's http-socket closes every connection after its response without
            # saying so (RFC 9112 9.6 asks for "Connection: close"; openstack/barbican
            # 680845f adds it the same way). Unsaid, a keep-alive client such as the
            # load generator sends its next request into the closing socket whenever
            # the close is late on a busy machine, and counts a dropped connection.
            "--add-header",
            "Connection: close",
            "--procname-prefix-spaced",
            "forkpool-web",
        ]
        if plan.web_threads > 1:
            argv += ["--threads", str(plan.web_threads)]
        if plan.max_requests:
            # --min-worker-lifetime: uWSGI's default (60 s) would hold a worker past its requests.
            argv += ["--max-requests", str(plan.max_requests), "--min-worker-lifetime", "1"]
        SuiteProcess.__init__(self, argv, plan.env(self.port), log_dir / f"web-{self.port}.log")
        self.workers = plan.web_workers


class AsgiServer(WebServer):
    """The async tier: Gunicorn with ``uvicorn_worker.UvicornWorker`` serving web/asgi_app.py."""

    name = "gunicorn (asgi)"

    def __init__(self, plan: SuitePlan, log_dir: Path) -> None:
        self.port = free_port()
        conf = package_dir("web") / "gunicorn_asgi.conf.py"
        argv = [sys.executable, "-m", "gunicorn", "--config", str(conf), "--no-control-socket"]
        SuiteProcess.__init__(self, argv, plan.env(0, asgi_port=self.port), log_dir / f"asgi-{self.port}.log")
        self.workers = plan.asgi_workers


class CeleryWorker(SuiteProcess):
    name = "celery worker"

    def __init__(self, plan: SuitePlan, log_dir: Path) -> None:
        app = f"{DJANGO_PACKAGE}.celery" if plan.stack == DJANGO_STACK else "workers.app"
        queues = ",".join(dict.fromkeys((plan.queue, plan.host_queue)))
        argv = [
            sys.executable,
            "-m",
            "celery",
            "--app",
            app,
            "worker",
            "--loglevel",
            "INFO",
            "--queues",
            queues,
            "--hostname",
            f"{plan.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        super().__init__(argv, plan.env(0), log_dir / f"worker-{plan.name}.log")
        self.concurrency = plan.worker_concurrency

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._fail("exited during start-up")
            if " ready." in self.log_text() and len(self.children()) >= self.concurrency:
                return
            time.sleep(0.05)
        raise self._fail(f"not ready after {timeout:.0f} s")


@dataclass
class RunningSuite:
    plan: SuitePlan
    web: WebServer  # Gunicorn, or uWSGI (UwsgiWebServer)
    worker: SuiteProcess  # CeleryWorker, or RqWorkers (harness/rq_runner.py)
    asgi: AsgiServer | None = None  # when the plan has ASGI workers

    @property
    def servers(self) -> list[SuiteProcess]:
        return [self.web, self.worker] + ([self.asgi] if self.asgi is not None else [])

    @property
    def master_pids(self) -> list[int]:
        """The Gunicorn arbiters (or uWSGI master), the Celery main process (or RQ workers): none holds a connection."""
        return [pid for server in self.servers for pid in server.master_pids]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _task_tier(plan: SuitePlan, log_dir: Path) -> SuiteProcess:
    if plan.task_runner == RQ:
        from .rq_runner import RqWorkers  # imports rq: only when asked for

        return RqWorkers(plan, log_dir)
    return CeleryWorker(plan, log_dir)


def prepare_suite(plan: SuitePlan, log_dir: Path) -> RunningSuite:
    """The servers of one plan (one host), not started yet."""
    if not plan.metrics_dir:
        # A fresh, empty directory per run (and host): nothing of an earlier run's processes is served.
        fresh = log_dir / f"metrics-{plan.name}"
        fresh.mkdir(parents=True, exist_ok=True)
        plan = replace(plan, metrics_dir=str(fresh))
    return RunningSuite(
        plan,
        UwsgiWebServer(plan, log_dir) if plan.web_server == UWSGI else WebServer(plan, log_dir),
        _task_tier(plan, log_dir),
        AsgiServer(plan, log_dir) if plan.asgi_workers else None,
    )


def start_suite(plan: SuitePlan, log_dir: Path, timeout: float = 60.0) -> RunningSuite:
    """Start Gunicorn, the Celery worker (and the ASGI tier) side by side; wait until all serve."""
    suite = prepare_suite(plan, log_dir)
    for server in suite.servers:
        server.start()
    try:
        for server in suite.servers:
            server.wait_ready(timeout)
    except BaseException:
        suite.stop()
        raise
    return suite
