"""psycopg_pool pools (``ConnectionPool``, ``AsyncConnectionPool``, the null pools): one object, rebuilt per process.

psycopg_pool is not fork-safe by design: its worker threads (or tasks) do
not exist in a child, so an inherited pool times out there (psycopg#544), and
every child that runs ``check()`` adds its own connections to the parent's
count (psycopg#651: a pool of 4 forked 4 times ends with 20). Dropping an
inherited pool is no way out either: its ``__del__`` stops workers through
the pool's scheduler and queue, whose locks a parent thread may hold.

Choice: the object the app holds is rebuilt in place, by running its own
psycopg_pool constructor again on it with ``open=False`` and the values it
was made with. Every piece of state (locks, deques, scheduler, queue,
workers, stats) is new and unshared, and ``pool.connection()`` keeps working
on the same name in every worker. The alternative, a per-process proxy
(``forkpool.per_process``) that builds an equivalent pool in each process,
was set aside: the app would have to use what ``protect()`` returns instead
of the pool it already has (a module global, an attribute of its app
object), ``isinstance`` and type checkers would see another class, and it
needs the same values anyway, private ones included (below).

- In a child (at-fork hook, after its inherited sockets went to /dev/null):
  a copy of the old state is kept, never used (a "graveyard": no
  ``__del__``, no close, no lock of it runs here), its idle connections are
  pointed at /dev/null (``dbapi.drop_without_io``: also when a callable
  conninfo hides the server), and the constructor runs again. No I/O, no
  lock that existed at fork time.
- A new worker opens the pool again if the parent had it open (forkpool
  closed it there), and waits for ``min_size`` connections until the
  deadline (``open(wait=True)`` would close the pool on timeout: it is
  polled through ``get_stats()`` instead). An async pool is opened by the
  app in its event loop (ASGI lifespan): the loop does not exist yet when
  the server hooks run.
- A master (and a worker at exit) closes the pool properly, then rebuilds it
  closed, so that it can be opened again: psycopg_pool refuses to reopen a
  closed pool. A sync pool with ``close()``; an async pool with ``close()``
  in its own event loop when that loop is idle, otherwise (the loop of an
  ``asyncio.run()`` at import time is gone) by finishing its idle
  connections with libpq (``conn.pgconn.finish()``: Terminate, then close).
- Identity: unless the conninfo or ``kwargs`` name one, ``kwargs`` carries
  ``application_name`` = ``<suite>:<role>:<pid>``, renewed whenever the
  pool is rebuilt and when a worker starts (its role is set by then). A sync
  pool already open when protected is drained, so that its connections are
  made again with the name.

Private attributes, read only where psycopg_pool stores a constructor
argument nowhere else (tried with psycopg_pool 3.3.3, 3.2.6 and 3.1.9, with
psycopg 3.3.9: the same names): ``_configure``, ``_check``, ``_reset``, ``_reconnect_failed``; ``_pool``
(its idle connections: in a child, and for an async pool at release);
``_sched_runner`` (an async pool's task, which tells the pool's loop).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from .._base import PoolReport
from .._endpoints import Endpoints, postgres
from .._failover import follow_primary_psycopg_pool
from ..errors import ConfigError
from ..identity import application_name
from .dbapi import drop_without_io

_OPEN = "_forkpool_open"  # the pool was open in the parent: a worker opens it again
_NAMING = "_forkpool_naming"  # forkpool names its connections (the app named none)
# Constructor arguments psycopg_pool keeps only in private attributes.
_PRIVATE = {"configure", "check", "reset", "reconnect_failed"}

_PARAMETERS: dict[type, tuple[str, ...]] = {}
_LIBPQ: frozenset[str] | None = None
# Inherited pool states a child keeps but never uses (see the module docstring).
_graveyard: list[dict[str, Any]] = []


def is_async(pool: Any) -> bool:
    return inspect.iscoroutinefunction(type(pool).open)


def _pool_class(pool: Any) -> type:
    for cls in type(pool).__mro__:
        if cls.__module__.startswith("psycopg_pool") and "__init__" in vars(cls):
            return cls
    raise ConfigError(f"forkpool.protect: {type(pool).__qualname__} is not a psycopg_pool pool")


def _own_init(cls: type) -> Callable[..., None]:
    """`cls`'s own ``__init__`` (_pool_class found it in its ``__dict__``: the function ``cls.__init__`` gives)."""
    init: Callable[..., None] = vars(cls)["__init__"]
    return init


