"""Inside a bench server's worker: how long its start-up hook took, one JSON line per process.

Appended to the file BENCH_STARTUP_FILE names (one ``write`` per line with O_APPEND, so
processes starting together do not interleave). Imports nothing heavy: the Gunicorn master
loads it with its configuration.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

STARTUP_FILE_ENV = "BENCH_STARTUP_FILE"


def pool_state() -> dict[str, Any]:
    """This process's default pool: open connections, its minimum, and whether it is full."""
    from forkpool import get_pool

    stats = get_pool().stats()
    return {"pool_size": stats["size"], "pool_min": stats["min_size"], "full": stats["size"] >= stats["min_size"]}


def record_startup(server: str, mode: str, started: float, **extra: Any) -> None:
    """`started`: time.perf_counter() at the hook's entry."""
    path = os.environ.get(STARTUP_FILE_ENV)
    if not path:
        return
    record = {
        "server": server,
        "mode": mode,
        "pid": os.getpid(),
        "ms": (time.perf_counter() - started) * 1000,
        "at": time.time(),
        **extra,
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
