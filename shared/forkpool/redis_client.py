"""This process's Redis client: one ``redis.Redis`` per process, named like its pools (extra ``redis``).

``client_name`` is ``<suite-id>:<role>:<pid>`` so a harness can count each
process's client in ``CLIENT LIST``. Built on ``per_process``: a child never
uses its parent's client; it makes its own on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .extras import import_extra
from .identity import application_name
from .per_process import per_process

if TYPE_CHECKING:
    import redis

REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def _new_client() -> "redis.Redis":
    redis = import_extra("redis", "redis", "forkpool.get_redis")
    return redis.Redis.from_url(
        redis_url(),
        client_name=application_name(),
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def _forget_inherited(client: Any) -> None:
    # In a forked child, nothing to do but let go: the client's connections close
    # their copy of the socket without shutdown() when collected (redis-py checks
    # the pid first), so nothing reaches the parent's connection. Not reset():
    # since redis-py 8 it takes the pool's lock, which a parent thread may have
    # held at fork time.
    del client


get_redis = per_process(_new_client, detach=_forget_inherited, close=lambda client: client.close(),
                        key="forkpool.redis")
get_redis.__doc__ = "This process's Redis client, created on first use from ``REDIS_URL``."
