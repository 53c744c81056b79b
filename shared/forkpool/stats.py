"""The keys of ``Pool.stats()`` and ``AsyncPool.stats()``: a fixed, documented set, named once here.

Counters (``checkouts`` ... ``wait_ms_total``) only grow over a pool's life;
gauges (``size`` ... ``waiting``) are read under the pool lock, so one
snapshot always satisfies ``size == idle + in_use`` and
``connections_opened - connections_closed == size``.
"""

from __future__ import annotations

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
