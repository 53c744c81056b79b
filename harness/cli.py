"""The suite's subcommands of `forkpool`: demo, loadtest, soak, fault, up, stats, initdb.

The library owns the `forkpool` command (forkpool/cli.py); these join it through
the entry point group ``forkpool.commands`` (root pyproject.toml), each as a
``name_command(argv, prog)`` function wrapping the click command below.

Exit codes: 0 every check passed; 1 a check failed; 2 bad usage or configuration;
3 the plan does not fit the server's connection slots.

Every command first checks what it needs (harness/preflight.py): a setting that
cannot work ends the command before anything starts, with one line on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import psycopg2

import forkpool
from forkpool.redact import describe_error, redact_text
from suite.stacks import FORKPOOL, STACKS

EXIT_FAILED, EXIT_USAGE, EXIT_DOES_NOT_FIT = 1, 2, 3


def size_options(defaults: dict[str, int], from_env: bool) -> Callable[[Callable], Callable]:
    """--web-workers ... --pool-size, shared by every command that plans a deployment."""
    specs = [
        ("--web-workers", "WEB_CONCURRENCY", "Gunicorn worker processes."),
        ("--web-threads", "WEB_THREADS", "Threads per web worker (> 1: gthread)."),
        ("--worker-concurrency", "WORKER_CONCURRENCY", "Celery task processes."),
        ("--pool-size", "DB_POOL_SIZE", "Connections per process (fixed-size pools)."),
    ]

    def decorate(command: Callable) -> Callable:
        for flag, env, help_text in reversed(specs):
            name = flag[2:].replace("-", "_")
            command = click.option(
                flag,
                type=click.IntRange(min=1),
                default=defaults[name],
                show_default=True,
                envvar=env if from_env else None,
                show_envvar=from_env,
                help=help_text,
            )(command)
        return command

    return decorate


_CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=_CONTEXT)
def initdb() -> None:
    """Create the suite's tables in DATABASE_URL (idempotent)."""
    from forkpool.settings import build_settings, settings_from_env
    from suite.schema import init_schema_at

    from . import preflight

    preflight.check_database(os.environ.get("DATABASE_URL", ""))
    settings = build_settings(**settings_from_env())  # the pool settings too: one clear line
    try:
        init_schema_at(settings.dsn)  # one connection, no pool: nothing retries behind the user's back
    except psycopg2.Error as exc:
        raise click.ClickException(f"initdb failed: {settings.redact(describe_error(exc))}") from None
    click.echo("schema ready: tables items, events")


