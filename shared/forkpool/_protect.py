"""``forkpool.protect(obj)``: the per-process lifecycle for pools and clients users already have.

    engine = forkpool.protect(create_engine(url))        # SQLAlchemy, Flask-SQLAlchemy's db,
    pool = forkpool.protect(ConnectionPool(conninfo))    # psycopg_pool, redis.Redis,
    client = forkpool.protect(redis.Redis(...))          # redis.asyncio.Redis, a bare connection

A protected object gets what forkpool's own pool gets:

- a master (the Gunicorn arbiter, the Celery main process) releases it before
  forking (``release``: closed properly, by the process that owns it);
- a forked child first points every socket it inherited to the object's
  servers at /dev/null (``kernel_sockets.detach_connected_to``, run in the
  at-fork hook, before the child opens anything), then lets the object drop
  what it held (``detach``): no network I/O, no lock a parent thread may hold;
- a new worker opens its connections eagerly (``warm``), within the time the
  server hooks allow (Celery's 4 s);
- the worker closes them when it exits (``close``: Gunicorn ``worker_exit``,
  Celery ``worker_process_shutdown``, ``atexit``).

Each library's part is an ``Integration`` in ``forkpool/_integrations/``,
attached through the library's own extension API where it has one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ._base import PoolReport
from ._endpoints import Endpoints
from ._process import home, install_fork_hooks, notice_fork, noticed_late, on_exit, watch_exit
from ._sockets import detach_connected_to
from .errors import ConfigError
from .settings import describe_error

logger = logging.getLogger("forkpool.protect")
WARM_IN_WORKER_S = 2.5  # like the server hooks' bound on opening a worker's pools
T = TypeVar("T")


class Integration(Protocol):
    """What forkpool needs to know about one kind of object."""

    name: str

    def attach(self, obj: Any) -> Endpoints:
        """Once, in the process calling protect(): hook events, set identities; return where it connects.

        Checks everything that can fail before it changes anything (protect() is all or nothing),
        and replaces the containers it changes (a new dict) rather than editing the app's own.
        """

    def detach(self, obj: Any) -> None:
        """In a forked child, after its inherited sockets went to /dev/null: let go, no I/O, no lock."""

    def release(self, obj: Any) -> None:
        """In a master before it forks, and at a worker's exit: close every connection, properly."""

    def warm(self, obj: Any, deadline: float, eager: bool) -> bool:
        """In a new worker: reopen what the object's library would have open (a psycopg_pool pool
        the parent had open), and with `eager` every connection it keeps, by `deadline`; True when done."""

    def report(self, obj: Any) -> list[PoolReport]:
        """The pools behind `obj` in this process: their maximum, where it comes from, and their use now."""


@dataclass
class Protected:
    ref: Any  # weakref.ref to the object, or a strong reference where the type has no weakrefs
    integration: Integration
    endpoints: Endpoints
    eager: bool = False  # open every connection at worker start, not only what the library would
    pid: int = field(default_factory=os.getpid)

    def target(self) -> Any:
        return self.ref() if isinstance(self.ref, weakref.ref) else self.ref


def protect(obj: T, integration: Integration | None = None, *, eager: bool = False) -> T:
    """Give `obj` the per-process lifecycle; returns it. Protecting an object twice is harmless.

    A worker's protected pool opens what the library would open by itself (SQLAlchemy: nothing
    until first use); `eager` opens every connection it keeps at worker start instead.
    """
    from ._integrations import integration_for

    notice_fork()  # in a child forked where no hook ran: the inherited objects let go first
    for entry in _entries():
        if entry.target() is obj:
            return obj
    chosen = integration or integration_for(obj)
    if chosen is None:
        raise ConfigError(
            f"forkpool.protect: no integration for {type(obj).__module__}.{type(obj).__qualname__}; "
            "supported: SQLAlchemy Engine and AsyncEngine, Flask-SQLAlchemy, psycopg_pool pools, "
            "asyncpg pools, redis clients, psycopg2 / psycopg connections "
            "(Django: add 'forkpool.django' to INSTALLED_APPS)"
        )
    endpoints = _attach_whole(chosen, obj)
    try:
        ref: Any = weakref.ref(obj)
    except TypeError:
        ref = obj
    entries = _entries()
    # Only single list operations, each atomic under the GIL: no lock a fork could leave held, and
    # neither a reader nor another protect() loses an entry.
    for dead in [e for e in entries if e.target() is None]:
        with contextlib.suppress(ValueError):  # another protect() removed it first
            entries.remove(dead)
    entries.append(Protected(ref, chosen, endpoints, eager))
    watch_exit()  # a multiprocessing child releases it too, though it leaves without atexit
    if getattr(home(), "started_worker", None) == os.getpid():
        # Protected in a worker that has already started (an app loaded after post_fork,
        # without preload_app): its connections open now, as they would have at start.
        try:
            chosen.warm(obj, time.monotonic() + WARM_IN_WORKER_S, eager)
        except Exception as exc:  # noqa: BLE001 - the database may be down: the worker serves anyway
            logger.warning("opening %s's connections failed: %s", chosen.name, type(exc).__name__)
    return obj


