"""The ``forkpool`` command: the library's own subcommands, plus any that installed packages add.

A package adds ``forkpool NAME`` the way Flask extensions add ``flask``
subcommands, with an entry point in the group ``forkpool.commands``::

    [project.entry-points."forkpool.commands"]
    demo = "harness.cli:demo_command"

The object it names is called as ``command(argv, prog)`` (the arguments after
NAME, and ``"forkpool NAME"`` for its usage lines) and returns an exit code;
the first line of its docstring is its line in ``forkpool --help``.

Exit codes: 0 success; 1 a check failed; 2 bad usage or configuration;
3 the plan does not fit the server's connection slots. A user's mistake ends
in one line on stderr, never a traceback, and never shows a password.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError, ForkpoolError
from .settings import describe_error, redact_text

EXIT_FAILED, EXIT_USAGE, EXIT_DOES_NOT_FIT = 1, 2, 3
ENTRY_POINT_GROUP = "forkpool.commands"

Command = Callable[[list[str], str], "int | None"]


class UsageError(ForkpoolError):
    """The command cannot run as asked; the message says what to change."""


def budget_command(argv: list[str], prog: str) -> int:
    """Does a deployment fit the server's connection slots? Prints the arithmetic; exit 3 when not."""
    from .budget import HOSTS_ENV, Budget, DeploymentPlan, PoolerLimits

    parser = argparse.ArgumentParser(prog=prog, description=budget_command.__doc__)
    parser.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE[:ATTR]",
        help="Import the application (MODULE, MODULE:ATTR or MODULE:FACTORY(), as Gunicorn and "
        "Celery do; repeatable) and plan with the pools one of its processes holds: every "
        "protected pool at its maximum, and forkpool's own (configure(), pool_for(), "
        "DB_POOL_*). Each PostgreSQL server its pools use is checked with the pool's own DSN. "
        "Instead of --pool-size.",
    )
    _size_option(parser, "--web-workers", "WEB_CONCURRENCY", 2, "Gunicorn worker processes.")
    _size_option(parser, "--web-threads", "WEB_THREADS", 1, "Threads per web worker (> 1: gthread).")
    _size_option(parser, "--worker-concurrency", "WORKER_CONCURRENCY", 2, "Celery task processes.", minimum=0)
    _size_option(parser, "--pool-size", "DB_POOL_SIZE", 4, "Connections per process (fixed-size pools).")
    parser.add_argument(
        "--asgi-workers",
        type=_count(0),
        default=0,
        metavar="N",
        help="Async (uvicorn) worker processes, each with a pool of the same size. Default 0.",
    )
    parser.add_argument(
        "--other-clients",
        type=_count(0),
        default=0,
        metavar="N",
        help="Sessions of anything else on the server (admin, migrations, monitoring). Default 0.",
    )
    _size_option(parser, "--hosts", HOSTS_ENV, 1, "Hosts each running this same deployment (a fleet).")
    parser.add_argument(
        "--pgbouncer-pool-size",
        type=_count(1),
        metavar="N",
        help="PgBouncer (transaction pooling) stands between the fleet and the server, with this "
        "default_pool_size: clients are then counted against its max_client_conn, and the "
        "server sees only its pool.",
    )
    parser.add_argument(
        "--pgbouncer-reserve",
        type=_count(0),
        default=0,
        metavar="N",
        help="With --pgbouncer-pool-size: PgBouncer's reserve_pool_size. Default 0.",
    )
    parser.add_argument(
        "--max-client-conn",
        type=_count(1),
        default=100,
        metavar="N",
        help="With --pgbouncer-pool-size: PgBouncer's max_client_conn. Default 100 (PgBouncer's).",
    )
    parser.add_argument(
        "--max-connections",
        type=_count(1),
        metavar="N",
        help="Plan offline against this max_connections instead of asking the server "
        "(DATABASE_URL's; with --app, each pool's own).",
    )
    parser.add_argument(
        "--superuser-reserved",
        type=_count(0),
        default=3,
        metavar="N",
        help="With --max-connections: superuser_reserved_connections. Default 3.",
    )
    parser.add_argument(
        "--reserved",
        type=_count(0),
        default=0,
        metavar="N",
        help="With --max-connections: reserved_connections (PostgreSQL 16+). Default 0.",
    )
    args = parser.parse_args(argv)
    pooler = None
    if args.pgbouncer_pool_size:
        pooler = PoolerLimits(args.max_client_conn, args.pgbouncer_pool_size, args.pgbouncer_reserve)
    if args.app:
        if any(arg == "--pool-size" or arg.startswith("--pool-size=") for arg in argv):
            raise UsageError("--app and --pool-size: the app's pools are the pool size; give one of them")
        return _app_budget(args, pooler)
    plan = DeploymentPlan(
        args.web_workers,
        args.web_threads,
        args.worker_concurrency,
        args.pool_size,
        args.other_clients,
        args.asgi_workers,
        args.hosts,
    )
    verdict = Budget(plan, _limits(args.max_connections, args.superuser_reserved, args.reserved), pooler)
    for line in verdict.explain():
        print(line)
    return 0 if verdict.fits else EXIT_DOES_NOT_FIT


