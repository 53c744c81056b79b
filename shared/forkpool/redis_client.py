"""This process's Redis client: one ``redis.Redis`` per process, named like its pools (extra ``redis``).

``client_name`` is ``<suite-id>:<role>:<pid>`` so a harness can count each
process's client in ``CLIENT LIST``. Built on ``per_process``: a child never
uses its parent's client; it makes its own on first use.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from ._process import per_process
from .extras import import_extra
from .identity import application_name

if TYPE_CHECKING:
    import redis

REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


# A silent network (packets dropped, no RST) must fail a Redis call, not hang it: a reply is
# awaited at most SOCKET_TIMEOUT, a connection attempt CONNECT_TIMEOUT, and one retry on a fresh
# connection follows; the kernel also ends an idle connection whose keepalive probes go
# unanswered (as the PostgreSQL pool's defaults do). A call fails within about 11 s.
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
KEEPALIVE_OPTIONS: dict[int, int] = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 5),
        (getattr(socket, "TCP_KEEPINTVL", None), 2),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
        (getattr(socket, "TCP_USER_TIMEOUT", None), 10000),
    )
    if option is not None
}


def network_options() -> dict[str, Any]:
    """Socket settings for any redis-py client (kombu's transport options take the same names)."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": dict(KEEPALIVE_OPTIONS),
    }


def _new_client() -> redis.Redis:
    import_extra("redis", "redis", "forkpool.redis.get_redis")
    from redis import Redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return Redis.from_url(
        redis_url(),
        client_name=application_name(),
        health_check_interval=30,
        retry_on_timeout=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 1),  # one retry: a restart, not a silent network
        **network_options(),
    )


def _forget_inherited(client: Any) -> None:
    # In a forked child, nothing to do but let go: the client's connections close
    # their copy of the socket without shutdown() when collected (redis-py checks
    # the pid first), so nothing reaches the parent's connection. Not reset():
    # since redis-py 8 it takes the pool's lock, which a parent thread may have
    # held at fork time.
    del client


get_redis = per_process(
    _new_client, detach=_forget_inherited, close=lambda client: client.close(), key="forkpool.redis"
)
get_redis.__doc__ = "This process's Redis client, created on first use from ``REDIS_URL``."
