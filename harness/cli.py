"""The suite's subcommands of `forkpool`: demo, loadtest, soak, fault, up, stats, initdb.

The library owns the `forkpool` command (forkpool/cli.py); these join it through
the entry point group ``forkpool.commands`` (root pyproject.toml), each a
``name_command(argv, prog)`` function that parses its options with the library's
``CommandParser`` (``name_parser(prog)``). The options several commands share and
the exit codes are the library's (``forkpool.cli``): 0 every check passed; 1 a
check failed; 2 bad usage or configuration; 3 the plan does not fit the server's
connection slots.

Every command first checks what it needs (harness/preflight.py): a setting that
cannot work ends the command before anything starts, with one line on stderr.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

import forkpool
from forkpool.cli import (
    EXIT_DOES_NOT_FIT,
    EXIT_FAILED,
    CommandFailed,
    CommandParser,
    UsageError,
    add_size_options,
    count,
    dir_path,
    env_default,
    file_path,
    number,
    setting_of,
)
from forkpool.settings import describe_error
from suite.stacks import FORKPOOL, STACKS

# `forkpool fault SCENARIO`: harness/fault_scenarios.py's SCENARIOS, and all of them (tests/test_faults.py
# keeps the two lists equal; named here so that --help does not import the scenarios).
FAULT_SCENARIOS = [
    "all",
    "pg-restart",
    "pg-down-at-start",
    "out-of-slots",
    "redis-restart",
    "slow-queries",
    "blackhole",
    "latency",
    "reset-mid-query",
    "reconnect-storm",
    "redis-blackhole",
    "failover",
]


def _command(parser: Callable[[str], CommandParser]) -> Callable[[Callable[..., int]], Callable[[list[str], str], int]]:
    """`run(args) -> exit code` as a `forkpool` subcommand: its options parsed by `parser`; the suite's own
    errors become the library's (one line, no traceback): a server that would not start or stop, exit 1;
    a setting the pool rejects, exit 2."""

    def wrap(run: Callable[..., int]) -> Callable[[list[str], str], int]:
        @functools.wraps(run)
        def command(argv: list[str], prog: str) -> int:
            args = parser(prog).parse_args(argv)  # first: --help and a mistake import nothing more

            from .preflight import PreflightError
            from .services import ServiceError

            try:
                return run(args)
            except PreflightError:
                raise  # already says which setting and what to do
            except forkpool.ConfigError as exc:
                raise UsageError(f"invalid configuration: {exc}") from None
            except ServiceError as exc:
                raise CommandFailed(str(exc)) from None

        return command

    return wrap


# -- forkpool initdb ---------------------------------------------------------------------------------------------


def initdb_parser(prog: str) -> CommandParser:
    return CommandParser(prog=prog, description=initdb_command.__doc__)


@_command(initdb_parser)
def initdb_command(args: argparse.Namespace) -> int:
    """Create the suite's tables in DATABASE_URL (idempotent)."""
    from forkpool.settings import build_settings, settings_from_env
    from suite.schema import init_schema_at

    from . import preflight

    preflight.check_database(os.environ.get("DATABASE_URL", ""))
    settings = build_settings(**settings_from_env())  # the pool settings too: one clear line
    try:
        init_schema_at(settings.dsn)  # one connection, no pool: nothing retries behind the user's back
    except psycopg2.Error as exc:
        raise CommandFailed(f"initdb failed: {settings.redact(describe_error(exc))}") from None
    print("schema ready: tables items, events", flush=True)
    return 0


# -- forkpool loadtest: every option it takes is defined here, in the order --help lists them ---------------------

LOADTEST_SIZES = {"web_workers": 3, "web_threads": 1, "worker_concurrency": 2, "pool_size": 4}


