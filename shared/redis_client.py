"""This process's Redis client: one ``redis.Redis`` per process, named like its pools.

``client_name`` is ``<suite-id>:<role>:<pid>`` so a harness can count each
process's client in ``CLIENT LIST``. A child never uses its parent's client:
the fork hook drops it (see registry.py) and the child makes its own here.
"""

from __future__ import annotations

import os

import redis

from .identity import application_name
from .registry import current_state

REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL


def get_redis() -> redis.Redis:
    """This process's Redis client, created on first use from ``REDIS_URL``."""
    state = current_state()
    client = state.redis
    if client is not None:
        return client
    with state.lock:
        # Invariant: one client per process; racing first callers share the winner's.
        if state.redis is None:
            state.redis = _new_client(redis_url())
        return state.redis


def _new_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        client_name=application_name(),
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=True,
    )
