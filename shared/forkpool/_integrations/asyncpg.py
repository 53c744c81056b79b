"""asyncpg pools (``asyncpg.create_pool(...)``): the app's same object, opened again in each process's own loop.

An asyncpg pool belongs to one event loop: its ``_loop`` is fixed when it is
made (``asyncio.get_event_loop()`` when no loop is given), and every
connection, future and timer of it lives there. A pool made before a fork is
useless in the child (its loop is the parent's, and its sockets are the
parent's sessions); a pool made at import with no loop running cannot even be
used by a later ``asyncio.run()`` or by uvicorn's loop. Users ask for a way to
open a pool after the fork (asyncpg#1037); asyncpg's answer is to create the
pool after it, or to ``await`` it there.

Choice: the app keeps its object. It is rebuilt in place, unopened, by
running asyncpg's own ``Pool.__init__`` again on it with the values it was
made with, and it opens in the event loop that first needs it: ``await
pool`` / ``async with pool`` (an ASGI lifespan), or the first
``acquire()`` / ``fetch()``... of a request. An asyncpg ``Pool`` has
``__slots__``: no attribute can be added to it, so the object's class is
swapped for a subclass forkpool makes once per class (same slots, same
name; ``isinstance(pool, asyncpg.Pool)`` holds) whose ``_async__init__``,
``_acquire``, ``close`` and ``terminate`` bind a rebuilt pool to the running
loop first. forkpool's own marks are kept by ``id(pool)`` (protect() holds
the pool for the life of the process: the id is never reused).

- In a child (at-fork hook, after its inherited sockets went to /dev/null):
  each inherited connection's socket is pointed at /dev/null again (its
  connect callable may hide the server), the old state (holders,
  connections, the parent's loop) is kept aside and never used: no close, no
  ``terminate()`` (an asyncpg connection collected in a process whose loop
  is open calls it, and that loop's epoll instance is shared with the
  parent: unregistering a socket there unregisters it in the parent), no
  lock. Then ``Pool.__init__`` runs again. No I/O.
- A new worker opens nothing at start (no loop exists yet): the pool opens
  ``min_size`` connections, as asyncpg does, when the worker's loop first
  awaits or uses it. A pool whose loop has closed since it opened (one
  ``asyncio.run()`` per task) ends its old sessions on their sockets and
  opens again in the loop that uses it, where asyncpg would fail with "Event
  loop is closed".
- A master (and a worker at exit) closes the pool properly: ``close()`` in
  its own loop when that loop is alive and idle (or running in another
  thread). When its loop is gone (the ``asyncio.run()`` of an import under
  Gunicorn's ``preload_app``, a uvicorn worker's loop at ``worker_exit``) no
  coroutine of it can run again: each idle connection gets the protocol's
  Terminate message written on its socket (not over TLS, whose stream a raw
  write would break: the server then sees the socket close), and the socket
  is closed; the server ends each session at once. Then the pool is rebuilt,
  unopened, so that it can open again.
- Identity: unless the app names its connections (``server_settings``, the
  DSN's ``application_name``), ``server_settings`` carries
  ``application_name`` = ``<suite>:<role>:<pid>``, renewed whenever the pool
  is rebuilt and when a worker starts.

Private API, where asyncpg keeps a constructor argument or a state nowhere
public (tried with asyncpg 0.30.0, 0.31.0 and 0.32.0: the same names;
``init_size`` / ``_initsize`` from 0.32): the pool's slots ``_initsize``,
``_minsize``, ``_maxsize``, ``_max_queries``,
``_max_inactive_connection_lifetime``, ``_connect``, ``_setup``, ``_init``,
``_reset``, ``_loop``, ``_connection_class``, ``_record_class``,
``_connect_args``, ``_connect_kwargs``, ``_holders``, ``_initialized``,
``_initializing``, ``_closed``; its methods ``_async__init__`` and
``_acquire`` (overridden by the subclass: every open and every acquire goes
through them); a holder's ``_con``; a connection's ``_transport`` and
``_loop``; ``connect_utils._parse_connect_arguments`` (asyncpg's own reading
of a DSN, keyword arguments and the environment into addresses, called with
the parameters its signature names). protect() refuses, with one line, an
asyncpg that keeps a constructor argument elsewhere.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, resolve
from .._failover import follow_primary_asyncpg
from .._sockets import devnull_fd
from ..errors import ConfigError
from ..identity import application_name

CLOSE_TIMEOUT_S = 10.0  # a master's close() in the pool's own loop; then asyncpg terminates what is left
TERMINATE = b"X\x00\x00\x00\x04"  # the frontend's Terminate message ('X', length 4)

# Pool.__init__'s keyword arguments and the slot asyncpg keeps each in (0.30 - 0.32; init_size: 0.32).
_SLOT_OF = {
    "init_size": "_initsize",
    "min_size": "_minsize",
    "max_size": "_maxsize",
    "max_queries": "_max_queries",
    "max_inactive_connection_lifetime": "_max_inactive_connection_lifetime",
    "connect": "_connect",
    "setup": "_setup",
    "init": "_init",
    "reset": "_reset",
    "loop": "_loop",
    "connection_class": "_connection_class",
    "record_class": "_record_class",
}
_STATE_SLOTS = ("_holders", "_initialized", "_initializing", "_closed", "_connect_args", "_connect_kwargs")


@dataclass
class _PoolState:
    pool: Any  # held: a protected pool lives as long as the process, so its id() is never reused
    naming: bool  # forkpool names its connections (the app named none)
    label: str
    deferred: bool = False  # rebuilt unopened: opens in the loop that first needs it
    opening: asyncio.Task[Any] | None = None


_STATES: dict[int, _PoolState] = {}
# Inherited or abandoned pool states a process keeps but never uses (see the module docstring).
_graveyard: list[dict[str, Any]] = []
_SUBCLASSES: dict[type, type] = {}


class _NoLoopYet:
    """A rebuilt pool's ``_loop`` until a loop opens it: anything asked of it says so."""

    def __getattr__(self, name: str) -> Any:
        from asyncpg import exceptions

        raise exceptions.InterfaceError(
            "forkpool: this asyncpg pool opens in the event loop that first awaits "
            "or uses it (await pool, async with pool, pool.acquire())"
        )


