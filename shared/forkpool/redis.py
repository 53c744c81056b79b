"""This process's Redis clients: ``get_redis()``, ``get_async_redis()``, ``await close_async_redis()`` (extra ``redis``)."""

from __future__ import annotations

import asyncio
import os
import socket
import weakref
from typing import TYPE_CHECKING, Any

from ._process import per_process
from ._sockets import devnull_fd
from .errors import import_extra
from .identity import application_name

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["close_async_redis", "get_async_redis", "get_redis"]

# -- the threaded client -------------------------------------------------------------------------------------
# This process's Redis client: one ``redis.Redis`` per process, named like its pools (extra ``redis``).
#
# ``client_name`` is ``<suite-id>:<role>:<pid>`` so a harness can count each
# process's client in ``CLIENT LIST``. Built on ``per_process``: a child never
# uses its parent's client; it makes its own on first use.

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

# -- the asyncio client, per process and event loop ----------------------------------------------------------
# ``forkpool.redis.get_async_redis()``: this process's and this event loop's ``redis.asyncio.Redis`` (extra ``redis``).
#
# redis-py's asyncio client has no fork check at all (the sync pool's pid check,
# ``_checkpid``, was not carried over: redis-py#2911): a client made before a
# fork hands the parent's sockets to every child. And an asyncio connection
# belongs to the event loop that opened it. So, like ``get_async_pool()``: one
# client per process (``per_process``) and per loop (a second ``asyncio.run``
# gets its own), named ``<suite-id>:<role>:<pid>`` like the sync client
# (``client_name``, read when the client is made: in a worker, after the server
# hooks named its role). Open nothing in a master; close the client at lifespan
# shutdown with ``await close_async_redis()``.
#
# In a forked child the inherited clients are let go with no I/O and no lock
# (the rule of _process.py): each connected socket is pointed at /dev/null,
# so nothing the child does reaches the parent's connection and no socket stays
# shared, and the objects are kept referenced, never collected in the child:
# redis-py's ``Connection.__del__`` would close their transports through the
# parent's event loop. A few objects and descriptors per inherited client, and
# only when a process forks with a client open, which the server hooks avoid.
#
# Private attributes, read only in a forked child (tried with redis-py 8.1):
# a connection's ``_writer`` (its asyncio stream, for the socket), the pool's
# ``_available_connections`` / ``_in_use_connections``.

# Inherited clients and connections a child keeps but never uses (see the module docstring).
_graveyard: list[Any] = []


class LoopClients:
    """This process's asyncio clients, by event loop (held weakly: a finished loop's client goes with it)."""

    def __init__(self) -> None:
        self.by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _connections(client: Any) -> list[Any]:
    pool = client.connection_pool
    found = [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]
    if getattr(client, "connection", None) is not None:  # single_connection_client
        found.append(client.connection)
    return found


def _to_devnull(connection: Any) -> None:
    writer = getattr(connection, "_writer", None)
    if writer is None:
        return  # never connected, or disconnected: no socket
    sock = writer.transport.get_extra_info("socket")  # reads a field: no I/O, no lock
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        os.dup2(devnull_fd(), fd)


def _detach(clients: LoopClients) -> None:
    # In a forked child, from the at-fork hook: only the forking thread exists.
    for client in list(clients.by_loop.values()):
        connections = _connections(client)
        for connection in connections:
            _to_devnull(connection)
        _graveyard.append((client, connections))  # in-use connections are held weakly by redis-py


def _drop(clients: LoopClients) -> None:
    # close_all() at worker exit or interpreter exit runs with no event loop to await
    # aclose() in; lifespan shutdown closed the client properly already. What is left
    # closes with the process (Redis needs no goodbye).
    clients.by_loop.clear()


_loop_clients = per_process(LoopClients, detach=_detach, close=_drop, key="forkpool.async_redis")


def _new_async_client() -> redis.asyncio.Redis:
    import_extra("redis.asyncio", "redis", "forkpool.redis.get_async_redis")
    from redis.asyncio import Redis

    return Redis.from_url(
        redis_url(),
        client_name=application_name(),
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
    )


def get_async_redis() -> redis.asyncio.Redis:
    """This process's and this loop's client (from ``REDIS_URL``): made on first use, the same object after.

    Call it from a coroutine: the client belongs to the running loop. Making it
    opens no connection; the first command does.
    """
    loop = asyncio.get_running_loop()  # RuntimeError outside a coroutine: there is no loop to belong to
    clients = _loop_clients().by_loop
    client = clients.get(loop)
    if client is None:
        # No await between the look-up and the insertion: one coroutine makes the client.
        client = clients[loop] = _new_async_client()
    return client


async def close_async_redis() -> None:
    """At lifespan shutdown: close this loop's client (its connections end now)."""
    clients = _loop_clients.peek()
    if clients is None:
        return
    client = clients.by_loop.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