def loadtest_options(parser: CommandParser) -> None:
    """The options of `forkpool loadtest`, all of them."""
    add_size_options(parser, LOADTEST_SIZES, from_env=False)
    parser.add_argument(
        "--duration", type=number(1), default=20.0, metavar="SECONDS", help="Seconds of load. Default 20."
    )
    parser.add_argument(
        "--users", type=count(1), default=10, metavar="N", help="Concurrent HTTP clients (Locust users). Default 10."
    )
    parser.add_argument(
        "--task-rate",
        type=number(0),
        default=5.0,
        metavar="N",
        help="Tasks per second enqueued directly through Celery. Default 5.",
    )
    parser.add_argument(
        "--max-requests",
        type=count(0),
        default=0,
        metavar="N",
        help="Recycle each web worker after this many requests (0: never). Default 0.",
    )
    parser.add_argument(
        "--max-tasks-per-child",
        type=count(0),
        default=0,
        metavar="N",
        help="Recycle each task process after this many tasks (0: never). Default 0.",
    )
    parser.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Gunicorn preload_app. Default --no-preload.",
    )
    parser.add_argument(
        "--kill-workers",
        type=count(0),
        default=0,
        metavar="N",
        help="SIGKILL this many random web, task (and asgi) processes during the load, in turn. Default 0.",
    )
    parser.add_argument(
        "--max-connections",
        type=count(10),
        default=100,
        metavar="N",
        help="max_connections of the embedded PostgreSQL (at least 10). Default 100.",
    )
    parser.add_argument(
        "--json", dest="json_path", type=file_path, metavar="FILE", help="Write the machine-readable report here."
    )
    parser.add_argument(
        "--report",
        dest="report_dir",
        type=dir_path,
        metavar="DIRECTORY",
        help="Write report.json, report.txt, connections.png and the logs here.",
    )
    parser.add_argument(
        "--asgi-workers",
        type=count(0),
        default=0,
        metavar="N",
        help="Also run the async tier (Starlette under Gunicorn's uvicorn workers) with this many workers, "
        "pool --pool-size each; half the users load it (0: off). Default 0.",
    )
    parser.add_argument(
        "--naive", action="store_true", help="Contrast run with the per-process hooks off: expected to fail."
    )
    parser.add_argument(
        "--stack",
        choices=STACKS,
        default=FORKPOOL,
        help="The data layer web and workers run on: forkpool's pool; Flask-SQLAlchemy / SQLAlchemy "
        "protected by forkpool.protect(); or a Django project and its Celery worker on Django's "
        f'native pool, protected by "forkpool.django". Default {FORKPOOL}.',
    )
    # Past one machine.
    parser.add_argument(
        "--hosts",
        type=count(1),
        default=1,
        metavar="N",
        help="Run this many copies of the suite, each a host of a fleet (its own masters, host label "
        "h1, h2, ... in every connection's name), on one PostgreSQL, Redis and task queue. Default 1.",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="Put a PgBouncer (transaction pooling, from the `pgbouncer` binary) between the suite and "
        "PostgreSQL: clients counted at PgBouncer, servers at PostgreSQL (check 8).",
    )
    parser.add_argument(
        "--pgbouncer-pool-size",
        type=count(1),
        default=10,
        metavar="N",
        help="With --pgbouncer: its default_pool_size (server connections; reserve 2 more). Default 10.",
    )
    # The runners the suite can run under (issue 23): the behaviour lives in harness/processes.py.
    parser.add_argument(
        "--web-server",
        choices=["gunicorn", "uwsgi"],
        default="gunicorn",
        help="What serves the web tier: Gunicorn, or uWSGI (master + workers) wired with --import forkpool.uwsgi. "
        "Default gunicorn.",
    )
    parser.add_argument(
        "--task-runner",
        choices=["celery", "rq"],
        default="celery",
        help="What runs the tasks: Celery prefork, or --worker-concurrency RQ workers "
        "(--worker-class forkpool.rq.Worker, a work-horse per job). Default celery.",
    )


def loadtest_parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=loadtest_command.__doc__)
    loadtest_options(parser)
    return parser


# -- end of forkpool loadtest's options --------------------------------------------------------------------------


@_command(loadtest_parser)
def loadtest_command(args: argparse.Namespace) -> int:
    """Boot the suite, drive load through Gunicorn and Celery, and check the connection ceiling."""
    from . import preflight

    params = vars(args)
    if params["asgi_workers"] and (params["naive"] or params["stack"] != FORKPOOL):
        raise UsageError("--asgi-workers runs forkpool's asyncio pool: not with --naive or another --stack")
    if params["naive"] and params["stack"] != FORKPOOL:
        raise UsageError(f"--naive is the suite's own Flask app without its hooks: not with --stack {params['stack']}")
    if (params["hosts"] > 1 or params["pgbouncer"]) and params["naive"]:
        raise UsageError("--hosts and --pgbouncer prove the hooks: not with --naive")
    if params["pgbouncer"] and params["stack"] != FORKPOOL:
        raise UsageError("--pgbouncer runs forkpool's own pools (prepared statements off): not with --stack")
    if params["web_server"] != "gunicorn" and (params["naive"] or params["stack"] != FORKPOOL):
        raise UsageError("--web-server uwsgi serves the suite's own Flask app: not with --naive or --stack")
    if params["task_runner"] != "celery" and (params["naive"] or params["stack"] != FORKPOOL):
        raise UsageError("--task-runner rq runs the suite's jobs on forkpool's pool: not with --naive or --stack")
    if params["task_runner"] != "celery" and params["max_tasks_per_child"]:
        raise UsageError("--max-tasks-per-child is Celery's: an RQ work-horse lives for one job")
    preflight.check_stack(params["stack"])
    preflight.check_runners(params["web_server"], params["task_runner"])
    preflight.check_suite(
        preflight.SuiteNeeds(params["pool_size"], params["web_threads"], pgbouncer=params["pgbouncer"])
    )
    return _run(params)