_UNBOUND = _NoLoopYet()


class _OpensInItsLoop:
    """Mixed into a protected pool's class: a rebuilt pool binds to the running loop before anything else."""

    __slots__ = ()

    async def _async__init__(self) -> Any:  # await pool / async with pool
        state = _STATES.get(id(self))
        if state is not None and (state.deferred or _loop_ended(self)):
            return await _open_here(self, state)
        return await super()._async__init__()  # type: ignore[misc]  # asyncpg is untyped: the base is Any

    async def _acquire(self, timeout: float | None) -> Any:  # first use: acquire(), fetch(), execute()...
        state = _STATES.get(id(self))
        if state is not None and (state.deferred or _loop_ended(self)):
            await _open_here(self, state)
        return await super()._acquire(timeout)  # type: ignore[misc]  # asyncpg is untyped: the base is Any

    async def close(self) -> None:
        state = _STATES.get(id(self))
        if state is not None and state.deferred:
            return  # never opened in this process: nothing to close (asyncpg would say "not initialized")
        await super().close()  # type: ignore[misc]  # asyncpg is untyped: the base is Any

    def terminate(self) -> None:
        state = _STATES.get(id(self))
        if state is not None and state.deferred:
            return
        super().terminate()  # type: ignore[misc]  # asyncpg is untyped: the base is Any


def _loop_ended(pool: Any) -> bool:
    """The pool opened in a loop that has closed since (one ``asyncio.run()`` per Celery task, say)."""
    loop = pool._loop
    return pool._initialized and not pool._closed and isinstance(loop, asyncio.AbstractEventLoop) and loop.is_closed()


async def _open_here(pool: Any, state: _PoolState) -> Any:
    loop = asyncio.get_running_loop()
    if not state.deferred and _loop_ended(pool):
        # asyncpg would fail with "Event loop is closed": the old sessions end on their
        # sockets, and the pool opens again in this loop.
        for connection in connections_of(pool):
            terminate_without_loop(connection)
        rebuild(pool, keep_old=True)
    task = state.opening
    if task is None or task.get_loop() is not loop:
        pool._loop = loop
        name_connections(pool)  # the process's role is set by now (an ASGI worker's hook sets it after fork)
        # One opening per process: concurrent first users wait for it (asyncpg refuses a second).
        task = state.opening = loop.create_task(_open_once(pool, state))
    await asyncio.shield(task)
    return pool


async def _open_once(pool: Any, state: _PoolState) -> None:
    try:
        await super(_OpensInItsLoop, pool)._async__init__()
    except BaseException:
        if pool._closed:
            # asyncpg 0.32 closes a pool whose first connections failed (0.30 and 0.31 keep it,
            # its holders connect on demand): a worker started while the database was down
            # tries again on its next use, as it would with a pool made there.
            rebuild(pool, keep_old=True)
        raise
    finally:
        if not pool._closed and pool._initialized:
            state.deferred = False  # from here on it is asyncpg's own pool again
        state.opening = None