def _parameters(cls: type) -> tuple[str, ...]:
    # Read once per class in the process calling protect(): a child only looks it up.
    found = _PARAMETERS.get(cls)
    if found is None:
        found = _PARAMETERS[cls] = tuple(
            name
            for name, p in inspect.signature(_own_init(cls)).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
    return found


def constructor_args(pool: Any) -> dict[str, Any]:
    """The values `pool` was made with (current ones: ``resize()`` included), ``open=False``."""
    state = vars(pool)
    args: dict[str, Any] = {}
    for name in _parameters(_pool_class(pool)):
        if name == "open":
            args[name] = False
        elif name in _PRIVATE and f"_{name}" in state:
            args[name] = state[f"_{name}"]
        elif name not in _PRIVATE and hasattr(pool, name):
            args[name] = getattr(pool, name)
        else:
            raise ConfigError(
                f"forkpool.protect: cannot rebuild {type(pool).__qualname__} in a worker: "
                f"this psycopg_pool keeps its {name!r} argument where forkpool does not know"
            )
    return args


def rebuild(pool: Any, *, keep_old: bool) -> None:
    """Run the pool's constructor again on it, closed; `keep_old`: the old state is kept aside, untouched."""
    args = constructor_args(pool)
    if keep_old:
        old = dict(vars(pool))
        _graveyard.append(old)
        for conn in old.get("_pool", ()):  # its idle connections, whatever the conninfo says
            drop_without_io(conn)
    _own_init(_pool_class(pool))(pool, **args)


def _names_itself(pool: Any) -> bool:
    kwargs, conninfo = pool.kwargs, pool.conninfo
    if isinstance(kwargs, dict) and "application_name" in kwargs:
        return True
    if isinstance(conninfo, str) and conninfo:
        from psycopg.conninfo import conninfo_to_dict

        return "application_name" in conninfo_to_dict(conninfo)
    return False


class _NamedKwargs:
    """A pool's callable ``kwargs`` (psycopg_pool >= 3.3), with this process's identity unless it names one."""

    def __init__(self, own: Any) -> None:
        self.own = own

    def __call__(self) -> Any:
        result = self.own()
        if inspect.isawaitable(result):
            return self._later(result)
        return {"application_name": application_name(), **result}

    async def _later(self, pending: Any) -> dict[str, Any]:
        return {"application_name": application_name(), **(await pending)}


def name_connections(pool: Any) -> None:
    if not getattr(pool, _NAMING, False):
        return
    if callable(pool.kwargs):
        if not isinstance(pool.kwargs, _NamedKwargs):
            pool.kwargs = _NamedKwargs(pool.kwargs)
        return
    # A new dict: the app's own may be shared with other code.
    pool.kwargs = {**(pool.kwargs or {}), "application_name": application_name()}


def libpq_parameters() -> frozenset[str]:
    """Every connection parameter libpq knows (``PQconndefaults``), read once per process."""
    global _LIBPQ
    if _LIBPQ is None:
        from psycopg import pq

        _LIBPQ = frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())
    return _LIBPQ


def pool_endpoints(pool: Any) -> Endpoints:
    """Where the pool connects: its conninfo with its ``kwargs`` (either may be a callable: then unknown).

    ``kwargs`` also carries psycopg's own connection arguments (``autocommit``,
    ``row_factory``, ``prepare_threshold``, ``context``, a ``connection_class``'s
    own...): only libpq's parameters make the conninfo that says where it goes.
    """
    if not isinstance(pool.conninfo, str) or callable(pool.kwargs):
        return Endpoints()
    from psycopg.conninfo import make_conninfo

    known = libpq_parameters()
    libpq = {k: v for k, v in (pool.kwargs or {}).items() if k in known and v is not None}
    return postgres(make_conninfo(pool.conninfo, **libpq))


class PsycopgPools:
    name = "psycopg_pool"

    def attach(self, obj: Any) -> Endpoints:
        # Everything that can fail first (an unknown argument, a conninfo libpq cannot
        # parse), in the process calling protect(), not later in a child; then the changes.
        constructor_args(obj)
        naming = getattr(obj, _NAMING) if hasattr(obj, _NAMING) else not _names_itself(obj)
        endpoints = pool_endpoints(obj)
        setattr(obj, _NAMING, naming)
        setattr(obj, _OPEN, getattr(obj, _OPEN, False) or not obj.closed)
        name_connections(obj)
        if naming and not obj.closed and not is_async(obj) and hasattr(obj, "drain"):
            # Opened before it was protected (``open=True``, psycopg_pool's default): its connections were
            # made without the process's name, so nothing counting sessions by name would see them. They
            # are replaced, idle ones now and lent ones on return (psycopg_pool >= 3.2; an async pool's
            # drain() is a coroutine, so it keeps them until the worker rebuilds it).
            obj.drain()
        follow_primary_psycopg_pool(obj, is_async(obj))  # a conninfo asking for the primary: _failover.py
        return endpoints

    def detach(self, obj: Any) -> None:
        was_open = getattr(obj, _OPEN, False) or not obj.closed
        rebuild(obj, keep_old=True)
        setattr(obj, _OPEN, was_open)
        name_connections(obj)

    def release(self, obj: Any) -> None:
        if obj.closed:
            return
        setattr(obj, _OPEN, True)
        if is_async(obj):
            _close_async(obj)
        else:
            obj.close()
        rebuild(obj, keep_old=False)  # closed, and openable again
        name_connections(obj)

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        # The pool opens what psycopg_pool would (min_size): a pool is "eager" by its min_size.
        name_connections(obj)  # the worker's role is set by now
        if not getattr(obj, _OPEN, False) or is_async(obj):
            return True
        obj.open(wait=False)
        while obj.get_stats().get("pool_available", 0) < obj.min_size:
            if time.monotonic() > deadline:
                return False  # the pool goes on connecting in the background
            time.sleep(0.01)
        return True

    def report(self, obj: Any) -> list[PoolReport]:
        stats = obj.get_stats()
        size = stats.get("pool_size", 0)
        return [
            PoolReport(
                f"psycopg_pool {obj.name}",
                "postgresql",
                obj.max_size,
                f"max_size {obj.max_size}",
                open=size,
                in_use=size - stats.get("pool_available", 0),
                waiting=stats.get("requests_waiting", 0),
            )
        ]


def _close_async(pool: Any) -> None:
    runner = getattr(pool, "_sched_runner", None)  # an asyncio.Task: the loop the pool lives in
    loop = runner.get_loop() if runner is not None else None
    if loop is not None and not loop.is_closed():
        if not loop.is_running():
            loop.run_until_complete(pool.close())
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not loop:  # running in another thread
            asyncio.run_coroutine_threadsafe(pool.close(), loop).result(timeout=30)
            return
    # Its loop is gone (asyncio.run() at import) or is this thread's, busy: end the idle
    # sessions with libpq directly (Terminate, then close); the rest close as they come back.
    for conn in list(getattr(pool, "_pool", ())):
        if not conn.closed:
            conn.pgconn.finish()


INTEGRATION = PsycopgPools()