def _app_budget(args: argparse.Namespace, pooler: Any) -> int:
    """The plan from the pools the app's processes hold (``budget.held_pools``), per PostgreSQL server."""
    from .budget import POSTGRESQL, Budget, DeploymentPlan, held_pools, load_app

    for spec in args.app:
        load_app(spec)
    pools = held_pools()
    threads = args.web_threads
    print(f"pools per process ({', '.join(args.app)}):")
    if not pools:
        print("  none: nothing protected, configured, used, or sized by DB_POOL_SIZE / DB_POOL_MAX")
    for pool in pools:
        where = (
            f"PostgreSQL {pool.server or '(server not known)'}"
            if pool.backend == POSTGRESQL
            else (f"{pool.backend}: not counted against PostgreSQL")
        )
        print(f"  {pool.describe(threads)} -> {where}")
    code = 0
    groups: dict[str, list[Any]] = {}
    for pool in pools:
        if pool.backend == POSTGRESQL:
            groups.setdefault(pool.server, []).append(pool)
    for server, group in groups.items():
        bounds = [pool.bound(threads) for pool in group]
        listed = " + ".join(pool.describe(threads) for pool in group)
        if None in bounds:
            print(
                f"PostgreSQL {server or '(server not known)'}: {listed}: a pool with no bound, "
                "the total cannot be checked"
            )
            code = code or EXIT_FAILED
            continue
        per = sum(bounds)
        print(f"PostgreSQL {server or '(server not known)'}: pool {per} per process = {listed}")
        dsn = next((pool.dsn for pool in group if pool.dsn), "")
        limits = _limits(
            args.max_connections, args.superuser_reserved, args.reserved, dsn=dsn, whose=group[0].label, app=True
        )
        # Every process of every role holds the same pools; threads are judged per pool below.
        plan = DeploymentPlan(
            args.web_workers, 1, args.worker_concurrency, per, args.other_clients, args.asgi_workers, args.hosts
        )
        verdict = Budget(plan, limits, pooler)
        for line in verdict.explain():
            print(line)
        if not verdict.fits:
            code = EXIT_DOES_NOT_FIT
    for pool in pools:
        bound = pool.bound(threads)
        if bound is not None and bound < threads:
            print(
                f"threads: {threads} threads per web worker, but {pool.label} holds at most {bound} "
                f"({pool.source}) -> DOES NOT FIT"
            )
            code = EXIT_DOES_NOT_FIT
    return code


def _limits(
    max_connections: int | None,
    superuser_reserved: int,
    reserved: int,
    *,
    dsn: str | None = None,
    whose: str = "DATABASE_URL",
    app: bool = False,
) -> Any:
    import psycopg2

    from .budget import ServerLimits, read_server_limits
    from .settings import build_settings

    if max_connections is not None:
        return ServerLimits(max_connections, superuser_reserved, reserved)
    dsn = os.environ.get("DATABASE_URL") if dsn is None else dsn
    if not dsn:
        print(
            f"(no DSN for {whose} and no --max-connections: PostgreSQL's defaults, 100 and 3 reserved)"
            if app
            else "(no DATABASE_URL and no --max-connections: PostgreSQL's defaults, 100 and 3 reserved)"
        )
        return ServerLimits(100, 3, 0)
    offline = "or plan offline with --max-connections N"
    try:
        settings = build_settings(dsn=dsn)
    except ConfigError as exc:  # names DATABASE_URL and shows its value, password masked
        raise UsageError(f"{exc}; use a URL like postgresql://user@host:5432/dbname, {offline}") from None
    try:
        conn = psycopg2.connect(settings.dsn, application_name="forkpool-budget", connect_timeout=5)
    except psycopg2.Error as exc:
        named = (
            f"{settings.identity} (the server of {whose})" if app else f"DATABASE_URL={settings.redact(settings.dsn)!r}"
        )
        raise UsageError(
            f"{named}: cannot connect ({settings.redact(describe_error(exc))}); start the server or "
            f"correct the URL, {offline}"
        ) from None
    try:
        return read_server_limits(conn)
    finally:
        conn.close()


def doctor_command(argv: list[str], prog: str) -> int:
    """Check a running Gunicorn / Celery deployment from the outside: shared sockets, masters, counts."""
    from .doctor.command import doctor_command as run

    return run(argv, prog)


LIBRARY_COMMANDS: dict[str, Command] = {"budget": budget_command, "doctor": doctor_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``forkpool``."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = available_commands()
    if not args or args[0] in ("-h", "--help"):
        print(_overview(commands))
        return 0 if args else EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in commands:
        known = ", ".join(sorted(commands))
        print(f"forkpool: no command {name!r} (commands: {known}; see forkpool --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = _load(commands[name])(rest, f"forkpool {name}")
    except KeyboardInterrupt:
        return 130
    except ForkpoolError as exc:  # configuration and usage errors: one line, no traceback
        print(f"forkpool {name}: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    return int(code or 0)


def available_commands() -> dict[str, Any]:
    """Library commands, then installed packages' commands (entry points), by name."""
    found: dict[str, Any] = dict(LIBRARY_COMMANDS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point)
    return found


def _load(command: Any) -> Command:
    return command.load() if hasattr(command, "load") else command  # type: ignore[no-any-return]  # a Command, or its entry point


def _overview(commands: dict[str, Any]) -> str:
    lines = [
        "usage: forkpool COMMAND [ARGS]...",
        "",
        "Fork-safe per-process PostgreSQL pools: tools for a deployment.",
        "",
        "commands:",
    ]
    for name in sorted(commands):
        try:
            doc = (_load(commands[name]).__doc__ or "").strip().splitlines()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break --help
            doc = [f"(cannot load: {describe_error(exc)})"]
        lines.append(f"  {name:<10} {doc[0] if doc else ''}")
    lines += ["", "forkpool COMMAND --help shows a command's options."]
    return "\n".join(lines)


def _size_option(
    parser: argparse.ArgumentParser, flag: str, env: str, default: int, text: str, minimum: int = 1
) -> None:
    raw = os.environ.get(env)
    try:
        value = _count(minimum)(raw) if raw else default
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{env}={raw!r}: {exc}; set a whole number of at least {minimum}") from None
    parser.add_argument(
        flag, type=_count(minimum), default=value, metavar="N", help=f"{text} Default {value} (env {env})."
    )


def _count(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
