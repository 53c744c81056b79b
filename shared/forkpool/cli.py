"""The ``forkpool`` command: the library's own subcommands, plus any that installed packages add.

A package adds ``forkpool NAME`` the way Flask extensions add ``flask``
subcommands, with an entry point in the group ``forkpool.commands``::

    [project.entry-points."forkpool.commands"]
    demo = "harness.cli:demo_command"

The object it names is called as ``command(argv, prog)`` (the arguments after
NAME, and ``"forkpool NAME"`` for its usage lines) and returns an exit code;
the first line of its docstring is its line in ``forkpool --help``. A command
parses its options with :class:`CommandParser` and takes the options several
commands share (:func:`add_size_options`), the value types (:func:`count`,
:func:`number`, :func:`file_path`, :func:`dir_path`, :func:`env_default`) and
the exit codes from here, so that every ``forkpool`` command reads and fails alike.

Exit codes: 0 success; 1 a check failed, or the command could not finish
(:class:`CommandFailed`); 2 bad usage or configuration (:class:`UsageError`,
any other ``ForkpoolError``); 3 the plan does not fit the server's connection
slots; 130 interrupted (Ctrl-C). A user's mistake ends in one line on stderr,
never a traceback, and never shows a password.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError, ForkpoolError
from .settings import describe_error, redact_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DOES_NOT_FIT = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
ENTRY_POINT_GROUP = "forkpool.commands"

Command = Callable[[list[str], str], "int | None"]


class UsageError(ForkpoolError):
    """The command cannot run as asked; the message says what to change (exit 2)."""


class CommandFailed(ForkpoolError):
    """The command ran and could not finish; the message says why (exit 1)."""


class CommandParser(argparse.ArgumentParser):
    """The option parser of a ``forkpool`` command: a mistake is one line (a UsageError, exit 2), never the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


class FromEnv(str):
    """An option's default read from an environment variable (:func:`env_default`): argparse parses it like a
    value on the command line when the option is not given, and the error then names the variable."""

    env: str

    def __new__(cls, value: str, env: str) -> FromEnv:
        self = super().__new__(cls, value)
        self.env = env
        return self


class EnvInt(int):
    """A whole number that came from an environment variable (see :func:`setting_of`)."""

    env: str


def env_default(env: str, default: Any) -> Any:
    """An option's default: the variable `env` when it is set (parsed by the option's type only if the option
    is not given), else `default`."""
    raw = os.environ.get(env)
    return FromEnv(raw, env) if raw else default


def setting_of(value: object, flag: str) -> str:
    """Where an option's value came from, as a message names it: its environment variable, else the flag."""
    env = getattr(value, "env", None)
    return env if isinstance(env, str) else flag


def count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number in [minimum, maximum] (an argparse type)."""

    def parse(raw: str) -> int:
        shown = f"{raw.env}={str(raw)!r}" if isinstance(raw, FromEnv) else repr(raw)
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{shown} is below {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{shown} is above {maximum}")
        if isinstance(raw, FromEnv):
            found = EnvInt(value)
            found.env = raw.env
            return found
        return value

    return parse


def number(minimum: float) -> Callable[[str], float]:
    """A finite number at least `minimum` (an argparse type)."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{raw!r} is not a finite number")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{raw!r} is below {minimum:g}")
        return value

    return parse


def file_path(raw: str) -> Path:
    """A file to write (an argparse type): anything but an existing directory."""
    if Path(raw).is_dir():
        raise argparse.ArgumentTypeError(f"{raw!r} is a directory, expected a file")
    return Path(raw)


def dir_path(raw: str) -> Path:
    """A directory to write into (an argparse type): anything but an existing file."""
    if Path(raw).exists() and not Path(raw).is_dir():
        raise argparse.ArgumentTypeError(f"{raw!r} is a file, expected a directory")
    return Path(raw)


# The options of every command that plans a deployment (budget, and the suite's loadtest and up):
# (flag, environment variable, help).
SIZE_OPTIONS = (
    ("--web-workers", "WEB_CONCURRENCY", "Gunicorn worker processes."),
    ("--web-threads", "WEB_THREADS", "Threads per web worker (> 1: gthread)."),
    ("--worker-concurrency", "WORKER_CONCURRENCY", "Celery task processes."),
    ("--pool-size", "DB_POOL_SIZE", "Connections per process (fixed-size pools)."),
)
SIZE_DEFAULTS: Mapping[str, int] = {"web_workers": 2, "web_threads": 1, "worker_concurrency": 2, "pool_size": 4}


