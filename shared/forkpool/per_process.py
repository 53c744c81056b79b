"""``per_process``: one instance per process, the singleton pre-forking servers need.

    @per_process(close=lambda client: client.close())
    def make_client() -> Client:
        return Client(...)

    make_client()          # this process's instance: created on first call, the same after

What the naive singletons get wrong, and what this does instead:

- double-checked locking in ``__new__``, ``lru_cache(maxsize=1)``, a metaclass:
  a forked child gets its parent's instance, sockets and all. Here the child
  gets its own on first use; the inherited one goes to ``detach`` in the
  at-fork hook, never to ``close`` (closing would talk on the parent's socket).
- a module global: ``importlib.reload`` (or the same file imported under two
  names) starts a second instance. Here instances live in one ``sys.modules``
  entry keyed by the factory's qualified name, which a reload finds again.
- a lock taken on every call, or none: threads racing on first use either
  serialise forever or build two. Here the fast path is a lock-free pid
  compare (like redis-py's ``_checkpid``) and the factory runs once.
- nothing at exit: ``close`` runs when the worker exits (``close_all()`` from the
  Gunicorn and Celery hooks, ``atexit`` in plain scripts) and in masters before
  they fork.

Rule for ``detach`` (it runs in the child right after fork, while only the
forking thread exists): no network I/O and no lock that a parent thread may
have held at fork time, including the instance's own. See docs/fork-story.md.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
import types
from typing import Any, Callable, Generic, TypeVar, overload

T = TypeVar("T")

logger = logging.getLogger("forkpool")

_HOME = "_forkpool_process_state"


def home() -> types.ModuleType:
    """forkpool's process-wide holder: created once, found again by every later import or reload."""
    holder = sys.modules.get(_HOME)
    if holder is None:
        candidate = types.ModuleType(_HOME, "forkpool's per-process state; see forkpool/per_process.py")
        candidate.slots = {}  # type: ignore[attr-defined]  # key -> _Slot
        candidate.created = []  # type: ignore[attr-defined]  # slots with an instance, in creation order
        candidate.hooks_installed = set()  # type: ignore[attr-defined]  # which at-fork hooks are registered
        candidate.unseen_fork_lock = threading.Lock()  # type: ignore[attr-defined]
        holder = sys.modules.setdefault(_HOME, candidate)
    return holder


class _Slot:
    """One per_process key: the newest factory and callbacks, and this process's instance."""

    __slots__ = ("key", "factory", "detach", "close", "lock", "current", "creator")

    def __init__(self, key: str) -> None:
        self.key = key
        self.factory: Callable[[], Any] = _unset
        self.detach: Callable[[Any], None] | None = None
        self.close: Callable[[Any], None] | None = None
        self.lock = threading.RLock()
        # (pid, instance): one attribute, so one read sees a consistent pair.
        self.current: tuple[int, Any] | None = None
        self.creator: int | None = None  # thread running the factory: catches a factory calling itself


def _unset() -> Any:
    raise RuntimeError("per_process slot without a factory")


class PerProcess(Generic[T]):
    """Calling it returns this process's instance; see the module docstring."""

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        detach: Callable[[T], None] | None = None,
        close: Callable[[T], None] | None = None,
        key: str | None = None,
    ) -> None:
        self.key = key or f"{factory.__module__}.{factory.__qualname__}"
        slots = home().slots
        slot = slots.get(self.key) or slots.setdefault(self.key, _Slot(self.key))
        # A reload brings new function objects: the newest code builds, detaches and closes.
        slot.factory, slot.detach, slot.close = factory, detach, close
        self._slot = slot
        functools.update_wrapper(self, factory)

    def __call__(self) -> T:
        current = self._slot.current
        if current is not None and current[0] == os.getpid():
            return current[1]  # type: ignore[no-any-return]
        return self._create()

    def peek(self) -> T | None:
        """This process's instance if it exists, without creating it."""
        current = self._slot.current
        if current is not None and current[0] == os.getpid():
            return current[1]  # type: ignore[no-any-return]
        return None

    def close(self) -> None:
        """Close this process's instance (with ``close``), if it has one; the next call makes a new one."""
        _close_slot(self._slot)

    def __repr__(self) -> str:
        return f"<per_process {self.key}>"

    def _create(self) -> T:
        slot = self._slot
        pid = os.getpid()
        current = slot.current
        if current is not None and current[0] != pid:
            _recover_from_unseen_fork()
        with slot.lock:
            # Invariant: one instance per process. Threads racing on first use queue
            # here and the losers return the winner's instance; the factory runs once.
            current = slot.current
            if current is not None and current[0] == pid:
                return current[1]  # type: ignore[no-any-return]
            if slot.creator == threading.get_ident():
                raise RuntimeError(f"per_process factory {slot.key} calls itself")
            slot.creator = threading.get_ident()
            try:
                instance = slot.factory()
            finally:
                slot.creator = None
            slot.current = (pid, instance)
            home().created.append(slot)
            return instance  # type: ignore[no-any-return]