# -- forkpool soak -----------------------------------------------------------------------------------------------


def soak_parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=soak_command.__doc__)
    parser.add_argument(
        "--duration",
        type=number(5),
        default=600.0,
        metavar="SECONDS",
        help="Seconds of load (at least 5). Default 600.",
    )
    parser.add_argument(
        "--report",
        dest="report_dir",
        type=dir_path,
        metavar="DIRECTORY",
        help="Write report files (memory.png too) and logs here.",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help="During the load, one fault a minute in turn (each at least once in a shorter run): PostgreSQL "
        "restart, Redis restart, PostgreSQL silent (packets dropped), slow, resetting connections; after each, "
        "counts exact again and a task through (check 9). Embedded servers, in a private network namespace; "
        "needs root, ip and tc. The hour-long run: --faults --duration 3600.",
    )
    return parser


@_command(soak_parser)
def soak_command(args: argparse.Namespace) -> int:
    """Long mixed load with recycling on: memory, open files and connections per role must stay flat."""
    from . import preflight

    duration, report_dir, faults = args.duration, args.report_dir, args.faults
    preflight.check_suite(preflight.SuiteNeeds(pool_size=4, embedded_only=faults))
    if faults:
        code = _enter_private_network(
            ["soak", "--duration", str(duration), "--faults", *(["--report", str(report_dir)] if report_dir else [])]
        )
        if code is not None:
            return code
    params = dict(
        web_workers=3,
        web_threads=1,
        worker_concurrency=2,
        pool_size=4,
        duration=duration,
        users=10,
        task_rate=5.0,
        max_requests=500,
        max_tasks_per_child=100,
        preload=False,
        kill_workers=0,
        max_connections=100,
        json_path=None,
        report_dir=report_dir,
        naive=False,
        soak=True,
        faults=faults,
    )
    return _run(params)


def _enter_private_network(argv: list[str]) -> int | None:
    """Run this command again inside a new network namespace (unless already in one) and return its exit code;
    None inside the namespace: go on. Dropping packets there touches nothing outside this run (harness/netfault.py)."""
    import subprocess

    from .netfault import IN_NETNS_ENV, prepare_namespace, unavailable
    from .preflight import PreflightError

    state = os.environ.get(IN_NETNS_ENV)
    if state == "new":  # the namespace's first process: bring it up once
        prepare_namespace()
        os.environ[IN_NETNS_ENV] = "1"
        return None
    if state:
        return None
    reason = unavailable()
    if reason:
        raise PreflightError(f"--faults: {reason}")
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "forkpool", *argv], env={**os.environ, IN_NETNS_ENV: "new"}
    )
    return done.returncode


# -- forkpool fault ----------------------------------------------------------------------------------------------


def fault_parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=fault_command.__doc__)
    parser.add_argument(
        "scenario",
        choices=FAULT_SCENARIOS,
        metavar="SCENARIO",
        help=f"What to break: {', '.join(FAULT_SCENARIOS[1:])}; or all, every one in turn.",
    )
    parser.add_argument(
        "--json", dest="json_path", type=file_path, metavar="FILE", help="Write the figures and checks here."
    )
    parser.add_argument(
        "--suite",
        action="store_true",
        help="With failover: the switch under the whole suite's load (Gunicorn, the ASGI tier, Celery, Locust) "
        "and its connection checks, instead of 4 writer threads (about 2 minutes).",
    )
    return parser


