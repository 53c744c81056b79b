"""Pre-flight: what a `forkpool` command needs, checked before it starts anything.

Without these checks a setting that cannot work surfaces late and noisily: a
psycopg2 traceback after the embedded Redis already started, a Celery worker
retrying an unreachable Redis for 60 s, Gunicorn's five bind retries on a taken
port. Here each is found in about a second, before any server or process is
started, and reported as a PreflightError: one line naming the setting, its
value (any password masked) and what to do. The `forkpool` command prints it and exits 2.

Offline checks (pool settings, the port, URL syntax, the embedded binaries) run
before network ones, so a typo is never hidden behind a connect timeout.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import psycopg2
import psycopg2.extensions
import redis

from forkpool.errors import ConfigError
from forkpool.settings import build_settings, describe_error, dsn_password, redact_text, settings_from_env

from ._procs import ServiceError, postgres_bindir, redis_server_binary
from .processes import RQ, UWSGI, SuitePlan, uwsgi_binary

CONNECT_TIMEOUT_S = 5  # long enough for a remote server, short enough that a typo is not a long wait
DSN_EXAMPLE = "postgresql://user@host:5432/dbname"  # no password in it: the final redaction would mask it
REDIS_EXAMPLE = "redis://host:6379/0"
REDIS_SCHEMES = ("redis", "rediss", "unix")
# URLs the suite's processes use instead of REDIS_URL when the user sets them (suite/queue.py).
CELERY_URLS = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
EMBEDDED_PG = "or unset DATABASE_URL to use an embedded PostgreSQL"
EMBEDDED_REDIS = "or unset REDIS_URL to use an embedded Redis"


class PreflightError(ConfigError):
    """One line: the setting, its value with any password masked, what is wrong, and what to do."""


def shown(setting: str, value: object) -> str:
    """A setting as messages show it: `--port 8000` for an option, `DATABASE_URL='...'` for a variable."""
    return f"{setting} {value}" if setting.startswith("--") else f"{setting}={value!r}"


def _advice(*parts: str) -> str:
    return "; " + ", ".join(part for part in parts if part)


# -- PostgreSQL ----------------------------------------------------------------


def parse_database(url: str, setting: str = "DATABASE_URL", otherwise: str = "") -> None:
    """`url` must be a libpq DSN (URL or key=value); `otherwise` ends the advice (e.g. EMBEDDED_PG)."""
    secrets = _secret(dsn_password(url))
    try:
        psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error as exc:  # the driver's message may quote the URL: masked with `secrets`
        raise PreflightError(
            f"{shown(setting, redact_text(url, secrets))} is not a PostgreSQL URL "
            f"({describe_error(exc, secrets)})"
            f"{_advice(f'use a URL like {DSN_EXAMPLE}', otherwise)}"
        ) from None


def reach_database(url: str, setting: str = "DATABASE_URL", otherwise: str = "") -> None:
    """A server must accept a login with `url`: refused, unknown host, wrong password, no such database."""
    secrets = _secret(dsn_password(url))
    try:
        psycopg2.connect(url, application_name="forkpool-preflight", connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg2.Error as exc:
        raise PreflightError(
            f"{shown(setting, redact_text(url, secrets))}: cannot connect "
            f"({describe_error(exc, secrets)})"
            f"{_advice('start the server or correct the URL', otherwise)}"
        ) from None


def check_database(url: str, setting: str = "DATABASE_URL", otherwise: str = "") -> None:
    parse_database(url, setting, otherwise)
    reach_database(url, setting, otherwise)


# -- Redis -----------------------------------------------------------------------


def _redis_client(url: str, setting: str, otherwise: str) -> redis.Redis:
    """A client for `url` (nothing connects yet); a malformed URL is a PreflightError."""
    secrets = _secret(_url_password(url))
    try:
        if urlsplit(url).scheme not in REDIS_SCHEMES:
            raise ValueError(f"the scheme must be {', '.join(s + '://' for s in REDIS_SCHEMES)}")
        return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
    except ValueError as exc:
        raise PreflightError(
            f"{shown(setting, redact_text(url, secrets))} is not a Redis URL "
            f"({describe_error(exc, secrets)})"
            f"{_advice(f'use a URL like {REDIS_EXAMPLE}', otherwise)}"
        ) from None


def parse_redis(url: str, setting: str = "REDIS_URL", otherwise: str = "") -> None:
    _redis_client(url, setting, otherwise).close()


def reach_redis(url: str, setting: str = "REDIS_URL", otherwise: str = "") -> None:
    """A Redis server must answer PING at `url` (refused, unknown host and a wrong password all fail)."""
    secrets = _secret(_url_password(url))
    client = _redis_client(url, setting, otherwise)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise PreflightError(
            f"{shown(setting, redact_text(url, secrets))}: cannot connect "
            f"({describe_error(exc, secrets)})"
            f"{_advice('start the server or correct the URL', otherwise)}"
        ) from None
    finally:
        client.close()


# -- this machine ------------------------------------------------------------------


def check_port(port: int, setting: str = "--port", host: str = "127.0.0.1") -> None:
    """Something else on `port` would make Gunicorn retry its bind for 5 s and exit with 5 log lines."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Gunicorn does: a port whose old connections are in TIME_WAIT is free to it, so free here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PreflightError(
                f"{shown(setting, port)}: cannot listen on {host}:{port} ({exc.strerror or exc})"
                f"{_advice('stop what uses it or choose another port with --port (or PORT)')}"
            ) from None