def fleet_options(command: Callable) -> Callable:
    """--hosts, --pgbouncer and its pool: past one machine."""
    options = [
        click.option(
            "--hosts",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Run this many copies of the suite, each a host of a fleet (its own masters, host label "
            "h1, h2, ... in every connection's name), on one PostgreSQL, Redis and task queue.",
        ),
        click.option(
            "--pgbouncer",
            is_flag=True,
            help="Put a PgBouncer (transaction pooling, from the `pgbouncer` binary) between the suite and "
            "PostgreSQL: clients counted at PgBouncer, servers at PostgreSQL (check 8).",
        ),
        click.option(
            "--pgbouncer-pool-size",
            type=click.IntRange(min=1),
            default=10,
            show_default=True,
            help="With --pgbouncer: its default_pool_size (server connections; reserve 2 more).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def load_options(command: Callable) -> Callable:
    options = [
        click.option(
            "--duration", type=click.FloatRange(min=1), default=20.0, show_default=True, help="Seconds of load."
        ),
        click.option(
            "--users",
            type=click.IntRange(min=1),
            default=10,
            show_default=True,
            help="Concurrent HTTP clients (Locust users).",
        ),
        click.option(
            "--task-rate",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            help="Tasks per second enqueued directly through Celery.",
        ),
        click.option(
            "--max-requests",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Recycle each web worker after this many requests (0: never).",
        ),
        click.option(
            "--max-tasks-per-child",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Recycle each task process after this many tasks (0: never).",
        ),
        click.option("--preload/--no-preload", default=False, show_default=True, help="Gunicorn preload_app."),
        click.option(
            "--kill-workers",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="SIGKILL this many random web, task (and asgi) processes during the load, in turn.",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=10),
            default=100,
            show_default=True,
            help="max_connections of the embedded PostgreSQL.",
        ),
        click.option(
            "--json",
            "json_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the machine-readable report here.",
        ),
        click.option(
            "--report",
            "report_dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Write report.json, report.txt, connections.png and the logs here.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(context_settings=_CONTEXT)
@size_options({"web_workers": 3, "web_threads": 1, "worker_concurrency": 2, "pool_size": 4}, from_env=False)
@load_options
@click.option(
    "--asgi-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also run the async tier (Starlette under Gunicorn's uvicorn workers) with this many workers, "
    "pool --pool-size each; half the users load it (0: off).",
)
@click.option("--naive", is_flag=True, help="Contrast run with the per-process hooks off: expected to fail.")
@click.option(
    "--stack",
    type=click.Choice(STACKS),
    default=FORKPOOL,
    show_default=True,
    help="The data layer web and workers run on: forkpool's pool; Flask-SQLAlchemy / SQLAlchemy "
    "protected by forkpool.protect(); or a Django project and its Celery worker on Django's "
    'native pool, protected by "forkpool.django".',
)
@fleet_options
def loadtest(**params: Any) -> None:
    """Boot the suite, drive load through Gunicorn and Celery, and check the connection ceiling."""
    from . import preflight

    if params["asgi_workers"] and (params["naive"] or params["stack"] != FORKPOOL):
        raise click.UsageError("--asgi-workers runs forkpool's asyncio pool: not with --naive or another --stack")
    if params["naive"] and params["stack"] != FORKPOOL:
        raise click.UsageError(
            f"--naive is the suite's own Flask app without its hooks: not with --stack {params['stack']}"
        )
    if (params["hosts"] > 1 or params["pgbouncer"]) and params["naive"]:
        raise click.UsageError("--hosts and --pgbouncer prove the hooks: not with --naive")
    if params["pgbouncer"] and params["stack"] != FORKPOOL:
        raise click.UsageError("--pgbouncer runs forkpool's own pools (prepared statements off): not with --stack")
    preflight.check_stack(params["stack"])
    preflight.check_suite(
        preflight.SuiteNeeds(params["pool_size"], params["web_threads"], pgbouncer=params["pgbouncer"])
    )
    sys.exit(_run(params))


@click.command(context_settings=_CONTEXT)
@click.option("--duration", type=click.FloatRange(min=5), default=600.0, show_default=True, help="Seconds of load.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write report files (memory.png too) and logs here.",
)
@click.option(
    "--faults",
    is_flag=True,
    help="During the load: PostgreSQL restarts, goes silent (packets dropped), then slow "
    "(embedded servers, in a private network namespace; needs root, ip and tc).",
)
def soak(duration: float, report_dir: Path | None, faults: bool) -> None:
    """Long mixed load with recycling on: connection counts and memory per process must stay flat."""
    from . import preflight

    preflight.check_suite(preflight.SuiteNeeds(pool_size=4, embedded_only=faults))
    if faults:
        _enter_private_network(
            ["soak", "--duration", str(duration), "--faults", *(["--report", str(report_dir)] if report_dir else [])]
        )
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
    sys.exit(_run(params))


def _enter_private_network(argv: list[str]) -> None:
    """Run this command again inside a new network namespace (unless already in one), and exit with it:
    dropping packets there touches nothing outside this run (harness/netfault.py)."""
    import subprocess

    from .netfault import IN_NETNS_ENV, prepare_namespace, unavailable
    from .preflight import PreflightError

    state = os.environ.get(IN_NETNS_ENV)
    if state == "new":  # the namespace's first process: bring it up once
        prepare_namespace()
        os.environ[IN_NETNS_ENV] = "1"
        return
    if state:
        return
    reason = unavailable()
    if reason:
        raise PreflightError(f"--faults: {reason}")
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "forkpool", *argv], env={**os.environ, IN_NETNS_ENV: "new"}
    )
    sys.exit(done.returncode)


@click.command(context_settings=_CONTEXT)
@click.argument(
    "scenario",
    type=click.Choice(
        [
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
    ),
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures and checks here."
)
def fault(scenario: str, json_path: Path | None) -> None:
    """Break something under load (on embedded servers) and measure how the suite comes back."""
    import json
    from dataclasses import asdict

    from . import preflight
    from .fault_scenarios import SCENARIOS
    from .faults import POOL

    preflight.check_suite(preflight.SuiteNeeds(pool_size=POOL, embedded_only=True))
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    results = []
    for name in names:
        click.echo(f"== {name}")
        result = SCENARIOS[name]()
        results.append(result)
        for key, value in result.figures.items():
            click.echo(f"   {key}: {value}")
        for check in result.checks:
            mark = click.style("PASS", fg="green") if check.passed else click.style("FAIL", fg="red")
            click.echo(f"   {mark} {check.number}. {check.name}: {check.detail}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps(
                [
                    {"name": r.name, "passed": r.passed, "figures": r.figures, "checks": [asdict(c) for c in r.checks]}
                    for r in results
                ],
                indent=1,
            )
        )
    sys.exit(0 if all(r.passed for r in results) else EXIT_FAILED)


@click.command(context_settings=_CONTEXT)
@click.option(
    "--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), help="Write report files and logs here."
)
@click.option("--no-contrast", is_flag=True, help="Skip the short naive run that shows why the hooks exist.")
@click.option(
    "--pgbouncer",
    is_flag=True,
    help="Then past one machine (about 45 s more): a fleet of 4 hosts x 20 connections onto "
    "max_connections 30, refused directly, run through PgBouncer.",
)
def demo(report_dir: Path | None, no_contrast: bool, pgbouncer: bool) -> None:
    """The tour: 3 web workers, 2 task processes, 2 ASGI workers, pools of 4, mixed load with recycling and kills."""
    from . import preflight

    preflight.check_suite(preflight.SuiteNeeds(pool_size=4, pgbouncer=pgbouncer))
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
    if not no_contrast:
        click.echo("\nNow the same suite without the per-process hooks (pool created in the master, inherited):")
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
    if pgbouncer:
        code = _fleet_contrast(params, report_dir) or code
    sys.exit(code)


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
    click.echo(
        f"\nPast one machine: {options.hosts} hosts, each {options.deployment().ceiling} connections, onto "
        f"max_connections {options.max_connections}. Directly, the budget refuses it before anything starts:"
    )
    limits = ServerLimits(options.max_connections, 3, 0)  # the embedded server's superuser_reserved_connections
    for line in Budget(options.deployment(), limits).explain():
        click.echo(f"  budget  {line}")
    click.echo(
        f"Through PgBouncer (transaction pooling, {options.pgbouncer_pool_size} server connections + "
        f"{options.pgbouncer_reserve} reserve), the same fleet:"
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


@click.command(context_settings=_CONTEXT)
@click.option("--url", help="The suite's web URL (default: the suite `forkpool up` started, else :8000).")
@click.option(
    "--database-url", help="Where to count the server's sessions (default: `forkpool up`'s, else DATABASE_URL)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(url: str | None, database_url: str | None, as_json: bool) -> None:
    """Every process's pool in a running suite, totals per role, and the server's count beside them."""
    import json
    import urllib.error

    from . import preflight
    from .stats_view import collect, read_state

    state = read_state()
    url = (url or state.get("web_url") or "http://127.0.0.1:8000").rstrip("/")
    # A bad URL is named as the user gave it: the option, `forkpool up`'s state file, or the variable.
    setting = "--database-url"
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
        raise click.ClickException(f"no suite answers at {url}: {exc}") from None
    except psycopg2.Error as exc:
        raise click.ClickException(f"cannot count the server's sessions: {describe_error(exc)}") from None
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    from .report import render_stats

    render_stats(found)


@click.command(context_settings=_CONTEXT)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, envvar="PORT")
@size_options({"web_workers": 2, "web_threads": 1, "worker_concurrency": 2, "pool_size": 4}, from_env=True)
@click.option(
    "--pgbouncer",
    is_flag=True,
    help="Put a PgBouncer (transaction pooling) between the suite and "
    "PostgreSQL; its admin console answers SHOW CLIENTS.",
)
def up(port: int, web_workers: int, web_threads: int, worker_concurrency: int, pool_size: int, pgbouncer: bool) -> None:
    """Run the suite in the foreground until Ctrl-C or SIGTERM; then stop everything it started."""
    from click.core import ParameterSource

    from . import preflight
    from .foreground import run_foreground

    from_env = click.get_current_context().get_parameter_source("port") == ParameterSource.ENVIRONMENT
    preflight.check_suite(
        preflight.SuiteNeeds(
            pool_size, web_threads, port=port, port_setting="PORT" if from_env else "--port", pgbouncer=pgbouncer
        )
    )
    sys.exit(run_foreground(port, web_workers, web_threads, worker_concurrency, pool_size, pgbouncer))


def _entry(command: click.Command) -> Callable[[list[str], str], int]:
    """A click command as a `forkpool` subcommand: user mistakes end with one line, never a traceback."""

    def run(argv: list[str], prog: str) -> int:
        from .preflight import PreflightError
        from .services import ServiceError

        try:
            command.main(args=argv, prog_name=prog, standalone_mode=True)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILED)
        except PreflightError as exc:  # already says which setting and what to do
            click.echo(f"{prog}: {redact_text(str(exc))}", err=True)
            return EXIT_USAGE
        except forkpool.ConfigError as exc:
            click.echo(f"{prog}: invalid configuration: {exc}", err=True)
            return EXIT_USAGE
        except ServiceError as exc:
            click.echo(f"{prog}: {exc}", err=True)
            return EXIT_FAILED
        return 0

    run.__doc__ = command.help
    run.__name__ = f"{command.name}_command"
    return run


demo_command = _entry(demo)
loadtest_command = _entry(loadtest)
soak_command = _entry(soak)
fault_command = _entry(fault)
up_command = _entry(up)
stats_command = _entry(stats)
initdb_command = _entry(initdb)