@_command(fault_parser)
def fault_command(args: argparse.Namespace) -> int:
    """Break something under load (on embedded servers) and measure how the suite comes back."""
    import json
    from dataclasses import asdict

    from . import preflight
    from .fault_scenarios import SCENARIOS
    from .faults import POOL

    if args.suite and args.scenario != "failover":
        raise UsageError("--suite applies to the failover scenario only")
    preflight.check_suite(preflight.SuiteNeeds(pool_size=POOL, embedded_only=True))
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        print(f"== {name}{' --suite' if args.suite else ''}", flush=True)
        result = SCENARIOS[name](suite=True) if args.suite else SCENARIOS[name]()
        results.append(result)
        for key, value in result.figures.items():
            print(f"   {key}: {value}")
        for check in result.checks:
            print(f"   {_mark(check.passed)} {check.number}. {check.name}: {check.detail}", flush=True)
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(
            json.dumps(
                [
                    {"name": r.name, "passed": r.passed, "figures": r.figures, "checks": [asdict(c) for c in r.checks]}
                    for r in results
                ],
                indent=1,
            )
        )
    return 0 if all(r.passed for r in results) else EXIT_FAILED


def _mark(passed: bool) -> str:
    """PASS / FAIL, in green / red on a terminal only (a file or a pipe gets the plain word)."""
    word, colour = ("PASS", 32) if passed else ("FAIL", 31)
    return f"\x1b[{colour}m{word}\x1b[0m" if sys.stdout.isatty() else word


# -- forkpool demo -----------------------------------------------------------------------------------------------


def demo_parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=demo_command.__doc__)
    parser.add_argument(
        "--report", dest="report_dir", type=dir_path, metavar="DIRECTORY", help="Write report files and logs here."
    )
    parser.add_argument(
        "--no-contrast", action="store_true", help="Skip the short naive run that shows why the hooks exist."
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="Then past one machine (about 45 s more): a fleet of 4 hosts x 20 connections onto "
        "max_connections 30, refused directly, run through PgBouncer.",
    )
    return parser


@_command(demo_parser)
def demo_command(args: argparse.Namespace) -> int:
    """The tour: 3 web workers, 2 task processes, 2 ASGI workers, pools of 4, mixed load with recycling and kills."""
    from . import preflight

    report_dir = args.report_dir
    preflight.check_suite(preflight.SuiteNeeds(pool_size=4, pgbouncer=args.pgbouncer))
    # The async tier adds about a second to the tour (README: the proof): its Gunicorn starts beside the others.
    params = dict(
        web_workers=3,
        web_threads=1,
        worker_concurrency=2,
        asgi_workers=2,
        pool_size=4,
        duration=20.0,
        users=10,
        task_rate=5.0,
        max_requests=150,
        max_tasks_per_child=25,
        preload=False,
        kill_workers=3,
        max_connections=100,
        json_path=None,
        report_dir=report_dir,
        naive=False,
    )
    code = _run(params)
    if not args.no_contrast:
        print("\nNow the same suite without the per-process hooks (pool created in the master, inherited):", flush=True)
        contrast = {
            **params,
            "duration": 8.0,
            "max_requests": 0,
            "max_tasks_per_child": 0,
            "kill_workers": 0,
            "asgi_workers": 0,
            "naive": True,
            "report_dir": report_dir / "naive" if report_dir else None,
        }
        _run(contrast)
    if args.pgbouncer:
        code = _fleet_contrast(params, report_dir) or code
    return code


# The demo's fleet: 4 hosts x (2 web + 2 task processes) x pool 5 = 80 client connections, on a server of 30.
FLEET_DEMO = dict(
    hosts=4,
    web_workers=2,
    worker_concurrency=2,
    asgi_workers=0,
    pool_size=5,
    max_connections=30,
    duration=8.0,
    users=16,
    task_rate=8.0,
    max_requests=60,
    max_tasks_per_child=10,
    kill_workers=2,
    pgbouncer=True,
    pgbouncer_pool_size=10,
)


def _fleet_contrast(params: dict[str, Any], report_dir: Path | None) -> int:
    """The same fleet twice: directly it cannot fit (the budget says so, nothing starts); through PgBouncer it runs."""
    from forkpool.budget import Budget, ServerLimits

    from .run import LoadOptions

    fleet = {**params, **FLEET_DEMO, "report_dir": report_dir / "fleet" if report_dir else None}
    options = LoadOptions(**{k: v for k, v in fleet.items() if k not in ("json_path", "report_dir")})
    print(
        f"\nPast one machine: {options.hosts} hosts, each {options.deployment().ceiling} connections, onto "
        f"max_connections {options.max_connections}. Directly, the budget refuses it before anything starts:"
    )
    limits = ServerLimits(options.max_connections, 3, 0)  # the embedded server's superuser_reserved_connections
    for line in Budget(options.deployment(), limits).explain():
        print(f"  budget  {line}")
    print(
        f"Through PgBouncer (transaction pooling, {options.pgbouncer_pool_size} server connections + "
        f"{options.pgbouncer_reserve} reserve), the same fleet:",
        flush=True,
    )
    return _run(fleet)


