"""Does a deployment fit the server? One place for the arithmetic of the connection ceiling.

    ceiling   = (web workers + task processes + ASGI workers) x pool size   (one host)
    fleet     = hosts x ceiling
    available = max_connections - superuser_reserved_connections - reserved_connections
    fits      = fleet + other clients <= available

Behind PgBouncer in transaction pooling there are two tiers, each with its own limit:

    clients   = fleet <= PgBouncer's max_client_conn
    servers   = PgBouncer's pool size + reserve + other clients <= available

(PgBouncer keeps one pool per database and user pair: the suite uses one.)
Used by ``forkpool budget``, before every harness run, and at server start-up.

What a process holds has one source: ``held_pools()`` (forkpool's own pools that a
worker opens, and every protected pool at its real maximum, each saying where its
size comes from). The start-up check (``startup_check``), ``forkpool budget --app``
and ``forkpool doctor --app`` read it; docs/sizing.md explains the rules.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from . import _protect as protection
from . import _registry as registry
from ._integrations import integration_for
from .errors import ConfigError
from .settings import DEFAULT_SIZE, SIZE_ENV, describe_error, env_int, redact_text

log = logging.getLogger("forkpool.budget")


@dataclass(frozen=True)
class DeploymentPlan:
    web_workers: int
    web_threads: int
    worker_concurrency: int
    pool_size: int
    other_clients: int = 0  # admin sessions, migrations, monitoring, the harness itself
    asgi_workers: int = 0  # async (uvicorn) workers, each with one asyncio pool of the same size
    hosts: int = 1  # identical copies of the deployment, each with its own servers

    @property
    def web_connections(self) -> int:
        return self.web_workers * self.pool_size

    @property
    def worker_connections(self) -> int:
        return self.worker_concurrency * self.pool_size

    @property
    def asgi_connections(self) -> int:
        return self.asgi_workers * self.pool_size

    @property
    def ceiling(self) -> int:
        """One host's: every process's pool full."""
        return self.web_connections + self.worker_connections + self.asgi_connections

    @property
    def fleet_ceiling(self) -> int:
        return self.hosts * self.ceiling


@dataclass(frozen=True)
class PoolerLimits:
    """PgBouncer (transaction pooling) between the fleet and the server, for the app's (database, user) pair."""

    max_client_conn: int
    pool_size: int  # default_pool_size: server connections PgBouncer opens for the pair
    reserve: int = 0  # reserve_pool_size: more, for clients that waited reserve_pool_timeout

    @property
    def servers(self) -> int:
        return self.pool_size + self.reserve


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int
    superuser_reserved: int
    reserved: int = 0  # reserved_connections, PostgreSQL 16+

    @property
    def available(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved


@dataclass(frozen=True)
class Budget:
    plan: DeploymentPlan
    limits: ServerLimits
    pooler: PoolerLimits | None = None  # PgBouncer between the fleet and the server

    @property
    def needed(self) -> int:
        """Server connection slots: the fleet's pools, or PgBouncer's pool when it stands in between."""
        servers = self.pooler.servers if self.pooler else self.plan.fleet_ceiling
        return servers + self.plan.other_clients

    @property
    def clients_fit(self) -> bool:
        return self.pooler is None or self.plan.fleet_ceiling <= self.pooler.max_client_conn

    @property
    def threads_covered(self) -> bool:
        return self.plan.pool_size >= self.plan.web_threads

    @property
    def fits(self) -> bool:
        return self.needed <= self.limits.available and self.threads_covered and self.clients_fit

    def explain(self) -> list[str]:
        """The arithmetic, line by line, as printed by ``forkpool budget``."""
        p, s, b = self.plan, self.limits, self.pooler
        shares = [p.web_connections, p.worker_connections] + ([p.asgi_connections] if p.asgi_workers else [])
        asgi = f"asgi:    {p.asgi_workers} workers x pool {p.pool_size} = {p.asgi_connections}"
        lines = [
            f"web:     {p.web_workers} workers x pool {p.pool_size} = {p.web_connections}",
            f"workers: {p.worker_concurrency} processes x pool {p.pool_size} = {p.worker_connections}",
            *([asgi] if p.asgi_workers else []),
            f"ceiling: {' + '.join(map(str, shares))} = {p.ceiling}" + (" per host" if p.hosts > 1 else ""),
        ]
        if p.hosts > 1:
            lines.append(f"fleet:   {p.hosts} hosts x ceiling {p.ceiling} = {p.fleet_ceiling}")
        total = "fleet" if p.hosts > 1 else "ceiling"
        if b is None:
            lines.append(f"needed:  {total} {p.fleet_ceiling} + other clients {p.other_clients} = {self.needed}")
        else:
            lines += [
                f"clients: {total} {p.fleet_ceiling} of PgBouncer's max_client_conn {b.max_client_conn}"
                f" -> {'fits' if self.clients_fit else 'DOES NOT FIT'} (headroom {b.max_client_conn - p.fleet_ceiling})",
                f"needed:  PgBouncer pool {b.pool_size} + reserve {b.reserve} + other clients {p.other_clients}"
                f" = {self.needed} server connections",
            ]
        lines.append(
            f"server:  max_connections {s.max_connections} - superuser_reserved {s.superuser_reserved}"
            f" - reserved {s.reserved} = {s.available} available"
        )
        if not self.threads_covered:
            lines.append(f"threads: {p.web_threads} threads per web worker need a pool of at least {p.web_threads}")
        verdict = "fits" if self.fits else "DOES NOT FIT"
        clients = f"clients {p.fleet_ceiling} of {b.max_client_conn}, servers " if b else ""
        # Behind PgBouncer the verdict's headroom is the tighter tier's: a plan refused for its
        # clients must not read as one with room to spare.
        headroom = s.available - self.needed
        if b is not None:
            headroom = min(headroom, b.max_client_conn - p.fleet_ceiling)
        lines.append(f"verdict: {clients}{self.needed} of {s.available} -> {verdict} (headroom {headroom})")
        return lines


def read_server_limits(conn: psycopg2.extensions.connection) -> ServerLimits:
    """The server's connection settings (reserved_connections only exists from PostgreSQL 16)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, setting::int FROM pg_settings WHERE name IN "
            "('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
        )
        found = dict(cur.fetchall())
    return ServerLimits(
        max_connections=found["max_connections"],
        superuser_reserved=found.get("superuser_reserved_connections", 0),
        reserved=found.get("reserved_connections", 0),
    )


# ---------------------------------------------------------------------------------------------
# What one process of the deployment holds: the one source of truth that the start-up check
# (Gunicorn, Celery), ``forkpool budget --app`` and ``forkpool doctor --app`` all read.

CHECK_ENV = "DB_BUDGET_CHECK"  # enforce (default) | warn | off
ALLOWANCE_ENV = "DB_BUDGET_OTHER_CLIENTS"  # connection slots to leave for everything else
HOSTS_ENV = "DB_BUDGET_HOSTS"  # hosts running this same deployment (a fleet); default 1
CLIENT_CONN_ENV = "DB_BUDGET_MAX_CLIENT_CONN"  # behind PgBouncer: its max_client_conn; 0 (default): not behind one
_MODES = ("enforce", "warn", "off")

# A report with this source holds one connection per thread that uses it (Django without
# OPTIONS['pool']): its bound is the worker's thread count. The text is forkpool.django's.
PER_THREAD = "one connection per thread"
POSTGRESQL = "postgresql"
_CONNECT_TIMEOUT_S = 3
# libpq connection keywords: what may be carried from a library's settings into the check's DSN.
_LIBPQ_KEYS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "service",
        "options",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "channel_binding",
        "gssencmode",
        "requirepeer",
        "krbsrvname",
        "target_session_attrs",
        "load_balance_hosts",
    }
)


@dataclass(frozen=True)
class HeldPool:
    """One pool every process of the deployment holds: its bound, and where the bound comes from."""

    label: str  # "forkpool pool 'default'", "engine postgresql+psycopg2://app:***@db/shop"
    backend: str  # "postgresql", "mysql", "sqlite", "redis"
    max_size: int | None  # connections it may hold at once; None: no bound
    source: str  # "DB_POOL_SIZE=8", "configure(max_size=8)", "pool_size 5 + max_overflow 10"
    server: str = ""  # PostgreSQL: "host:port" its connections go to; "" when not known
    dsn: str = field(default="", repr=False, compare=False)  # to read that server's limits; carries the password
    per_thread: bool = False  # one connection per thread: bound = the worker's threads
    kind: str = "forkpool"  # "forkpool" (its own pools) or the protecting integration's name

    def bound(self, threads: int = 1) -> int | None:
        return threads if self.per_thread else self.max_size

    def describe(self, threads: int = 1) -> str:
        bound = self.bound(threads)
        return f"{self.label} {'unbounded' if bound is None else bound} ({self.source})"


def held_pools() -> list[HeldPool]:
    """Every pool each worker of this deployment will hold, as this process knows it now.

    - forkpool's own pools that a worker opens at start (``registry.pool_names``):
      configured in code (``configure()``, ``pool_for()``), used before the fork
      (``get_pool()`` at import), and the default pool when DB_POOL_SIZE / _MIN /
      _MAX size it. The default pool of an app that never configured, sized nor
      used it is not counted: DATABASE_URL alone is read by every library.
    - every pool behind a protected object (``protection.reports()``), at its
      real maximum (SQLAlchemy ``pool_size + max_overflow``, psycopg_pool and
      Django's pool ``max_size``; None where the library sets no bound).
    """
    found = [_own_pool(name) for name in registry.pool_names()]
    try:
        reports = protection.reports()
    except Exception as exc:  # noqa: BLE001 - an integration's report failed: one line, never a traceback
        raise ConfigError(f"listing the protected pools failed: {type(exc).__name__}: {describe_error(exc)}") from None
    dsns = _protected_dsns()
    for integration, report in reports:
        postgres = report.backend == POSTGRESQL
        dsn = dsns.get(report.label, "") if postgres else ""
        found.append(
            HeldPool(
                report.label,
                report.backend,
                report.max_size,
                report.source,
                server=server_of(dsn) if postgres else "",
                dsn=dsn,
                per_thread=report.max_size is None and report.source.startswith(PER_THREAD),
                kind=integration,
            )
        )
    return found


def expected_per_process(pools: list[HeldPool], threads: int = 1) -> int | None:
    """PostgreSQL connections one process may hold at most; None when a pool has no bound or none is known.

    A pool of one connection per thread counts as unknown: an observer (doctor) does not know the threads.
    """
    bounds = [None if pool.per_thread else pool.bound(threads) for pool in pools if pool.backend == POSTGRESQL]
    if not pools or None in bounds:
        return None
    return sum(b for b in bounds if b is not None)


def server_of(dsn: str) -> str:
    """Where a PostgreSQL DSN's connections go, as ``host:port``; "" for an empty or unreadable DSN."""
    if not dsn.strip():
        return ""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return ""
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "local socket"
    return f"{host}:{params.get('port') or os.environ.get('PGPORT') or 5432}"


def load_app(spec: str) -> Any:
    """Import an application as Gunicorn or Celery would (``module``, ``module:attr``, ``module:factory()``).

    Its import runs its ``protect()`` and ``configure()`` calls: then ``held_pools()``
    lists its pools. The current directory is on the import path, as for those servers.
    """
    module_name, _, attr = spec.strip().partition(":")
    if not module_name:
        raise ConfigError(f"--app {spec!r}: expected MODULE, MODULE:ATTR or MODULE:FACTORY()")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        if attr:
            call = attr.endswith("()")
            for part in (attr[:-2] if call else attr).split("."):
                found = getattr(found, part)
            if call:
                found = found()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code: any failure is one line
        raise ConfigError(f"--app {spec}: {type(exc).__name__}: {describe_error(exc)}") from None
    return found


def _own_pool(name: str) -> HeldPool:
    settings = registry.settings_for(name)
    return HeldPool(
        f"forkpool pool {name!r}",
        POSTGRESQL,
        settings.max_size,
        _own_source(name),
        server=server_of(settings.dsn),
        dsn=settings.dsn,
    )


def _own_source(name: str) -> str:
    in_code = registry.size_sources().get(name)
    if in_code:
        return in_code
    if name == registry.DEFAULT:
        for var in (SIZE_ENV, "DB_POOL_MAX"):
            raw = os.environ.get(var, "").strip()
            if raw:
                return f"{var}={raw}"
    return f"default max_size {DEFAULT_SIZE}"


def _protected_dsns() -> dict[str, str]:
    """Each protected PostgreSQL pool's DSN, by its report's label: the server its connections go to."""
    found: dict[str, str] = {}
    for obj, name in protection.protected():
        try:
            pairs = list(_dsns_of(obj, name))
        except Exception:  # a library's attributes moved: that pool's server is unknown, no crash
            log.debug("cannot tell where %s's connections go", name, exc_info=True)
            continue
        for label, dsn in pairs:
            found.setdefault(label, dsn)
    return found


def _dsns_of(obj: Any, name: str) -> Iterator[tuple[str, str]]:
    """(report label, libpq DSN) for each pool behind `obj`, in its integration's report order."""
    if name == "django":
        from django.db import connections

        for alias in getattr(obj, "aliases", ()):
            conf = connections.settings[alias]
            params = {
                **(conf.get("OPTIONS") or {}),
                "dbname": conf.get("NAME"),
                "user": conf.get("USER"),
                "password": conf.get("PASSWORD"),
                "host": conf.get("HOST"),
                "port": conf.get("PORT"),
            }
            yield f"django database {alias!r}", _libpq_dsn(params)  # forkpool.django's label
        return
    integration = integration_for(obj)
    if integration is None or name not in ("sqlalchemy", "psycopg_pool", "dbapi"):
        return  # an integration this module does not know: its PostgreSQL pools' server stays unknown
    labels = [report.label for report in integration.report(obj)]
    if name == "sqlalchemy":
        from ._integrations.sqlalchemy import engines_of

        dsns = [_sqlalchemy_dsn(engine.url) if engine.dialect.name == POSTGRESQL else "" for engine in engines_of(obj)]
    elif name == "psycopg_pool":
        dsns = [_libpq_dsn(dict(obj.kwargs or {}), base=obj.conninfo)]
    else:  # a psycopg2 or psycopg 3 connection: its parameters, without the password, and the password
        info = obj.info
        params = info.get_parameters() if hasattr(info, "get_parameters") else info.dsn_parameters
        dsns = [_libpq_dsn({**params, "password": info.password})]
    yield from zip(labels, dsns, strict=False)


def _sqlalchemy_dsn(url: Any) -> str:
    params = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    for key, value in url.query.items():  # ?host=/run/postgresql, ?sslmode=require
        if isinstance(value, str) and params.get(key) in (None, ""):
            params[key] = value
    return _libpq_dsn(params)


def _libpq_dsn(params: dict[str, Any], base: str = "") -> str:
    chosen = {k: str(v) for k, v in params.items() if k in _LIBPQ_KEYS and v not in (None, "")}
    if not base and not chosen:
        return ""
    dsn: str = psycopg2.extensions.make_dsn(base or None, **chosen)
    return dsn


# ---------------------------------------------------------------------------------------------
# The start-up check.

Limits = Callable[[list[HeldPool]], "ServerLimits | str"]  # a server's limits, or why they are unknown


@dataclass
class RoleVerdict:
    """One role's share judged: clauses that fit or were skipped, clauses that do not fit."""

    fine: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    checked: int = 0  # servers whose limits were compared

    def line(self, role: str) -> str:
        if self.bad:
            return f"{role}: {'; '.join(self.bad)}: does not fit ({CHECK_ENV}=warn or off to start anyway)"
        if self.checked:
            return f"{role}: {'; '.join(self.fine)}: fits"
        return f"{role}: budget not checked: {'; '.join(self.fine)}"


def judge(
    processes: int,
    threads: int,
    pools: list[HeldPool],
    limits_of: Limits,
    *,
    hosts: int = 1,
    allowance: int = 0,
    max_client_conn: int = 0,
) -> RoleVerdict:
    """Does one role's share fit? `processes` each holding `pools`, each process serving `threads` at once.

    The rules:
    - threads: a worker serves `threads` requests at once, and any of them may use
      any of its pools: every bounded pool must hold at least `threads` connections
      (a thread finding its pool empty waits, or with redis-py's default pool fails);
    - connections: per PostgreSQL server, hosts x processes x (the sum of the bounds
      of the pools that connect there) + the allowance for other clients must fit the
      server's available slots (max_connections - superuser_reserved - reserved), or,
      behind PgBouncer, its max_client_conn. A server with an unbounded pool, or one
      whose limits are unknown, is listed and not judged. Other backends (MySQL,
      SQLite, Redis) are listed and not counted against PostgreSQL.
    """
    verdict = RoleVerdict()
    for pool in pools:
        bound = pool.bound(threads)
        if bound is not None and bound < threads:
            verdict.bad.append(f"{threads} threads per worker, but {pool.label} holds at most {bound} ({pool.source})")
    groups: dict[str, list[HeldPool]] = {}
    for pool in pools:
        if pool.backend == POSTGRESQL:
            groups.setdefault(pool.server, []).append(pool)
    fleet = f"{hosts} hosts x " if hosts > 1 else ""
    for server, group in groups.items():
        listed = " + ".join(pool.describe(threads) for pool in group)
        if not server:
            own = any(pool.kind == "forkpool" and not pool.dsn for pool in group)
            why = (
                "no DSN (DATABASE_URL unset)"
                if own and not os.environ.get("DATABASE_URL", "").strip()
                else "its server is not known"
            )
            verdict.fine.append(f"{listed}: {why}, not checked against a server")
            continue
        bounds = [pool.bound(threads) for pool in group]
        if None in bounds:
            verdict.fine.append(f"{listed} on {server}: a pool with no bound, the total cannot be checked")
            continue
        per = sum(b for b in bounds if b is not None)
        share = hosts * processes * per
        if max_client_conn:
            room, against = max_client_conn, f"of PgBouncer's max_client_conn {max_client_conn} ({CLIENT_CONN_ENV})"
        else:
            limits = limits_of(group)
            if isinstance(limits, str):
                verdict.fine.append(f"{listed} on {server}: not checked, {limits}")
                continue
            room = limits.available
            against = (
                f"of {limits.available} available (max_connections {limits.max_connections}"
                f" - reserved {limits.superuser_reserved + limits.reserved}) on {server}"
            )
        verdict.checked += 1
        clause = (
            f"{fleet}{processes} processes x pool {per} = {share} connections (+ {allowance} for other "
            f"clients) {against} [pool {per}: {listed}]"
        )
        (verdict.fine if share + allowance <= room else verdict.bad).append(clause)
    others = [pool for pool in pools if pool.backend != POSTGRESQL]
    if others:
        verdict.fine.append("not PostgreSQL, not counted: " + ", ".join(p.describe(threads) for p in others))
    return verdict


def startup_check(
    role: str, processes: int, threads: int, *, app_loaded: bool = True, pools: list[HeldPool] | None = None
) -> list[str]:
    """At a server's start: does the fleet's share of this role fit? One line on stderr says the verdict.

    The pools are ``held_pools()`` (or `pools`), judged by ``judge``: the share is
    hosts (DB_BUDGET_HOSTS) x processes x each PostgreSQL server's pools, every
    host running the same servers, so each refuses alone what the fleet could not
    hold. Behind PgBouncer (DB_BUDGET_MAX_CLIENT_CONN) it is checked against its
    max_client_conn, offline. Each server's limits are read from that server, with
    the pool's own DSN; a pool without a DSN is not checked (never libpq's default
    socket), and a server that cannot be reached is not a reason to refuse to start
    (the pools reconnect later). `app_loaded` False: the application is not
    imported in this process (Gunicorn without preload_app), the line says so.
    Returns the line; raises ConfigError (that line) when the share does not fit
    and the check is enforced (DB_BUDGET_CHECK, default enforce).
    """
    mode = (os.environ.get(CHECK_ENV) or "enforce").strip().lower()
    if mode not in _MODES:
        raise ConfigError(f"{CHECK_ENV}={mode!r} must be one of {', '.join(_MODES)}")
    if mode == "off":
        say(f"{role}: budget not checked ({CHECK_ENV}=off)")
        return []
    allowance = env_int(ALLOWANCE_ENV, 0, minimum=0)
    hosts = env_int(HOSTS_ENV, 1, minimum=1)
    max_client_conn = env_int(CLIENT_CONN_ENV, 0, minimum=0)
    if pools is None:
        try:
            pools = held_pools()
        except ConfigError as exc:  # the pools cannot be listed: not a reason to refuse to start
            line = f"{role}: budget not checked: {exc}"
            say(line)
            return [line]
    later = (
        "the app is not imported in the master (preload_app off): the pools it makes are checked "
        "by the first worker (forkpool.gunicorn.post_worker_init)"
    )
    if not pools:
        why = (
            later
            if not app_loaded
            else (
                "no pool known in this process (none protected, configured, "
                "used, or sized by DB_POOL_SIZE / DB_POOL_MAX)"
            )
        )
        line = f"{role}: budget not checked: {why}"
        say(line)
        return [line]
    verdict = judge(
        processes,
        threads,
        pools,
        _limits_reader(role),
        hosts=hosts,
        allowance=allowance,
        max_client_conn=max_client_conn,
    )
    if not app_loaded:
        verdict.fine.append(later)
    line = verdict.line(role)
    if verdict.bad and mode == "enforce":
        raise ConfigError(line)
    say(line)
    return [line]


def say(line: str) -> None:
    """The check's verdict, where the user starting the server sees it whatever the logging setup."""
    print(f"forkpool: {line}", file=sys.stderr, flush=True)


def _limits_reader(role: str) -> Limits:
    cache: dict[str, ServerLimits | str] = {}

    def limits_of(group: list[HeldPool]) -> ServerLimits | str:
        dsn = next((pool.dsn for pool in group if pool.dsn), "")
        if not dsn:
            return "no DSN"
        if group[0].server not in cache:
            cache[group[0].server] = limits_or_reason(dsn)
        return cache[group[0].server]

    return limits_of


def limits_or_reason(dsn: str) -> ServerLimits | str:
    """The server's limits, read with a short connection of its own; or why they could not be read."""
    secrets = tuple(p for p in (_password(dsn),) if p)
    try:
        conn = psycopg2.connect(dsn, application_name="forkpool-budget", connect_timeout=_CONNECT_TIMEOUT_S)
    except psycopg2.Error as exc:
        return f"the server is unreachable: {redact_text(describe_error(exc), secrets)}"
    try:
        return read_server_limits(conn)
    finally:
        conn.close()  # a master keeps nothing open across fork


def _password(dsn: str) -> str | None:
    try:
        password: str | None = psycopg2.extensions.parse_dsn(dsn).get("password")
        return password
    except psycopg2.Error:
        return None
