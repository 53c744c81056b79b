"""``forkpool.redis.get_async_redis()``: this process's and this event loop's ``redis.asyncio.Redis`` (extra ``redis``).

redis-py's asyncio client has no fork check at all (the sync pool's pid check,
``_checkpid``, was not carried over: redis-py#2911): a client made before a
fork hands the parent's sockets to every child. And an asyncio connection
belongs to the event loop that opened it. So, like ``get_async_pool()``: one
client per process (``per_process``) and per loop (a second ``asyncio.run``
gets its own), named ``<suite-id>:<role>:<pid>`` like the sync client
(``client_name``, read when the client is made: in a worker, after the server
hooks named its role). Open nothing in a master; close the client at lifespan
shutdown with ``await close_async_redis()``.

In a forked child the inherited clients are let go with no I/O and no lock
(the rule of per_process.py): each connected socket is pointed at /dev/null,
so nothing the child does reaches the parent's connection and no socket stays
shared, and the objects are kept referenced, never collected in the child:
redis-py's ``Connection.__del__`` would close their transports through the
parent's event loop. A few objects and descriptors per inherited client, and
only when a process forks with a client open, which the server hooks avoid.

Private attributes, read only in a forked child (tried with redis-py 8.1):
a connection's ``_writer`` (its asyncio stream, for the socket), the pool's
``_available_connections`` / ``_in_use_connections``.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import TYPE_CHECKING, Any

from ._process import per_process
from ._sockets import devnull_fd
from .extras import import_extra
from .identity import application_name
from .redis_client import redis_url

if TYPE_CHECKING:
    import redis.asyncio

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


def _new_client() -> redis.asyncio.Redis:
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
        client = clients[loop] = _new_client()
    return client


async def close_async_redis() -> None:
    """At lifespan shutdown: close this loop's client (its connections end now)."""
    clients = _loop_clients.peek()
    if clients is None:
        return
    client = clients.by_loop.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