def _attach_whole(integration: Integration, obj: Any) -> Endpoints:
    """``integration.attach(obj)``, or a one-line ConfigError with `obj` as it was: never half-changed.

    Integrations check everything before they change anything; the snapshot of
    the object's attributes (``vars()``, slots, class) is restored anyway if an
    attach fails part-way. An attach must replace the containers it changes
    (a new ``kwargs`` dict), not edit them in place, for the restore to hold.
    """
    before = _Snapshot(obj)
    try:
        return integration.attach(obj)
    except Exception as exc:  # noqa: BLE001 - any failure: the object as it was, one line to the user
        before.restore(obj)
        if isinstance(exc, ConfigError):
            raise ConfigError(describe_error(exc)) from None
        raise ConfigError(
            f"forkpool.protect: cannot protect {type(obj).__module__}.{type(obj).__qualname__} "
            f"({integration.name}): {type(exc).__name__}: {describe_error(exc)}"
        ) from None


_MISSING = object()


class _Snapshot:
    """An object's own attributes (its ``__dict__``, its slots) and its class, to put back as they were."""

    def __init__(self, obj: Any) -> None:
        self.cls = type(obj)
        state = getattr(obj, "__dict__", None)
        self.vars = dict(state) if isinstance(state, dict) else None
        self.slots = {name: getattr(obj, name, _MISSING) for name in _slot_names(self.cls)}

    def restore(self, obj: Any) -> None:
        if type(obj) is not self.cls:
            obj.__class__ = self.cls
        if self.vars is not None:
            state = obj.__dict__
            state.clear()
            state.update(self.vars)
        for name, value in self.slots.items():
            if value is _MISSING:
                if hasattr(obj, name):
                    delattr(obj, name)
            elif getattr(obj, name, _MISSING) is not value:
                setattr(obj, name, value)


def _slot_names(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                # A private slot is stored mangled: Class.__x is _Class__x.
                names.append(f"_{klass.__name__.lstrip('_')}{name}" if name.startswith("__") else name)
    return names


def protected() -> list[tuple[Any, str]]:
    """The live protected objects of this process, with their integration's name."""
    return [(obj, e.integration.name) for e in _entries() if (obj := e.target()) is not None]


def reports() -> list[tuple[str, PoolReport]]:
    """Every pool behind this process's protected objects, with its integration's name."""
    found = []
    for obj, name in protected():
        integration = next(e.integration for e in _entries() if e.target() is obj)
        found += [(name, report) for report in integration.report(obj)]
    return found


def release_all() -> None:
    """Close every protected object's connections (masters before forking, workers at exit).

    In a child forked where no hook ran, the inherited objects are detached first
    (``notice_fork``): closing them would end the parent's sessions.
    """
    notice_fork()
    for entry in list(_entries()):
        obj = entry.target()
        if obj is not None:
            try:
                # Again now, before a fork: Flask-SQLAlchemy makes engines after protect(db).
                entry.endpoints = entry.integration.attach(obj)
            except Exception:  # the endpoints known so far still serve; release anyway
                logger.warning("attaching %s again failed", entry.integration.name, exc_info=True)
            try:
                entry.integration.release(obj)
            except Exception:  # one failure must not keep the others open
                logger.warning("releasing %s failed", entry.integration.name, exc_info=True)


def warm_all(deadline: float) -> bool:
    """Open every protected object's connections in a new worker; False if one is not done by `deadline`.

    Marks this process a started worker: an object protected later in it warms at once.
    """
    notice_fork()
    home().started_worker = os.getpid()
    done = True
    for entry in list(_entries()):
        obj = entry.target()
        if obj is None:
            continue
        try:
            done = entry.integration.warm(obj, deadline, entry.eager) and done
        except Exception as exc:  # noqa: BLE001 - the database may be down: the worker starts anyway
            logger.warning("opening %s's connections failed: %s", entry.integration.name, type(exc).__name__)
            done = False
    return done


def _detach_inherited_objects() -> None:
    """In a forked child (at-fork hook, server hooks): the inherited objects let go. Idempotent."""
    pid = os.getpid()
    inherited = [e for e in _entries() if e.pid != pid]
    if not inherited:
        return
    endpoints = Endpoints()
    for entry in inherited:
        endpoints |= entry.endpoints
    try:
        detach_connected_to(endpoints, only_shared_with_parent=noticed_late())
    except Exception:  # an at-fork hook must never break the fork
        logger.warning("pointing inherited sockets at /dev/null failed", exc_info=True)
    for entry in inherited:
        entry.pid = pid
        obj = entry.target()
        if obj is None:
            continue
        try:
            entry.integration.detach(obj)
        except Exception:  # an at-fork hook must never break the fork
            logger.warning("detaching inherited %s failed", entry.integration.name, exc_info=True)


def unprotect_all() -> None:
    """Forget every protected object (tests; a process that hands its objects over)."""
    _entries().clear()


def _entries() -> list[Protected]:
    """The protected objects' entries, dead ones included: readers skip an entry whose target is gone.

    Never pruned on read: a reader (the metrics exporter's thread, every second) rewriting the
    list could drop an entry protect() appends meanwhile. protect() prunes, as it appends.
    """
    holder = home()
    if not hasattr(holder, "protected"):
        holder.protected = []
    return holder.protected


def _close_at_exit() -> None:
    # Plain scripts: sessions end with a goodbye, not a dropped socket. Celery children
    # leave with os._exit(): worker_process_shutdown releases there.
    try:
        release_all()
    except Exception:  # nothing may break interpreter exit
        logger.debug("releasing protected objects at exit failed", exc_info=True)


# At interpreter exit and at a multiprocessing child's exit (_process.close_at_exit).
on_exit("protection", _close_at_exit)
install_fork_hooks("protection", after_in_child=_detach_inherited_objects)
