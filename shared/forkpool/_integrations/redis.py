"""redis-py clients, sync (``redis.Redis``) and asyncio (``redis.asyncio.Redis``): one set of connections per process.

Identity: unless the app named its client, each connection says who opened it
through redis-py's own ``redis_connect_func`` hook (a pool connection
keyword): the hook sets ``client_name`` to ``application_name()`` in the
connecting process, at connect time, then runs redis-py's usual handshake,
so the name travels in that handshake (``HELLO ... SETNAME`` or ``CLIENT
SETNAME``) with no extra round trip, and a child's connections carry the
child's pid and role. (Writing ``connection_kwargs["client_name"]`` instead
would freeze the name of whichever process wrote it: the at-fork hook runs
before the server hooks set the worker's role.)

Sync client. redis-py resets a pool by pid (``ConnectionPool._checkpid``),
but that takes ``_fork_lock`` (with a 5 s timeout, then
``ChildDeadlockedError``), and since redis-py 6 the reset keeps the pool's
``_lock`` (5.x made a new one), which redis-py 8's ``reset()`` takes and 6
and 7 take right after, in ``get_connection()`` (no timeout): a child forked
while a parent thread held either hangs or fails on its first command. In a child, after its inherited sockets went to
/dev/null, forkpool gives the pool two new locks and leaves the rest to
redis-py's own pid check: the inherited connections are dropped there, and
their ``disconnect()`` skips ``shutdown()`` in a process other than their
creator, so nothing reaches the parent's connections. A
``single_connection_client`` gets a new ``single_connection_lock`` and
gives up its inherited connection; the worker takes a new one at start.

Asyncio client. redis-py removed the pid checks from ``redis.asyncio``
(redis-py#2911; #2910 is open): a client made before fork hands the
parent's connections to every child. In a child forkpool empties the pool
with its public, lock-free ``reset()``, keeps the inherited connection
objects referenced (their ``__del__`` would reach for the parent's event
loop) and gives the pool new asyncio locks (a parent task may have held
them at fork). A worker cannot open asyncio connections for the app: they
belong to the event loop that opens them, which does not exist yet when the
server hooks run. Open them in the loop's startup (ASGI lifespan) if the
worker should hold them from the start.

Release (a master before it forks, a worker at exit): sync, the pool's
public ``disconnect()``; asyncio, each connected socket is shut down (what
redis-py's own sync ``disconnect()`` does: Redis needs no goodbye) without
the event loop, which at that point is usually gone; redis-py reconnects
such a connection on its next use (``_close()``, or dropping its streams
when their loop is closed).

Private attributes, each only where redis-py has no public way (tried with
redis-py 8.1.0, 6.4.0 and 5.0.8: the same names; 5.x has no asyncio pool
lock, and its sync client no ``single_connection_lock``, set anyway): sync ``pool._fork_lock``
and ``pool._lock`` (replaced in a child); asyncio ``pool._lock`` and
``BlockingConnectionPool._condition`` (replaced in a child),
``pool._available_connections`` / ``pool._in_use_connections`` and a
connection's ``_writer`` (read at release, for the sockets) and ``_close()``,
``client._single_conn_lock`` (replaced in a child).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, resolve
from .._sockets import devnull_fd
from ..identity import application_name

_NAMED = "_forkpool_named"  # on a pool: its connections' names are forkpool's to set
_SINGLE = "_forkpool_single"  # on a client: made with single_connection_client=True

# Inherited asyncio connections a child keeps but never uses (see the module docstring).
_graveyard: list[Any] = []


def is_asyncio(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")


def _named_sync(own: Callable[[Any], None] | None) -> Callable[[Any], None]:
    def connect(connection: Any) -> None:
        connection.client_name = application_name()
        if own is not None:
            own(connection)
        else:
            connection.on_connect()

    return connect


def _named_async(own: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    async def connect(connection: Any) -> None:
        connection.client_name = application_name()
        if own is None:
            await connection.on_connect()
            return
        result = own(connection)
        if inspect.isawaitable(result):
            await result

    return connect


def redis_endpoints(pool: Any) -> Endpoints:
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return Endpoints(unix=frozenset({str(kwargs["path"])}))
    host = kwargs.get("host") or "localhost"
    return Endpoints(tcp=frozenset(resolve(str(host), int(kwargs.get("port") or 6379))))


def _fresh_like(lock: Any) -> Any:
    return threading.RLock() if "RLock" in type(lock).__name__ else threading.Lock()


class RedisClients:
    name = "redis"

    def attach(self, obj: Any) -> Endpoints:
        pool = obj.connection_pool
        if not hasattr(pool, _NAMED):
            kwargs = pool.connection_kwargs
            named = kwargs.get("client_name") is None  # the app's own name wins
            if named:
                wrap = _named_async if is_asyncio(obj) else _named_sync
                kwargs["redis_connect_func"] = wrap(kwargs.get("redis_connect_func"))
            setattr(pool, _NAMED, named)
        if not hasattr(obj, _SINGLE):
            single = getattr(obj, "single_connection_client", None)  # asyncio: public
            setattr(obj, _SINGLE, bool(single) if single is not None else obj.connection is not None)
        return redis_endpoints(pool)

    def detach(self, obj: Any) -> None:
        if is_asyncio(obj):
            self._detach_asyncio(obj)
            return
        pool = obj.connection_pool
        # A parent thread may have held these at fork; redis-py's _checkpid() takes
        # both on the pool's first use here. No public way to renew them.
        pool._fork_lock = _fresh_like(pool._fork_lock)
        pool._lock = _fresh_like(pool._lock)
        if getattr(obj, _SINGLE, False):
            obj.single_connection_lock = threading.RLock()
            obj.connection = None  # it leads to /dev/null now; warm() takes a new one from the pool

    def _detach_asyncio(self, obj: Any) -> None:
        pool = obj.connection_pool
        _graveyard.append(dict(vars(pool)))  # the inherited connection objects, never used or collected here
        pool.reset()  # public, sync, takes no lock in redis.asyncio
        pool._lock = asyncio.Lock()  # a parent task may have held it at fork
        if hasattr(pool, "_condition"):  # BlockingConnectionPool
            pool._condition = asyncio.Condition()
        if obj.connection is not None:
            _graveyard.append(obj.connection)
            obj.connection = None  # initialize() takes a new one, in this process's loop
        if hasattr(obj, "_single_conn_lock"):
            obj._single_conn_lock = asyncio.Lock()

    def release(self, obj: Any) -> None:
        if is_asyncio(obj):
            for conn in _async_connections(obj.connection_pool):
                _shut_down(conn)
            return
        obj.connection_pool.disconnect()  # public: closes each connection; the pool reconnects on use

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        if is_asyncio(obj):
            return True  # asyncio connections belong to a loop that does not exist yet (module docstring)
        if time.monotonic() > deadline:
            return False
        pool = obj.connection_pool
        if getattr(obj, _SINGLE, False):
            # A single-connection client holds its connection from construction: give it one again.
            if obj.connection is None:
                obj.connection = _get_connection(pool)
            return True
        if eager:  # otherwise redis-py connects on first use, and so does the worker
            pool.release(_get_connection(pool))  # one connection: a process uses one at a time per thread
        return True

    def report(self, obj: Any) -> list[PoolReport]:
        pool = obj.connection_pool
        bound = getattr(pool, "max_connections", None)
        # Unset, max_connections is 2**31 up to redis-py 7.x (no bound in practice) and 100 from
        # 8.0 (sync and asyncio pools; read in the tags v5.0.8 ... v8.1.0): "Too many connections" beyond.
        bound = bound if isinstance(bound, int) and bound < 2**31 - 1 else None
        source = (
            "one connection"
            if getattr(obj, _SINGLE, False)
            else (f"max_connections {bound}" if bound is not None else "max_connections unset (2**31)")
        )
        if bound == 100 and not getattr(obj, _SINGLE, False):
            source += " (set, or redis-py 8's default)"
        if getattr(obj, _SINGLE, False):
            bound = 1
        held, busy = _pool_counts(pool)
        return [PoolReport(f"redis {redis_endpoints_label(pool)}", "redis", bound, source, open=held, in_use=busy)]


def _pool_counts(pool: Any) -> tuple[int | None, int | None]:
    """(connections the pool holds, of which checked out), read without its lock; (None, None) if unknown.

    redis-py keeps no public count. ``ConnectionPool`` (sync and asyncio, and
    asyncio's ``BlockingConnectionPool``): ``_available_connections`` and
    ``_in_use_connections``; the sync ``BlockingConnectionPool``: every
    connection it made in ``_connections``, the idle ones in its queue (``pool``,
    padded with None); a sync pool's ``pid`` (public) tells a child's inherited
    lists from its own. Names read in redis-py 5.0.8, 6.4.0 and 8.1.0.
    """
    if getattr(pool, "pid", None) not in (None, os.getpid()):
        return 0, 0  # a child's sync pool before its first use: what it lists is the parent's, dropped then
    in_use = getattr(pool, "_in_use_connections", None)
    available = getattr(pool, "_available_connections", None)
    if in_use is not None and isinstance(available, list):
        return len(in_use) + len(available), len(in_use)
    made, queue = getattr(pool, "_connections", None), getattr(getattr(pool, "pool", None), "queue", None)
    if isinstance(made, list) and queue is not None:
        idle = sum(1 for conn in list(queue) if conn is not None)
        return len(made), len(made) - idle
    return None, None


def redis_endpoints_label(pool: Any) -> str:
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host') or 'localhost'}:{kwargs.get('port') or 6379}/{kwargs.get('db') or 0}"


def _get_connection(pool: Any) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name
        return pool.get_connection("PING")


def _async_connections(pool: Any) -> list[Any]:
    # redis.asyncio has no public list of a pool's connections.
    found = [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]
    return [conn for conn in found if conn.is_connected]


def _shut_down(conn: Any) -> None:
    """End an asyncio connection's session without its event loop: shutdown(), as sync redis-py does."""
    writer = getattr(conn, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already
    # The transport closes its socket from its event loop, which may never run again (an
    # asyncio.run() at import has ended): the socket goes now, its descriptor to /dev/null,
    # so no worker forked from here inherits it; the transport's own close then closes that.
    fd = sock.fileno()
    if fd >= 0:
        os.dup2(devnull_fd(), fd)
    try:
        conn._close()  # sync: the transport lets go, the next use reconnects
    except RuntimeError:  # its event loop is closed: the transport cannot schedule its end
        conn._reader = conn._writer = None


INTEGRATION = RedisClients()