def _base_class(pool: Any) -> type:
    """The asyncpg class whose ``__init__`` builds the pool (a subclass's own ``__init__`` is not run again)."""
    for cls in type(pool).__mro__:
        if cls.__module__.startswith("asyncpg") and "__init__" in vars(cls):
            return cls
    raise ConfigError(f"forkpool.protect: {type(pool).__qualname__} is not an asyncpg pool")


def _base_init(pool: Any) -> Callable[..., None]:
    """That class's own ``__init__`` (the function in its ``__dict__``, what ``cls.__init__`` gives)."""
    init: Callable[..., None] = vars(_base_class(pool))["__init__"]
    return init


def _protected_class(cls: type) -> type:
    if issubclass(cls, _OpensInItsLoop):
        return cls
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = _SUBCLASSES[cls] = type(
            cls.__name__,
            (_OpensInItsLoop, cls),
            {"__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return sub


def constructor_args(pool: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments `pool` was made with (``set_connect_args()`` included), no loop."""
    keywords: dict[str, Any] = {}
    for name, parameter in inspect.signature(_base_init(pool)).parameters.items():
        if name in ("self", "loop") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        slot = _SLOT_OF.get(name)
        if slot is None or not hasattr(pool, slot):
            raise ConfigError(
                f"forkpool.protect: cannot rebuild {type(pool).__qualname__} in a worker: this "
                f"asyncpg keeps its {name!r} argument where forkpool does not know"
            )
        keywords[name] = getattr(pool, slot)
    for slot in _STATE_SLOTS:
        if not hasattr(pool, slot):
            raise ConfigError(
                f"forkpool.protect: this asyncpg pool has no {slot!r}: an asyncpg forkpool "
                "was not tried with (0.30 - 0.32)"
            )
    return tuple(pool._connect_args), {**pool._connect_kwargs, **keywords}


def rebuild(pool: Any, *, keep_old: bool) -> None:
    """Run asyncpg's ``Pool.__init__`` again on `pool`: unopened, bound to no loop yet."""
    args, kwargs = constructor_args(pool)
    if keep_old:
        _graveyard.append(
            {slot: getattr(pool, slot, None) for slot in ("_holders", "_queue", "_loop", "_maintenance_task")}
        )
    _base_init(pool)(pool, *args, loop=_UNBOUND, **kwargs)
    state = _STATES[id(pool)]
    state.deferred, state.opening = True, None


def _connect_arguments(pool: Any) -> dict[str, Any]:
    """asyncpg.connect()'s keyword arguments as the pool will pass them (its defaults filled in)."""
    import asyncpg

    found = {
        name: p.default
        for name, p in inspect.signature(asyncpg.connect).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    args = tuple(pool._connect_args)
    if args:
        found["dsn"] = args[0]
    found.update(pool._connect_kwargs)
    return found


def _parsed(pool: Any) -> tuple[list[Any], Any]:
    """asyncpg's own reading of the pool's DSN, keyword arguments and environment: (addresses, parameters)."""
    from asyncpg import connect_utils

    given = _connect_arguments(pool)
    accepted = inspect.signature(connect_utils._parse_connect_arguments).parameters
    addrs, params, _config = connect_utils._parse_connect_arguments(**{name: given.get(name) for name in accepted})
    return list(addrs), params


def pool_endpoints(addrs: list[Any]) -> Endpoints:
    tcp: set[tuple[str, int]] = set()
    unix: set[str] = set()
    for addr in addrs:
        if isinstance(addr, str):
            unix.add(addr)
        else:
            tcp |= resolve(str(addr[0]), int(addr[1]))
    return Endpoints(frozenset(tcp), frozenset(unix))


def _names_itself(pool: Any, params: Any) -> bool:
    settings = getattr(params, "server_settings", None) or {}
    if "application_name" in settings:
        return True
    import asyncpg

    connect = pool._connect
    if connect is asyncpg.connect or getattr(connect, "__func__", None) is asyncpg.connect:
        return False
    try:  # the app's own connect callable gets the pool's keyword arguments: does it take server_settings?
        parameters = inspect.signature(connect).parameters.values()
    except (TypeError, ValueError):
        return True
    return not any(p.name == "server_settings" or p.kind is p.VAR_KEYWORD for p in parameters)


def name_connections(pool: Any) -> None:
    state = _STATES.get(id(pool))
    if state is None or not state.naming:
        return
    # New dicts: the app's own may be shared with other code.
    settings = {**(pool._connect_kwargs.get("server_settings") or {}), "application_name": application_name()}
    pool._connect_kwargs = {**pool._connect_kwargs, "server_settings": settings}


def connections_of(pool: Any) -> list[Any]:
    """The asyncpg connections the pool holds now, idle or in use."""
    return [holder._con for holder in list(getattr(pool, "_holders", None) or ()) if holder._con is not None]


def socket_fd(connection: Any) -> int:
    """An asyncpg connection's socket descriptor (-1 if none): a lookup, no I/O, no lock."""
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


def drop_without_io(connection: Any) -> None:
    """Point a connection made in another process at /dev/null; never close it (see dbapi.drop_without_io)."""
    fd = socket_fd(connection)
    if fd >= 0:
        os.dup2(devnull_fd(), fd)


def terminate_without_loop(connection: Any) -> None:
    """End a connection whose event loop is gone: Terminate on its socket (not over TLS), then the socket closes.

    The descriptor is pointed at /dev/null rather than closed: the connection's
    transport still owns that number and closes it when collected, so no other
    file can be given the number meanwhile.
    """
    fd = socket_fd(connection)
    if fd < 0:
        return
    transport = connection._transport
    if transport.get_extra_info("ssl_object") is None and transport.get_extra_info("sslcontext") is None:
        try:
            os.write(fd, TERMINATE)
        except OSError:
            pass  # the server went away already: closing is all there is to do
    os.dup2(devnull_fd(), fd)  # this process's last reference: the socket closes


def loop_state(loop: Any) -> str:
    """ "idle": alive, not running; "elsewhere": running in another thread; "gone": closed, unknown, or this thread's."""
    if not isinstance(loop, asyncio.AbstractEventLoop) or loop.is_closed():
        return "gone"
    if not loop.is_running():
        return "idle"
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    return "gone" if current is loop else "elsewhere"


def close_properly(pool: Any) -> None:
    """Close an open pool from sync code: in its own loop if that can still run, else connection by connection."""
    where = loop_state(pool._loop)
    if where == "idle":
        pool._loop.run_until_complete(asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S))
    elif where == "elsewhere":
        closing = asyncio.run_coroutine_threadsafe(asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S), pool._loop)
        closing.result(timeout=CLOSE_TIMEOUT_S + 5)
    else:
        for connection in connections_of(pool):
            terminate_without_loop(connection)


class AsyncpgPools:
    name = "asyncpg"

    def attach(self, obj: Any) -> Endpoints:
        # Everything that can fail first (an unknown asyncpg, a DSN asyncpg cannot read); then the changes.
        constructor_args(obj)
        addrs, params = _parsed(obj)
        endpoints = pool_endpoints(addrs)
        state = _STATES.get(id(obj))
        if state is None or state.pool is not obj:
            where = addrs[0] if addrs else "?"
            server = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
            state = _PoolState(
                obj,
                not _names_itself(obj, params),
                f"asyncpg pool {getattr(params, 'user', '')}@{server}/{getattr(params, 'database', '')}",
            )
        cls = _protected_class(type(obj))
        _STATES[id(obj)] = state
        if type(obj) is not cls:
            obj.__class__ = cls
        if not obj._initialized and not obj._initializing:
            # Not opened yet: it opens in whichever loop first needs it (its _loop may be a loop
            # that will never run, the one get_event_loop() gave at import).
            state.deferred = True
        name_connections(obj)
        follow_primary_asyncpg(obj, getattr(params, "target_session_attrs", None))  # _failover.py
        return endpoints

    def detach(self, obj: Any) -> None:
        for connection in connections_of(obj):
            drop_without_io(connection)
        rebuild(obj, keep_old=True)
        name_connections(obj)

    def release(self, obj: Any) -> None:
        state = _STATES[id(obj)]
        if state.deferred or not obj._initialized:
            return  # nothing opened in this process
        if not obj._closed:
            close_properly(obj)
        rebuild(obj, keep_old=True)  # closed, and openable again; its old objects are never collected here
        name_connections(obj)

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        # No event loop exists yet in a new worker: the pool opens min_size connections,
        # as asyncpg does, when the worker's loop first awaits or uses it.
        name_connections(obj)  # the worker's role is set by now
        return True

    def report(self, obj: Any) -> list[PoolReport]:
        state = _STATES.get(id(obj))
        size = obj.get_size()
        return [
            PoolReport(
                state.label if state else "asyncpg pool",
                "postgresql",
                obj.get_max_size(),
                f"max_size {obj.get_max_size()}",
                open=size,
                in_use=size - obj.get_idle_size(),
            )
        ]


INTEGRATION = AsyncpgPools()