def check_embedded(postgres: bool, redis_server: bool, why: str = "") -> None:
    """The binaries the embedded servers need, found without starting one."""
    checks = [("DATABASE_URL", postgres_bindir)] if postgres else []
    checks += [("REDIS_URL", redis_server_binary)] if redis_server else []
    for setting, find in checks:
        try:
            find()
        except ServiceError as exc:
            reason = why or f"{setting} is unset, so an embedded server is needed"
            raise PreflightError(
                f"{reason}, but {exc}{_advice('' if why else f'or set {setting} to a server of your own')}"
            ) from None


def check_pgbouncer() -> None:
    """--pgbouncer starts PgBouncer from its binary: a Debian/Ubuntu package, never a pip wheel."""
    from .pgbouncer import pgbouncer_binary

    try:
        pgbouncer_binary()
    except ServiceError as exc:
        raise PreflightError(f"--pgbouncer needs PgBouncer, but {exc}") from None


def check_web(url: str, setting: str = "--url") -> None:
    """A running suite answers GET /healthz at `url` (no I/O behind it: only the server is checked)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=CONNECT_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # something answers: what it says about /metrics is for the command to report
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PreflightError(
            f"{shown(setting, redact_text(url))}: no suite answers ({reason})"
            f"{_advice('start one with `forkpool up`, or pass --url of a running one')}"
        ) from None


# -- what each kind of command needs ------------------------------------------------


@dataclass(frozen=True)
class SuiteNeeds:
    """A run of the suite's processes: their sizes, and where Gunicorn listens (`up` only)."""

    pool_size: int
    web_threads: int = 1
    port: int | None = None
    port_setting: str = "--port"
    embedded_only: bool = False  # `fault`: its own servers, whatever DATABASE_URL / REDIS_URL say
    pgbouncer: bool = False  # --pgbouncer: the `pgbouncer` binary must be installed


# What each --stack imports beyond the suite's own needs (module: the distribution pip installs it from).
STACK_MODULES = {
    "flask-sqlalchemy": {"flask_sqlalchemy": "flask-sqlalchemy", "sqlalchemy": "sqlalchemy"},
    "django": {"django": "django", "psycopg": "psycopg[binary]", "psycopg_pool": "psycopg-pool"},
}


def check_stack(stack: str) -> None:
    """The stack's packages must be installed: else its servers would die at start-up with an ImportError."""
    modules = STACK_MODULES.get(stack, {})
    missing = [dist for module, dist in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise PreflightError(
            f"--stack {stack} needs {', '.join(missing)}, which is not installed; "
            f"pip install {' '.join(repr(dist) for dist in missing)}"
        )


def check_runners(web_server: str, task_runner: str = "celery") -> None:
    """The servers a run is asked to run under must be installed (uWSGI is built by pip, not always present)."""
    try:
        if web_server == UWSGI:
            uwsgi_binary()
        if task_runner == RQ:
            from .rq_runner import rq_binary  # imports rq itself: ImportError when it is not installed

            rq_binary()
    except (ServiceError, ImportError) as exc:
        option = "--web-server uwsgi" if web_server == UWSGI and "uWSGI" in str(exc) else f"--task-runner {task_runner}"
        raise PreflightError(f"{option}: {exc}") from None


def check_suite(needs: SuiteNeeds, environ: Mapping[str, str] | None = None) -> None:
    """Everything `demo`, `loadtest`, `soak`, `up` and `fault` need, cheapest first; PreflightError if not."""
    env = os.environ if environ is None else environ
    check_pool_settings(needs, env)
    if needs.port is not None:
        check_port(needs.port, needs.port_setting)
    database_url = "" if needs.embedded_only else env.get("DATABASE_URL", "")
    redis_url = "" if needs.embedded_only else env.get("REDIS_URL", "")
    network: list[Callable[[], None]] = []
    if database_url:  # harness.services uses an embedded server only when it is unset or empty
        parse_database(database_url, otherwise=EMBEDDED_PG)
        network.append(lambda: reach_database(database_url, otherwise=EMBEDDED_PG))
    if redis_url:
        parse_redis(redis_url, otherwise=EMBEDDED_REDIS)
        network.append(lambda: reach_redis(redis_url, otherwise=EMBEDDED_REDIS))
    for name in CELERY_URLS:  # inherited by the suite's processes, which would use them over REDIS_URL
        if url := env.get(name, ""):
            otherwise = f"or unset {name} to use REDIS_URL's"
            parse_redis(url, name, otherwise)
            network.append(lambda url=url, name=name, otherwise=otherwise: reach_redis(url, name, otherwise))
    check_embedded(
        postgres=not database_url,
        redis_server=not redis_url,
        why="`forkpool fault` runs on embedded servers" if needs.embedded_only else "",
    )
    if needs.pgbouncer:
        check_pgbouncer()
    for reach in network:
        reach()


def check_pool_settings(needs: SuiteNeeds, env: Mapping[str, str]) -> None:
    """The pool settings every process of the suite will read, from the environment they will get
    (SuitePlan.env): a bad one would stop Gunicorn or Celery only after the servers had started."""
    plan = SuitePlan(
        database_url="", redis_url="", suite_id="preflight", web_threads=needs.web_threads, pool_size=needs.pool_size
    )
    try:
        found = settings_from_env(plan.env(0, env))
        found.pop("dsn", None)  # the URL is checked on its own, with a better message
        build_settings(**found)
    except ConfigError as exc:
        raise PreflightError(f"{exc}{_advice('correct or unset it')}") from None
    if needs.web_threads > needs.pool_size:  # web/server_settings.py refuses it: a thread may hold a connection
        raise PreflightError(
            f"--web-threads {needs.web_threads} needs a pool of at least {needs.web_threads} "
            f"per worker, but --pool-size is {needs.pool_size}"
            f"{_advice('raise --pool-size (DB_POOL_SIZE) or lower --web-threads (WEB_THREADS)')}"
        )


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _secret(password: str | None) -> tuple[str, ...]:
    return (password,) if password else ()
