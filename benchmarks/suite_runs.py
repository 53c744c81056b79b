"""The suite benchmark's measurements: the web variants under HTTP load, the Celery variants
draining a batch of tasks, each interleaved over rounds in a shuffled order; plus the
start-up records, RSS per worker process and server sessions each variant holds."""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from .bench_data import SCHEMA, TASK_WRITE_ROW
from .db_modes import MODES
from .loadgen import LoadGenerator
from .servers import BenchCelery, BenchProcess, BenchWeb, Variant, sessions_by_variant

Progress = Callable[[str], None]

WEB_WORKERS = 2
# Worker class -> threads per worker, and connections per worker (the pool's size, the floor's count).
# asgi: Gunicorn with uvicorn_worker.UvicornWorker, one event loop per worker, one connection per worker.
WEB_CLASSES = {"sync": 1, "gthread": 4, "asgi": 1}
# Connections the load generator keeps open: enough to keep every worker thread busy; for asgi as many
# as for gthread, so that each worker has requests waiting for its one connection (8 each).
LOAD_CONNECTIONS = {"sync": 4, "gthread": 16, "asgi": 16}
CELERY_CONCURRENCY = 2
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    generations: int  # web: each starts fresh servers (new processes, placed anew on the CPUs)
    rounds: int  # web rounds per generation
    passes: int  # per round: a worker class's variants in a shuffled order, then reversed (A B C D D C B A ...)
    seconds: int  # each web variant's load, per pass
    warmup_seconds: int  # 0: a few sequential requests only
    keepalive: int  # Gunicorn's keepalive seconds; 0: close after each response (see gunicorn_bench.conf.py)
    web_classes: tuple[str, ...]  # which of WEB_CLASSES to measure
    celery_rounds: int  # 0: no Celery phase
    tasks: int  # per Celery variant and round
    seed: int
    quick: bool


def create_schema(dsn: str) -> None:
    conn = psycopg2.connect(dsn, application_name="suite_bench:schema")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
    finally:
        conn.close()


def web_variants(classes: tuple[str, ...] = tuple(WEB_CLASSES)) -> list[Variant]:
    """Per worker class: pool, connect, floor, and floor-b, a second floor server whose ratio
    to the first is the noise of the run (an A/A control)."""
    return [
        Variant("web", worker_class, mode, WEB_WORKERS, threads, pool_size=threads, control=control)
        for worker_class, threads in WEB_CLASSES.items()
        if worker_class in classes
        for mode, control in [*((m, False) for m in MODES), ("floor", True)]
    ]


def celery_variants() -> list[Variant]:
    return [Variant("celery", "prefork", mode, CELERY_CONCURRENCY, 1, pool_size=1) for mode in MODES]


def start_all(servers: list[BenchProcess], stack: ExitStack, progress: Progress) -> None:
    """One at a time, so that each start-up figure is not another server's contention."""
    stack.callback(stop_all, servers)
    for server in servers:
        server.start()
        server.wait_started(server.variant.processes, START_TIMEOUT)
    progress(f"{len(servers)} {servers[0].variant.server} servers ready")


def stop_all(servers: list[BenchProcess]) -> None:
    """SIGTERM to every master first, so that they shut down together, then wait for each."""
    for server in servers:
        if server.is_running():
            server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for server in servers:
        server.stop()


def tag_startups(server: BenchProcess, phase: str) -> list[dict[str, Any]]:
    return [
        {**record, "phase": phase, "variant": server.variant.key, "server": server.variant.server}
        for record in server.startup_records()
    ]


def footprint(servers: list[BenchProcess], dsn: str) -> dict[str, Any]:
    """RSS of every worker process, and the server sessions each variant holds, now."""
    sessions = sessions_by_variant(dsn, [s.variant for s in servers])
    return {s.variant.key: {"rss_kib": s.worker_rss_kib(), "sessions": sessions[s.variant.key]} for s in servers}


# -- web --------------------------------------------------------------------------------------