@overload
def per_process(factory: Callable[[], T], *, detach: Callable[[T], None] | None = ...,
                close: Callable[[T], None] | None = ..., key: str | None = ...) -> PerProcess[T]: ...
@overload
def per_process(factory: None = ..., *, detach: Callable[[Any], None] | None = ...,
                close: Callable[[Any], None] | None = ...,
                key: str | None = ...) -> Callable[[Callable[[], T]], PerProcess[T]]: ...


def per_process(factory: Callable[[], T] | None = None, *, detach: Callable[[T], None] | None = None,
                close: Callable[[T], None] | None = None, key: str | None = None) -> Any:
    """One instance of ``factory()`` per process; usable as ``@per_process`` or ``@per_process(close=...)``.

    ``detach(instance)`` runs in a forked child for the instance it inherited
    (no network I/O, no locks: see the module docstring); ``close(instance)``
    runs in the process that created it, at ``close_all()`` or interpreter exit.
    ``key`` defaults to the factory's ``module.qualname``: two factories with
    the same key share one instance.
    """
    if factory is None:
        return lambda f: PerProcess(f, detach=detach, close=close, key=key)
    return PerProcess(factory, detach=detach, close=close, key=key)


def close_all() -> None:
    """Close every per_process instance this process created, newest first (worker exit, masters)."""
    holder = home()
    pid = os.getpid()
    while holder.created:
        slot = holder.created.pop()
        current = slot.current
        if current is not None and current[0] == pid:
            _close_slot(slot)


def _close_slot(slot: _Slot) -> None:
    pid = os.getpid()
    with slot.lock:
        current = slot.current
        if current is None or current[0] != pid:
            return
        slot.current = None
    if slot.close is not None:
        try:
            slot.close(current[1])
        except Exception:  # noqa: BLE001 - one failing close must not keep the others open
            logger.warning("closing %s failed", slot.key, exc_info=True)


def detach_inherited() -> None:
    """In a forked child: hand every inherited instance to its ``detach``. No locks, no I/O. Idempotent.

    Runs from the at-fork hook (only the forking thread exists then) and from
    the server hooks, for a fork Python's hook did not see.
    """
    holder = home()
    pid = os.getpid()
    if getattr(holder, "detached_in", None) == pid:
        return  # done already in this process: this process's own instances and locks stay
    holder.detached_in = pid
    holder.created = []
    for slot in list(holder.slots.values()):
        # A parent thread may have held this lock at fork time; it is never released here.
        slot.lock = threading.RLock()
        slot.creator = None
        current = slot.current
        if current is None or current[0] == pid:
            continue
        slot.current = None
        if slot.detach is not None:
            try:
                slot.detach(current[1])
            except Exception:  # noqa: BLE001 - an at-fork hook must never break the fork
                logger.warning("detaching inherited %s failed", slot.key, exc_info=True)
    holder.unseen_fork_lock = threading.Lock()


def _recover_from_unseen_fork() -> None:
    # A fork that skipped Python's at-fork hooks (C code calling fork() itself):
    # several threads of the child may get here at once. The lock may have been
    # held by a parent thread at fork time, so it is taken with a timeout and
    # replaced if it never comes free, as redis-py's _checkpid does.
    holder = home()
    lock = holder.unseen_fork_lock
    if not lock.acquire(timeout=5):
        lock = holder.unseen_fork_lock = threading.Lock()
        lock.acquire()
    try:
        if any(s.current is not None and s.current[0] != os.getpid() for s in holder.slots.values()):
            detach_inherited()
    finally:
        lock.release()


def install_fork_hooks(name: str, *, before: Callable[[], None] | None = None,
                       after_in_parent: Callable[[], None] | None = None,
                       after_in_child: Callable[[], None] | None = None) -> None:
    """``os.register_at_fork`` once per process for `name`, however often the caller is imported or reloaded."""
    holder = home()
    if name in holder.hooks_installed:
        return
    holder.hooks_installed.add(name)
    kwargs = {k: v for k, v in
              (("before", before), ("after_in_parent", after_in_parent), ("after_in_child", after_in_child))
              if v is not None}
    os.register_at_fork(**kwargs)


def _close_at_exit() -> None:
    # Plain scripts: end sessions with a proper goodbye, not a dropped socket.
    # Celery children leave with os._exit(): their worker_process_shutdown closes instead.
    try:
        close_all()
    except Exception:  # noqa: BLE001 - nothing may break interpreter exit
        logger.debug("closing per-process instances at exit failed", exc_info=True)


if "per_process" not in home().hooks_installed:
    install_fork_hooks("per_process", after_in_child=detach_inherited)
    atexit.register(_close_at_exit)