def add_size_options(
    parser: argparse.ArgumentParser,
    defaults: Mapping[str, int] = SIZE_DEFAULTS,
    *,
    from_env: bool = True,
    minimum: Mapping[str, int] | None = None,
) -> None:
    """--web-workers, --web-threads, --worker-concurrency, --pool-size: each at least 1 unless `minimum` says
    otherwise; with `from_env`, each defaults to its environment variable (WEB_CONCURRENCY, ...) when set."""
    for flag, env, text in SIZE_OPTIONS:
        dest = flag[2:].replace("-", "_")
        env_option(parser, flag, env if from_env else None, defaults[dest], text, (minimum or {}).get(dest, 1))


def env_option(
    parser: argparse.ArgumentParser, flag: str, env: str | None, default: int, text: str, minimum: int = 1
) -> None:
    """A whole-number option of at least `minimum`, defaulting to the variable `env` (when given and set)."""
    raw = os.environ.get(env) if env else None
    parser.add_argument(
        flag,
        type=count(minimum),
        default=env_default(env, default) if env else default,
        metavar="N",
        help=f"{text} Default {raw or default} (env {env})." if env else f"{text} Default {default}.",
    )


def budget_command(argv: list[str], prog: str) -> int:
    """Does a deployment fit the server's connection slots? Prints the arithmetic; exit 3 when not."""
    from .budget import HOSTS_ENV, Budget, DeploymentPlan, PoolerLimits

    parser = CommandParser(prog=prog, description=budget_command.__doc__)
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
    add_size_options(parser, minimum={"worker_concurrency": 0})  # a deployment may have no task processes
    parser.add_argument(
        "--asgi-workers",
        type=count(0),
        default=0,
        metavar="N",
        help="Async (uvicorn) worker processes, each with a pool of the same size. Default 0.",
    )
    parser.add_argument(
        "--other-clients",
        type=count(0),
        default=0,
        metavar="N",
        help="Sessions of anything else on the server (admin, migrations, monitoring). Default 0.",
    )
    env_option(parser, "--hosts", HOSTS_ENV, 1, "Hosts each running this same deployment (a fleet).")
    parser.add_argument(
        "--pgbouncer-pool-size",
        type=count(1),
        metavar="N",
        help="PgBouncer (transaction pooling) stands between the fleet and the server, with this "
        "default_pool_size: clients are then counted against its max_client_conn, and the "
        "server sees only its pool.",
    )
    parser.add_argument(
        "--pgbouncer-reserve",
        type=count(0),
        default=0,
        metavar="N",
        help="With --pgbouncer-pool-size: PgBouncer's reserve_pool_size. Default 0.",
    )
    parser.add_argument(
        "--max-client-conn",
        type=count(1),
        default=100,
        metavar="N",
        help="With --pgbouncer-pool-size: PgBouncer's max_client_conn. Default 100 (PgBouncer's).",
    )
    parser.add_argument(
        "--max-connections",
        type=count(1),
        metavar="N",
        help="Plan offline against this max_connections instead of asking the server "
        "(DATABASE_URL's; with --app, each pool's own).",
    )
    parser.add_argument(
        "--superuser-reserved",
        type=count(0),
        default=3,
        metavar="N",
        help="With --max-connections: superuser_reserved_connections. Default 3.",
    )
    parser.add_argument(
        "--reserved",
        type=count(0),
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
    from ._drivers import connect_once, driver_error
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
        conn = connect_once(settings.dsn, "forkpool-budget", 5)
    except driver_error() as exc:
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

    return run(argv, prog, parser_class=CommandParser)


LIBRARY_COMMANDS: dict[str, Command] = {"budget": budget_command, "doctor": doctor_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``forkpool``."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = available_commands()
    if not args or args[0] in ("-h", "--help"):
        print(_overview(commands))
        return EXIT_OK if args else EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in commands:
        known = ", ".join(sorted(commands))
        print(f"forkpool: no command {name!r} (commands: {known}; see forkpool --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = _load(commands[name])(rest, f"forkpool {name}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help, or a command that exits by itself
        if isinstance(exc.code, str):
            print(f"forkpool {name}: {redact_text(exc.code)}", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_FAILED)
    except CommandFailed as exc:
        print(f"forkpool {name}: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
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


if __name__ == "__main__":
    sys.exit(main())
