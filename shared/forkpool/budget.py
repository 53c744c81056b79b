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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions

from .errors import ConfigError
from .redact import describe_error
from .settings import PoolSettings, build_settings, env_int, settings_from_env

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
        lines.append(f"server:  max_connections {s.max_connections} - superuser_reserved {s.superuser_reserved}"
                     f" - reserved {s.reserved} = {s.available} available")
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


CHECK_ENV = "DB_BUDGET_CHECK"  # enforce (default) | warn | off
ALLOWANCE_ENV = "DB_BUDGET_OTHER_CLIENTS"  # connection slots to leave for everything else
HOSTS_ENV = "DB_BUDGET_HOSTS"  # hosts running this same deployment (a fleet); default 1
CLIENT_CONN_ENV = "DB_BUDGET_MAX_CLIENT_CONN"  # behind PgBouncer: its max_client_conn; 0 (default): not behind one
_MODES = ("enforce", "warn", "off")


def startup_check(role: str, processes: int, threads: int) -> list[str]:
    """At a server's start (master, before forking): does the fleet's share of this role fit?

    The share is hosts (DB_BUDGET_HOSTS) x processes x pool size: every host
    runs the same servers, so each refuses alone what the fleet could not hold.
    Behind PgBouncer (DB_BUDGET_MAX_CLIENT_CONN) the share is checked against
    its max_client_conn, offline: the server's slots are PgBouncer's to keep.
    Returns the arithmetic; raises ConfigError when it does not fit and the
    check is enforced. A database that cannot be reached is not a reason to
    refuse to start (the pools reconnect later): the check is then skipped.
    """
    mode = (os.environ.get(CHECK_ENV) or "enforce").strip().lower()
    if mode not in _MODES:
        raise ConfigError(f"{CHECK_ENV}={mode!r} must be one of {', '.join(_MODES)}")
    if mode == "off":
        return []
    pool = build_settings(**settings_from_env())
    allowance = env_int(ALLOWANCE_ENV, 0, minimum=0)
    hosts = env_int(HOSTS_ENV, 1, minimum=1)
    max_client_conn = env_int(CLIENT_CONN_ENV, 0, minimum=0)
    share = hosts * processes * pool.max_size
    fleet = f"{hosts} hosts x " if hosts > 1 else ""
    if max_client_conn:
        room = max_client_conn
        against = f"of PgBouncer's max_client_conn {max_client_conn} ({CLIENT_CONN_ENV})"
    else:
        limits = _limits_or_none(role, pool)
        if limits is None:
            return []
        room = limits.available
        against = (f"of {limits.available} available (max_connections {limits.max_connections}"
                   f" - reserved {limits.superuser_reserved + limits.reserved})")
    # One line: the arithmetic and the verdict's reasons, as the log and the refusal show it.
    lines = [f"{role}: {fleet}{processes} processes x pool {pool.max_size} = {share} connections"
             f" (+ {allowance} for other clients) {against}"]
    if pool.max_size < threads:
        lines.append(f"{role}: {threads} threads need a pool of at least {threads}")
    fits = share + allowance <= room and pool.max_size >= threads
    for line in lines:
        log.info("%s", line)
    if not fits:
        verdict = f"{lines[-1]}: does not fit ({CHECK_ENV}=warn or off to start anyway)"
        if mode == "enforce":
            raise ConfigError(verdict)
        log.warning("%s", verdict)
    return lines


def _limits_or_none(role: str, pool: PoolSettings) -> ServerLimits | None:
    """The server's limits, or None (logged) when it cannot be reached."""
    try:
        conn = psycopg2.connect(pool.dsn, application_name="forkpool-budget", connect_timeout=3)
    except psycopg2.Error as exc:
        log.warning("%s: budget check skipped, the database is unreachable: %s", role, pool.redact(describe_error(exc)))
        return None
    try:
        return read_server_limits(conn)
    finally:
        conn.close()  # a master keeps nothing open across fork
