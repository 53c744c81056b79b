"""Does a deployment fit the server? One place for the arithmetic of the connection ceiling.

    ceiling   = (web workers + task processes + ASGI workers) x pool size
    available = max_connections - superuser_reserved_connections - reserved_connections
    fits      = ceiling + other clients <= available

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
from .settings import build_settings, env_int, settings_from_env

log = logging.getLogger("forkpool.budget")


@dataclass(frozen=True)
class DeploymentPlan:
    web_workers: int
    web_threads: int
    worker_concurrency: int
    pool_size: int
    other_clients: int = 0  # admin sessions, migrations, monitoring, the harness itself
    asgi_workers: int = 0  # async (uvicorn) workers, each with one asyncio pool of the same size

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
        return self.web_connections + self.worker_connections + self.asgi_connections


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

    @property
    def needed(self) -> int:
        return self.plan.ceiling + self.plan.other_clients

    @property
    def threads_covered(self) -> bool:
        return self.plan.pool_size >= self.plan.web_threads

    @property
    def fits(self) -> bool:
        return self.needed <= self.limits.available and self.threads_covered

    def explain(self) -> list[str]:
        """The arithmetic, line by line, as printed by ``forkpool budget``."""
        p, s = self.plan, self.limits
        shares = [p.web_connections, p.worker_connections] + ([p.asgi_connections] if p.asgi_workers else [])
        asgi = f"asgi:    {p.asgi_workers} workers x pool {p.pool_size} = {p.asgi_connections}"
        lines = [
            f"web:     {p.web_workers} workers x pool {p.pool_size} = {p.web_connections}",
            f"workers: {p.worker_concurrency} processes x pool {p.pool_size} = {p.worker_connections}",
            *([asgi] if p.asgi_workers else []),
            f"ceiling: {' + '.join(map(str, shares))} = {p.ceiling}",
            f"needed:  ceiling {p.ceiling} + other clients {p.other_clients} = {self.needed}",
            f"server:  max_connections {s.max_connections} - superuser_reserved {s.superuser_reserved}"
            f" - reserved {s.reserved} = {s.available} available",
        ]
        if not self.threads_covered:
            lines.append(f"threads: {p.web_threads} threads per web worker need a pool of at least {p.web_threads}")
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"verdict: {self.needed} of {s.available} -> {verdict} (headroom {s.available - self.needed})")
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
_MODES = ("enforce", "warn", "off")


def startup_check(role: str, processes: int, threads: int) -> list[str]:
    """At a server's start (master, before forking): does this deployment's share fit?

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
    try:
        conn = psycopg2.connect(pool.dsn, application_name="forkpool-budget", connect_timeout=3)
    except psycopg2.Error as exc:
        log.warning("%s: budget check skipped, the database is unreachable: %s", role, pool.redact(describe_error(exc)))
        return []
    try:
        limits = read_server_limits(conn)
    finally:
        conn.close()  # a master keeps nothing open across fork
    share = processes * pool.max_size
    lines = [
        f"{role}: {processes} processes x pool {pool.max_size} = {share} connections"
        f" (+ {allowance} for other clients) of {limits.available} available"
        f" (max_connections {limits.max_connections} - reserved {limits.superuser_reserved + limits.reserved})",
    ]
    if pool.max_size < threads:
        lines.append(f"{role}: {threads} threads need a pool of at least {threads}")
    fits = share + allowance <= limits.available and pool.max_size >= threads
    for line in lines:
        log.info("%s", line)
    if not fits:
        verdict = f"{lines[-1]}: does not fit ({CHECK_ENV}=warn or off to start anyway)"
        if mode == "enforce":
            raise ConfigError(verdict)
        log.warning("%s", verdict)
    return lines
