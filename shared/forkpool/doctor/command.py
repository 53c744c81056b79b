"""``forkpool doctor``: examine a live deployment on this host from the outside.

Exit codes: 0 clean (notes allowed), 1 findings, 2 usage. It never sends
anything on an examined process's sockets and never attaches to a process: it
reads the kernel's tables, and the servers' own session lists when given a DSN
or Redis URL (with one short connection of its own, named ``forkpool-doctor``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ..errors import ConfigError, import_extra
from ..settings import describe_error, dsn_identity, dsn_secrets, redact_text
from .discovery import find_servers, find_trees
from .findings import ERROR, Expectations, Finding, evaluate
from .render import as_json, as_table
from .survey import survey


def doctor_command(
    argv: list[str], prog: str, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> int:
    """Check a running Gunicorn / Celery deployment from the outside: shared sockets, masters, counts."""
    # `parser_class`: the `forkpool` command's (cli.CommandParser: a mistake is one line), passed in because
    # this module sits below cli in the layers.
    parser = parser_class(prog=prog, description=doctor_command.__doc__)
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="A master's pid (repeatable); default: every Gunicorn arbiter and Celery main process.",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL"),
        metavar="URL",
        help="PostgreSQL to match sessions against (default: DATABASE_URL).",
    )
    parser.add_argument(
        "--redis-url", default=None, metavar="URL", help="Redis to match CLIENT LIST against (needs the redis extra)."
    )
    parser.add_argument(
        "--pool-size",
        action="append",
        default=[],
        metavar="[SERVER=]N",
        help="Expected database connections per worker: N for all, or gunicorn=N / celery=N.",
    )
    parser.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE[:ATTR]",
        help="Import the application (as forkpool budget --app does) and expect, per worker, "
        "the PostgreSQL connections its pools may hold at most (each protected pool's "
        "maximum, forkpool's own pools' max_size); --pool-size N still wins.",
    )
    parser.add_argument(
        "--idle-in-transaction",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="Flag sessions idle in transaction longer than this. Default 60.",
    )
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="Refresh the table every SECONDS (default 2) until Ctrl-C.",
    )
    args = parser.parse_args(argv)
    sizes = _pool_sizes(args.pool_size)
    if args.app and "*" not in sizes:
        expected = _expected_from_app(args.app)
        if expected is not None:
            sizes["*"] = expected
    expect = Expectations(sizes, args.idle_in_transaction)
    import_extra("psutil", "doctor", "forkpool doctor")
    if not args.json:
        import_extra("rich", "doctor", "forkpool doctor")
    if args.watch:
        return _watch(args, expect)
    report, findings = _examine(args, expect)
    if args.json:
        print(json.dumps(as_json(report, findings, expect), indent=1))
    else:
        from rich.console import Console

        Console().print(as_table(report, findings, expect))
    return 1 if any(f.severity == ERROR for f in findings) else 0


def _examine(args: argparse.Namespace, expect: Expectations) -> tuple[Any, list[Finding]]:
    from .. import _sockets
    from .._drivers import BadConninfo, driver_error

    if not _sockets.readable():
        raise ConfigError(
            f"forkpool doctor reads sockets from Linux's /proc, which this system ({sys.platform}) does not "
            "offer: nothing was checked (run it on the Linux host or in the container of the deployment)"
        )
    try:
        servers = find_servers(args.dsn, args.redis_url)
    except BadConninfo as exc:
        raise ConfigError(f"--dsn / DATABASE_URL is not a valid DSN: {_describe(exc, args.dsn)}") from None
    redis_error = _redis_errors(args.redis_url)
    processes = find_trees(args.pid)
    missing = sorted(set(args.pid) - {p.pid for p in processes})
    if missing:
        raise ConfigError(f"--pid {missing[0]}: no such process, or not one this user may examine")
    try:
        found = survey(processes, servers, args.dsn, args.redis_url)
    except driver_error() as exc:
        raise ConfigError(
            f"cannot list the sessions of {dsn_identity(args.dsn)} (--dsn / DATABASE_URL): {_describe(exc, args.dsn)}"
        ) from None
    except redis_error as exc:
        raise ConfigError(
            f"cannot list the clients of {redact_text(args.redis_url)} (--redis-url): {_describe(exc, args.redis_url)}"
        ) from None
    return found, evaluate(found, expect)


def _redis_errors(redis_url: str | None) -> type[BaseException] | tuple[type[BaseException], ...]:
    """The errors a Redis URL's survey may raise (nothing to catch without one); a bad URL refused now."""
    if not redis_url:
        return ()
    redis = import_extra("redis", "redis", "forkpool doctor --redis-url")
    try:
        redis.connection.parse_url(redis_url)
    except ValueError as exc:
        raise ConfigError(f"--redis-url is not a valid Redis URL: {_describe(exc, redis_url)}") from None
    errors: type[BaseException] = redis.RedisError
    return errors


def _watch(args: argparse.Namespace, expect: Expectations) -> int:
    from rich.live import Live

    code = 0
    with Live(auto_refresh=False) as live:
        try:
            while True:
                found, findings = _examine(args, expect)
                code = 1 if any(f.severity == ERROR for f in findings) else 0
                live.update(as_table(found, findings, expect), refresh=True)
                time.sleep(args.watch)
        except KeyboardInterrupt:
            pass
    return code


def _describe(exc: BaseException, dsn: str | None) -> str:
    return describe_error(exc, dsn_secrets(dsn) if dsn else ())


def _expected_from_app(specs: list[str]) -> int | None:
    """Connections one worker may hold, from the pools the app makes (budget.held_pools: one source of truth)."""
    from ..budget import expected_per_process, held_pools, load_app

    for spec in specs:
        load_app(spec)
    pools = held_pools()
    expected = expected_per_process(pools)
    if expected is None and pools:
        print("forkpool doctor: --app: a pool has no bound, no per-worker count is expected", file=sys.stderr)
    return expected


def _pool_sizes(values: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for value in values:
        server, _, number = value.rpartition("=")
        try:
            size = int(number)
        except ValueError:
            raise ConfigError(f"--pool-size {value!r}: expected N or SERVER=N (gunicorn=4)") from None
        if size < 0 or server not in ("", "gunicorn", "celery", "process"):
            raise ConfigError(f"--pool-size {value!r}: N is a count >= 0, SERVER one of gunicorn, celery, process")
        sizes[server or "*"] = size
    return sizes


if __name__ == "__main__":
    sys.exit(doctor_command(sys.argv[1:], "forkpool doctor"))