def _run(params: dict[str, Any]) -> int:
    from rich.console import Console

    from .report import render_terminal, write_json, write_reports
    from .run import LoadOptions, run_loadtest

    params = dict(params)
    json_path, report_dir = params.pop("json_path"), params.pop("report_dir")
    options = LoadOptions(**params)
    console = Console()
    report = run_loadtest(options, console, log_dir=report_dir / "logs" if report_dir else None)
    render_terminal(report, console)
    if json_path:
        write_json(report, json_path)
    if report_dir:
        write_reports(report, report_dir)
    if report.checks and report.checks[0].number == 0:
        return EXIT_DOES_NOT_FIT
    return 0 if report.passed else EXIT_FAILED


# -- forkpool stats ----------------------------------------------------------------------------------------------


def stats_parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=stats_command.__doc__)
    parser.add_argument(
        "--url", metavar="URL", help="The suite's web URL (default: the suite `forkpool up` started, else :8000)."
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="Where to count the server's sessions (default: `forkpool up`'s, else DATABASE_URL).",
    )
    parser.add_argument("--json", dest="as_json", action="store_true", help="Machine-readable output.")
    return parser


@_command(stats_parser)
def stats_command(args: argparse.Namespace) -> int:
    """Every process's pool in a running suite, totals per role, and the server's count beside them."""
    import json
    import urllib.error

    from . import preflight
    from .stats_view import collect, read_state

    state = read_state()
    url = (args.url or state.get("web_url") or "http://127.0.0.1:8000").rstrip("/")
    # A bad URL is named as the user gave it: the option, `forkpool up`'s state file, or the variable.
    database_url, setting = args.database_url, "--database-url"
    if not database_url and state.get("database_url"):
        database_url, setting = state["database_url"], "--database-url (default: `forkpool up`'s)"
    elif not database_url:
        database_url, setting = os.environ.get("DATABASE_URL"), "DATABASE_URL"
    if database_url:
        preflight.check_database(database_url, setting)
    preflight.check_web(url)
    try:
        found = collect(url, database_url)
    except (urllib.error.URLError, OSError) as exc:
        raise CommandFailed(f"no suite answers at {url}: {exc}") from None
    except psycopg2.Error as exc:
        raise CommandFailed(f"cannot count the server's sessions: {describe_error(exc)}") from None
    if args.as_json:
        print(json.dumps(found, indent=1))
        return 0
    from .report import render_stats

    render_stats(found)
    return 0


# -- forkpool up -------------------------------------------------------------------------------------------------


def up_parser(prog: str) -> CommandParser:
    parser = CommandParser(prog=prog, description=up_command.__doc__)
    parser.add_argument(
        "--port",
        type=count(1, 65535),
        default=env_default("PORT", 8000),
        metavar="PORT",
        help=f"The suite's web port. Default {os.environ.get('PORT') or 8000} (env PORT).",
    )
    add_size_options(parser)
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="Put a PgBouncer (transaction pooling) between the suite and "
        "PostgreSQL; its admin console answers SHOW CLIENTS.",
    )
    return parser


@_command(up_parser)
def up_command(args: argparse.Namespace) -> int:
    """Run the suite in the foreground until Ctrl-C or SIGTERM; then stop everything it started."""
    from . import preflight
    from .foreground import run_foreground

    preflight.check_suite(
        preflight.SuiteNeeds(
            args.pool_size,
            args.web_threads,
            port=args.port,
            port_setting=setting_of(args.port, "--port"),
            pgbouncer=args.pgbouncer,
        )
    )
    return run_foreground(
        args.port, args.web_workers, args.web_threads, args.worker_concurrency, args.pool_size, args.pgbouncer
    )


# Each command's parser, by name: what tests/test_cli.py checks against the list of every option.
PARSERS: dict[str, Callable[[str], CommandParser]] = {
    "demo": demo_parser,
    "loadtest": loadtest_parser,
    "soak": soak_parser,
    "fault": fault_parser,
    "up": up_parser,
    "stats": stats_parser,
    "initdb": initdb_parser,
}