def warm_web(server: BenchWeb, loadgen: LoadGenerator, plan: Plan) -> None:
    if plan.warmup_seconds:
        loadgen.run(
            server.url + "/item", LOAD_CONNECTIONS[server.variant.worker_class], plan.warmup_seconds, server.close_each
        )
        return
    import urllib.request

    for _ in range(10):  # urllib asks for `Connection: close`
        with urllib.request.urlopen(server.url + "/item", timeout=10) as response:
            response.read()


def measure_web(server: BenchWeb, loadgen: LoadGenerator, seconds: int) -> dict[str, Any]:
    """One pass of load on one server, with the CPU time its workers used meanwhile."""
    cpu = server.worker_cpu_seconds()
    result = loadgen.run(
        server.url + "/item", LOAD_CONNECTIONS[server.variant.worker_class], seconds, server.close_each
    )
    return {**result.as_dict(), "worker_cpu_s": server.worker_cpu_seconds() - cpu}


def combine(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """A round's figures from its passes: totals for rates, the mean of the passes' percentiles."""
    requests, seconds = sum(p["requests"] for p in passes), sum(p["seconds"] for p in passes)
    cpu = sum(p["worker_cpu_s"] for p in passes)
    return {
        "requests": requests,
        "errors": sum(p["errors"] for p in passes),
        "seconds": seconds,
        "rps": requests / seconds if seconds else 0.0,
        "p50_ms": statistics.fmean(p["p50_ms"] for p in passes),
        "p99_ms": statistics.fmean(p["p99_ms"] for p in passes),
        "worker_cpu_us_per_request": cpu * 1e6 / requests if requests else 0.0,
        "passes_rps": [p["rps"] for p in passes],
    }


def run_web(
    plan: Plan, dsn: str, redis_url: str, work_dir: Path, loadgen: LoadGenerator, progress: Progress
) -> dict[str, Any]:
    """`plan.generations` times: start fresh servers, warm them up, run `plan.rounds` rounds, stop them.
    Fresh processes land on the CPUs anew: a placement that favours one server for its whole life
    (a +-10% effect on this VM) then falls on each variant alike over the generations."""
    rng = random.Random(plan.seed)
    rounds: dict[str, list[dict[str, Any]]] = {v.key: [] for v in web_variants(plan.web_classes)}
    startup: list[dict[str, Any]] = []
    for generation in range(plan.generations):
        variants = web_variants(plan.web_classes)
        rng.shuffle(variants)
        servers = [BenchWeb(v, dsn, redis_url, work_dir / f"web-{generation}", plan.keepalive) for v in variants]
        with ExitStack() as stack:
            start_all(servers, stack, progress)  # type: ignore[arg-type]
            startup += [r for s in servers for r in tag_startups(s, f"generation {generation + 1}")]
            for server in servers:
                warm_web(server, loadgen, plan)
            by_key = {s.variant.key: s for s in servers}
            for number in range(plan.rounds):
                taken_round = web_round(by_key, loadgen, plan, rng)
                load = load_1min()
                for key, taken in taken_round.items():
                    rounds[key].append({**taken, "generation": generation + 1, "load_1min_after": load})
                progress(
                    f"web generation {generation + 1}/{plan.generations}, round {number + 1}/{plan.rounds}: "
                    + ", ".join(f"{key} {rounds[key][-1]['rps']:.0f}/s" for key in rounds)
                )
            held = footprint(servers, dsn)  # type: ignore[arg-type]
            info = {s.variant.key: _variant_info(s, LOAD_CONNECTIONS[s.variant.worker_class]) for s in servers}
    return {"variants": {key: info[key] for key in rounds}, "rounds": rounds, "footprint": held, "startup": startup}


def web_round(
    by_key: dict[str, BenchWeb], loadgen: LoadGenerator, plan: Plan, rng: random.Random
) -> dict[str, dict[str, Any]]:
    """The worker classes in a shuffled order; each class's variants in a shuffled order, then its reverse."""
    found: dict[str, dict[str, Any]] = {}
    classes = [c for c in WEB_CLASSES if c in plan.web_classes]
    rng.shuffle(classes)
    for worker_class in classes:
        order = [key for key in by_key if key.startswith(worker_class + "/")]
        rng.shuffle(order)
        passes: dict[str, list[dict[str, Any]]] = {key: [] for key in order}
        for number_of_pass in range(plan.passes):
            for key in order if number_of_pass % 2 == 0 else order[::-1]:
                passes[key].append(measure_web(by_key[key], loadgen, plan.seconds))
        found.update({key: {**combine(taken), "position": order.index(key)} for key, taken in passes.items()})
    return found


def load_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _variant_info(server: BenchProcess, connections: int | None = None) -> dict[str, Any]:
    v = server.variant
    info = {
        "server": v.server,
        "worker_class": v.worker_class,
        "mode": v.mode,
        "control": v.control,
        "processes": v.processes,
        "threads": v.threads,
        "pool_size": v.pool_size if v.mode == "pool" else None,
        "suite_id": v.suite_id,
    }
    if connections is not None:
        info["load_connections"] = connections
    return info


# -- celery -----------------------------------------------------------------------------------


def drain(client: Any, server: BenchCelery, keys: list[str], timeout: float) -> float:
    """Send one task per key to the server's queue; seconds until every result is in."""
    from celery.result import ResultSet

    began = time.perf_counter()
    results = [client.send_task(TASK_WRITE_ROW, args=(key,), queue=server.queue) for key in keys]
    ResultSet(results, app=client).join_native(timeout=timeout, propagate=True)
    return time.perf_counter() - began


def rows_written(dsn: str, prefix: str) -> int:
    conn = psycopg2.connect(dsn, application_name="suite_bench:probe")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM bench_events WHERE key LIKE %s", (prefix + "%",))
            return cur.fetchone()[0]
    finally:
        conn.close()


def run_celery(plan: Plan, dsn: str, redis_url: str, work_dir: Path, progress: Progress) -> dict[str, Any]:
    if not plan.celery_rounds:
        return {"variants": {}, "rounds": {}, "footprint": {}, "startup": []}
    from celery import Celery

    rng = random.Random(plan.seed + 1)
    client = Celery("suite-bench-client", broker=redis_url, backend=redis_url)
    client.conf.update(result_expires=600, broker_connection_retry_on_startup=True)
    servers = [BenchCelery(v, dsn, redis_url, work_dir) for v in celery_variants()]
    by_key = {s.variant.key: s for s in servers}
    rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in by_key}
    timeout = max(120.0, plan.tasks * 0.1)
    with ExitStack() as stack:
        stack.callback(client.close)
        start_all(servers, stack, progress)  # type: ignore[arg-type]
        startup = [r for s in servers for r in tag_startups(s, "generation 1")]
        for server in servers:  # every process consumes, every connection is opened
            drain(
                client, server, [f"warm-{server.variant.name}-{i}" for i in range(max(plan.tasks // 10, 20))], timeout
            )
        progress(f"warmed up; {plan.celery_rounds} rounds x {len(servers)} variants x {plan.tasks} tasks")
        for number in range(plan.celery_rounds):
            order = list(by_key)
            rng.shuffle(order)
            for key in order:
                server = by_key[key]
                prefix = f"r{number}-{server.variant.name}-"
                seconds = drain(client, server, [f"{prefix}{i}" for i in range(plan.tasks)], timeout)
                rounds[key].append(
                    {
                        "tasks": plan.tasks,
                        "seconds": seconds,
                        "tasks_per_s": plan.tasks / seconds,
                        "rows_written": rows_written(dsn, prefix),
                        "position": order.index(key),
                    }
                )
            load = load_1min()
            for key in order:
                rounds[key][-1]["load_1min_after"] = load
            progress(
                f"celery round {number + 1}/{plan.celery_rounds}: "
                + ", ".join(f"{key} {rounds[key][-1]['tasks_per_s']:.0f}/s" for key in by_key)
            )
        held = footprint(servers, dsn)  # type: ignore[arg-type]
    return {
        "variants": {s.variant.key: _variant_info(s) for s in servers},
        "rounds": rounds,
        "footprint": held,
        "startup": startup,
    }
