"""The keys of `Pool.stats()`: a fixed, documented set, named once here.

Counters (``checkouts`` ... ``wait_ms_total``) only grow over a pool's life;
gauges (``size`` ... ``waiting``) are read under the pool lock, so one
snapshot always satisfies ``size == idle + in_use`` and
``connections_opened - connections_closed == size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PID = "pid"  # the process that owns the pool
NAME = "name"  # the pool's name ("default", ...)
SERVER = "server"  # the DSN without password: the pool's identity
MIN_SIZE = "min_size"
MAX_SIZE = "max_size"

SIZE = "size"  # open connections: idle + in use
IDLE = "idle"  # open and free
IN_USE = "in_use"  # checked out by a caller
WAITING = "waiting"  # callers queued for a connection right now
OPENING = "opening"  # connections being opened right now

CHECKOUTS = "checkouts"  # successful getconn() calls
TIMEOUTS = "timeouts"  # getconn() calls that gave up (PoolTimeout)
WAITS = "waits"  # getconn() calls that had to queue
WAIT_MS_TOTAL = "wait_ms_total"  # time spent queued, summed over callers
CONNECTIONS_OPENED = "connections_opened"
CONNECTIONS_CLOSED = "connections_closed"  # for any reason, discards included
CONNECTIONS_DISCARDED = "connections_discarded"  # closed because found broken
CONNECT_ERRORS = "connect_errors"  # failed attempts to open a connection
CHECKS = "checks"  # health checks run at checkout (a round trip each)
LEAK_WARNINGS = "leak_warnings"  # connections reported as held too long

GAUGES = (SIZE, IDLE, IN_USE, WAITING, OPENING)
COUNTERS = (
    CHECKOUTS,
    TIMEOUTS,
    WAITS,
    WAIT_MS_TOTAL,
    CONNECTIONS_OPENED,
    CONNECTIONS_CLOSED,
    CONNECTIONS_DISCARDED,
    CONNECT_ERRORS,
    CHECKS,
    LEAK_WARNINGS,
)
ALL_KEYS = (PID, NAME, SERVER, MIN_SIZE, MAX_SIZE) + GAUGES + COUNTERS


def snapshot(pool: Any, idle: int, in_use: int, waiting: int, opening: int, counts: dict[str, float]) -> dict[str, Any]:
    """One stats dict for a pool of either kind (the threaded pool calls it under its lock)."""
    found: dict[str, Any] = {
        PID: pool.pid,
        NAME: pool.name,
        SERVER: pool.identity,
        MIN_SIZE: pool.settings.min_size,
        MAX_SIZE: pool.settings.max_size,
        SIZE: idle + in_use,
        IDLE: idle,
        IN_USE: in_use,
        WAITING: waiting,
        OPENING: opening,
    }
    found.update(counts)
    found[WAIT_MS_TOTAL] = round(found[WAIT_MS_TOTAL], 3)
    return found


@dataclass(frozen=True)
class PoolReport:
    """One pool a protected object keeps in a process: how many connections it may hold, and holds now."""

    label: str  # what the user calls it, never with a password: "engine mysql+pymysql://app@db/shop"
    backend: str  # "postgresql", "mysql", "sqlite", "redis"
    max_size: int | None  # connections it may hold at once; None: no bound
    source: str  # where max_size comes from: "pool_size 5 + max_overflow 10"
    open: int | None = None  # connections it holds now; None where the library does not say
    in_use: int | None = None
    waiting: int | None = None
