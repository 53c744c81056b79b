"""The suite end to end: Gunicorn and Celery with this project's pool, against the floor and
connect-per-request.

    python -m benchmarks.suite_bench            # about 3.5 minutes on 2 cores
    python -m benchmarks.suite_bench --quick    # about 30 s: does it still run? (figures meaningless)
    python -m benchmarks.suite_bench --generations 10 --tasks 1000 --out /tmp/results
    python -m benchmarks.suite_bench --web-classes asgi --celery-rounds 0   # the ASGI tier alone

On its own embedded PostgreSQL and Redis (harness.services; DATABASE_URL and REDIS_URL are
ignored: connect-per-request churns connections, which a shared server should not see):

1. Web: Gunicorn, 2 sync workers and 2 gthread workers x 4 threads, serving
   benchmarks/bench_app.py (GET /item: one SELECT by primary key, committed), three ways
   with the same endpoint code (benchmarks/db_modes.py): pool (forkpool.get_pool(), the
   forkpool.gunicorn hooks, a pool of 1 for sync and 4 for gthread: as many connections
   as the floor holds), connect (psycopg2.connect + close per request), floor (one bare
   psycopg2 connection per thread, opened lazily after fork, pid-checked, no pool). Load from
   wrk when it is on PATH (else a Python fallback: benchmarks/loadgen.py), keep-alive off (see
   benchmarks/gunicorn_bench.conf.py; --keepalive N turns it on). Servers are started
   afresh in each of several generations (a server's placement on the CPUs biases it for its
   whole life on this VM); in each round the variants run for a fixed time in a shuffled
   order and its reverse. Requests/s, p50/p99 latency and the workers' CPU time per request,
   medians over rounds, ratios to the floor paired by round. A second floor server per worker
   class (floor-b) is measured like the others: its ratio to the floor is the run's noise.
   ASGI (worker class "asgi"): Gunicorn with uvicorn_worker.UvicornWorker, 2 workers, serving
   benchmarks/bench_asgi_app.py (the same query on psycopg 3, asyncio) three ways
   (benchmarks/aio_db_modes.py): pool (forkpool.get_async_pool(), opened in the lifespan, a pool
   of 1 per worker), connect (psycopg.AsyncConnection.connect + close per request), floor (one
   bare AsyncConnection per worker opened in the lifespan; the worker's requests serialise on it
   with an asyncio.Lock); keep-alive off by the client's `Connection: close`.
2. Celery: a prefork worker (concurrency 2) per mode running benchmarks/bench_celery.py's
   write_row task (one INSERT, committed); N tasks sent and timed until every result is in,
   the variants interleaved in a shuffled order per round.
3. Start-up: inside each worker, the time from entering post_fork / worker_process_init to
   leaving it; for the pool, that is until the pool is full (recorded with its size).
4. Memory: VmRSS of every worker process after the load; the server sessions each variant holds.

Nothing here asserts a timing. Results: stdout, and JSON + Markdown named after the UTC date
and time in benchmarks/results/ (or --out DIR).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .loadgen import WRK_INSTALL, LoadGenerator, choose
from .machine import CpuMeter, load_average, machine_info, postmaster_pid, suite_packages
from .suite_figures import goals, summarize_memory, summarize_startup, summarize_throughput
from .suite_output import print_report, write_results
from .suite_runs import (
    CELERY_CONCURRENCY,
    LOAD_CONNECTIONS,
    WEB_CLASSES,
    WEB_WORKERS,
    Plan,
    create_schema,
    run_celery,
    run_web,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULTS = dict(generations=6, rounds=1, passes=2, seconds=1, warmup=1, celery_rounds=4, tasks=600)
QUICK = dict(generations=1, rounds=1, passes=1, seconds=1, warmup=0, celery_rounds=1, tasks=30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--generations",
        type=int,
        help=f"web: times fresh servers are started, each for --rounds rounds (default {DEFAULTS['generations']})",
    )
    parser.add_argument("--rounds", type=int, help=f"web rounds per generation (default {DEFAULTS['rounds']})")
    parser.add_argument(
        "--passes",
        type=int,
        help=f"web passes per round, the round's order and its reverse alternately (default {DEFAULTS['passes']})",
    )
    parser.add_argument(
        "--seconds", type=int, help=f"load per web variant and pass, whole seconds (default {DEFAULTS['seconds']})"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"seconds of load per web variant before the rounds (default {DEFAULTS['warmup']}; 0: ten requests)",
    )
    parser.add_argument(
        "--web-classes",
        default=",".join(WEB_CLASSES),
        help=f"web worker classes to measure, comma-separated (default {','.join(WEB_CLASSES)})",
    )
    parser.add_argument(
        "--celery-rounds", type=int, help=f"Celery rounds (default {DEFAULTS['celery_rounds']}; 0: no Celery phase)"
    )
    parser.add_argument("--tasks", type=int, help=f"tasks per Celery variant and round (default {DEFAULTS['tasks']})")
    parser.add_argument(
        "--keepalive",
        type=int,
        default=0,
        help="Gunicorn keepalive seconds (default 0: "
        "close after each response; see benchmarks/gunicorn_bench.conf.py for why)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load generator (default auto: wrk if on PATH)",
    )
    parser.add_argument("--quick", action="store_true", help="one short round: checks that everything runs")
    parser.add_argument("--seed", type=int, help="seed of the shuffling (default: random, recorded)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    for name in ("generations", "rounds", "passes", "seconds", "tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    classes = tuple(c for c in WEB_CLASSES if c in args.web_classes.split(","))
    unknown = set(args.web_classes.split(",")) - set(WEB_CLASSES)
    if unknown or not classes:
        parser.error(f"--web-classes: one or more of {', '.join(WEB_CLASSES)}")
    args.web_classes = classes
    if args.celery_rounds < 0:
        parser.error("--celery-rounds must not be negative")
    if args.warmup < 0 or args.keepalive < 0:
        parser.error("--warmup and --keepalive must not be negative")
    return args


def method(plan: Plan, loadgen: LoadGenerator) -> str:
    classes = plan.web_classes
    load = ", ".join(f"{LOAD_CONNECTIONS[c]} connections for {c}" for c in classes)
    asgi = (
        "ASGI (asgi): Gunicorn with uvicorn_worker.UvicornWorker serving benchmarks/bench_asgi_app.py (the "
        "same SELECT, committed, on psycopg 3 in the worker's event loop): pool = forkpool.get_async_pool() per "
        "request, the pool opened full in the lifespan startup, 1 connection per worker; connect = "
        "psycopg.AsyncConnection.connect() + close() per request; floor = one bare AsyncConnection per worker "
        "opened in the lifespan startup, the worker's requests serialised on it by an asyncio.Lock (FIFO, as "
        "the pool's waiters). "
        if "asgi" in classes
        else ""
    )
    return (
        f"Web: {plan.generations} generation(s) of servers; each generation starts {4 * len(classes)} fresh "
        f"Gunicorn servers one at a time ({' and '.join(classes)} x pool, connect, floor, and floor-b: a "
        "second, identical floor server whose ratio to the floor is the run's noise, an A/A control), warms "
        f"each up ({plan.warmup_seconds or 'ten requests'}{' s of load' if plan.warmup_seconds else ''}), runs "
        f"{plan.rounds} round(s), and stops them: fresh processes are placed on the CPUs anew, so a placement "
        "that favours one server for its whole life falls on every variant alike over the generations. In a "
        "round the worker classes come in a shuffled order, and each class's four variants in a shuffled "
        f"order (seed {plan.seed}), in {plan.passes} pass(es): that order, then its reverse, alternately "
        f"(A B C D D C B A). A pass is {plan.seconds} s of {loadgen.name} load ({load}; "
        f"{WEB_WORKERS} workers each); a round's req/s is its passes' requests / their time, its p50 and p99 the "
        "mean of its passes'. "
        + asgi
        + (
            "Keep-alive off: every request comes on a new TCP connection (with a few "
            "persistent connections opened in a burst, the gthread workers' accept race often hands all of "
            "them to one worker, which then serves alone at about half the rate: a lottery drawn anew by each "
            "load run; the asgi servers are asked by the client, `Connection: close`, since uvicorn has no "
            "setting for it). "
            if not plan.keepalive
            else f"Gunicorn keepalive {plan.keepalive} s (gthread and asgi; sync workers always close). "
        )
        + "The servers of a generation run "
        "together, idle when not measured. Ratios: variant / floor of the same worker class within each round, "
        "median (min-max) over rounds. Worker CPU us/req: user + system time of the server's worker processes "
        "during the variant's passes (the kernel's utime + stime, by psutil) / requests; PostgreSQL's side (for connect, a backend "
        "forked per request) is not in it. "
        + (
            f"Celery: {plan.celery_rounds} rounds of {plan.tasks} tasks per "
            f"variant (concurrency {CELERY_CONCURRENCY}), shuffled per round; the time runs from the first send to "
            "the last result, sending included. "
            if plan.celery_rounds
            else "No Celery phase. "
        )
        + "Start-up: measured inside each worker process "
        "(benchmarks/startup_probe.py) at every start of a server: from entering post_fork / "
        "worker_process_init to leaving it; for asgi, the lifespan startup (where its connections open). "
        "Memory: VmRSS (by psutil) after "
        "the load (last generation; pages shared with the master counted in every worker). CPU use: the "
        "machine's CPU times (by psutil) over the run; this benchmark = its process, its servers and load "
        "generator (exited children included) and its Redis; its PostgreSQL = the server's processes, "
        "exited backends included."
    )


def notes(loadgen: LoadGenerator, quick: bool) -> list[str]:
    found = [] if loadgen.name == "wrk" else [WRK_INSTALL]
    if quick:
        found.append("--quick: one short round; the figures mean nothing.")
    return found


def redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version"))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(
        generations=args.generations,
        rounds=args.rounds,
        passes=args.passes,
        seconds=args.seconds,
        warmup_seconds=args.warmup,
        keepalive=args.keepalive,
        web_classes=args.web_classes,
        celery_rounds=args.celery_rounds,
        tasks=args.tasks,
        seed=args.seed,
        quick=args.quick,
    )
    loadgen = choose(args.loadgen)
    started_at = datetime.now(UTC)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"[suite_bench {time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    if loadgen.name != "wrk":
        progress(WRK_INSTALL)
    from harness.services import EmbeddedPostgres, EmbeddedRedis

    with ExitStack() as stack:
        progress("starting an embedded PostgreSQL and Redis")
        dsn = stack.enter_context(EmbeddedPostgres(max_connections=100)).url
        redis = stack.enter_context(EmbeddedRedis())
        redis_url = redis.url
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="suite-bench-")))
        machine = machine_info(dsn, True, "suite_bench", suite_packages())
        machine["redis"] = redis_version(redis_url)
        create_schema(dsn)
        meter = CpuMeter(postmaster_pid(dsn), reaped=True, helpers=[redis.pid or 0])
        web = run_web(plan, dsn, redis_url, work_dir, loadgen, progress)
        celery = run_celery(plan, dsn, redis_url, work_dir, progress)
        machine["cpu_use"] = meter.result()  # every server stopped and waited for; PostgreSQL still running
    machine["load_average_at_end"] = load_average()
    report = build_report(plan, loadgen, machine, web, celery, started_at, time.monotonic() - began)
    print_report(report)
    json_path, md_path = write_results(report, args.out, started_at.strftime("%Y-%m-%dT%H%M%SZ"))
    print(f"results: {json_path}\n         {md_path}")
    return 0


def build_report(
    plan: Plan,
    loadgen: LoadGenerator,
    machine: dict[str, Any],
    web: dict[str, Any],
    celery: dict[str, Any],
    started_at: datetime,
    duration: float,
) -> dict[str, Any]:
    web["figures"] = summarize_throughput(web, "rps", latencies=True)
    web["memory"] = summarize_memory(web.pop("footprint"))
    celery["figures"] = summarize_throughput(celery, "tasks_per_s", latencies=False)
    celery["memory"] = summarize_memory(celery.pop("footprint"))
    return {
        "benchmark": "suite_bench",
        "format": 1,
        "started_utc": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(duration, 1),
        "config": {
            "generations": plan.generations,
            "rounds": plan.rounds,
            "passes": plan.passes,
            "seconds": plan.seconds,
            "warmup_s": plan.warmup_seconds,
            "keepalive_s": plan.keepalive,
            "web_classes": list(plan.web_classes),
            "celery_rounds": plan.celery_rounds,
            "tasks": plan.tasks,
            "web_workers": WEB_WORKERS,
            "load_connections": LOAD_CONNECTIONS,
            "celery_concurrency": CELERY_CONCURRENCY,
            "seed": plan.seed,
            "quick": plan.quick,
            "load_generator": {"name": loadgen.name, "version": loadgen.version},
        },
        "machine": machine,
        "method": method(plan, loadgen),
        "notes": notes(loadgen, plan.quick),
        "web": web,
        "celery": celery,
        "startup": summarize_startup(web["startup"] + celery["startup"]),
        "goals": goals(web["figures"], celery["figures"]),
    }


if __name__ == "__main__":
    sys.exit(main())
