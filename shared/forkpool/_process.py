"""Per-process state and fork: ``per_process``, the after-fork routine, forkpool's threads across a fork.

``per_process`` is one instance per process, the singleton pre-forking servers need.

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
  serialise forever or build two. Here the fast path is a lock-free fork
  check (like redis-py's ``_checkpid``; see ``sentinel()``) and the factory runs once.
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
import mmap
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

if TYPE_CHECKING:
    import weakref

    from ._protect import Protected
    from .settings import PoolSettings

T = TypeVar("T")

logger = logging.getLogger("forkpool")

_HOME = "_forkpool_process_state"


# Where there is no fork (Windows) there are no at-fork hooks to install: per_process is then
# simply one instance per process, and the pid check never sees another pid.
CAN_FORK = hasattr(os, "register_at_fork")


class Home(Protocol):
    """forkpool's process-wide holder, as the library uses it: a module object in ``sys.modules`` (see home()).

    The first group exists from the holder's creation. The second, each module's own state, is added by that
    module's accessor on first use and read only behind ``hasattr``/``getattr`` until then.
    """

    slots: dict[str, _Slot]  # key -> _Slot
    created: list[_Slot]  # slots with an instance, in creation order
    hooks_installed: set[str]  # which at-fork hooks are registered
    child_callbacks: dict[str, Callable[[], None]]  # name -> callback, run in order by after_fork_in_child()
    owner_pid: int  # the process this state belongs to: another pid means a fork nobody has handled yet
    handling_fork_in: int | None  # pid whose routine is running
    handling_thread: int | None  # the thread running it (threading.get_ident())
    unseen_fork_lock: threading.RLock
    noticed_late: bool  # notice_fork() is running after_fork_in_child(), see noticed_late()
    exit_callbacks: dict[str, Callable[[], None]]  # name -> callback, see on_exit()
    exit_watched_in: int | None  # pid whose exit is watched
    exit_watch: _ExitWatch
    fork_sentinel: ForkSentinel  # see fork_sentinel()

    configured: dict[str, PoolSettings]  # _registry.configured()
    size_sources: dict[str, str]  # _registry.size_sources()
    used_pools: set[str]  # _registry._used()
    stats_listeners: dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]]  # _base.stats_listeners()
    live_pools: weakref.WeakSet[Any]  # _base.live_pools()
    held_at_fork: list[Any]  # _base: the pool locks held across fork
    protected: list[Protected]  # _protect._entries()
    started_worker: int  # _protect: the pid whose worker start ran
    quiet_threads: weakref.WeakSet[Quiet]  # members() below
    quiet_forking: bool  # forking() below
    sqlalchemy_inherited_pools: list[Any]  # _integrations.sqlalchemy._kept()
    asyncpg_inherited: list[Any]  # _drivers_async.kept_after_fork()
    django_graveyard: list[Any]  # django.databases.graveyard()
    uwsgi_fork_handler: Any  # uwsgi: a ctypes callback kept alive for good


class ForkSentinel(Protocol):
    """Byte 0 reads 1 while the process has released everything it inherited, 0 after a fork until it has."""

    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


_MADV_WIPEONFORK = 18
# How long a thread waits for another thread of the child to finish the after-fork routine: it does no
# network I/O and takes no lock a parent thread held, so it ends in milliseconds; the bound stops a hang.
_OTHER_THREAD_ROUTINE_S = 10.0


class _PidSentinel:
    """Where the kernel cannot wipe a page on fork: the same answer from a pid compare (a system call)."""

    def __getitem__(self, index: int, /) -> int:
        return int(home().owner_pid == os.getpid())

    def __setitem__(self, index: int, value: int, /) -> None:
        pass  # owner_pid is what arms it


def _new_fork_sentinel() -> ForkSentinel:
    """One private page that the kernel zeroes in the child of every fork (``MADV_WIPEONFORK``, Linux 4.14+).

    Every fork, also one no Python hook sees (uWSGI's, a C extension's), leaves
    the child a zero where the parent reads 1; ``after_fork_in_child`` sets it
    again once the child has released what it inherited. Reading it costs a
    C-level index, where ``os.getpid()`` is a system call on every checkout
    (glibc has cached no pid since 2.25).
    """
    if not sys.platform.startswith("linux"):
        return _PidSentinel()
    # CPython's mmap module exports MADV_WIPEONFORK only where its build headers had it (none of
    # the 3.11-3.13 builds here): the value is Linux's ABI, <asm-generic/mman-common.h>.
    wipe_on_fork = getattr(mmap, "MADV_WIPEONFORK", _MADV_WIPEONFORK)
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(wipe_on_fork)
    except OSError:  # a kernel before 4.14 (EINVAL)
        return _PidSentinel()
    # An emulator may take the advice and ignore it (qemu-user answers 0 to any madvise): the kernel's
    # own word on the page decides, or a C fork would go unseen.
    return page if _wiped_on_fork(page) else _PidSentinel()


def _wiped_on_fork(page: mmap.mmap) -> bool:
    """Whether /proc/self/smaps lists `page` with the "wf" flag (wipe on fork).

    Read once per process tree (a child inherits the page). psutil's memory maps do not carry VmFlags,
    and the library does not require psutil: the file is read here.
    """
    import ctypes  # only here: most processes never need it

    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as smaps:
            inside = False
            for line in smaps:
                first = line.split(None, 1)[0] if line.strip() else ""
                if "-" in first and ":" not in first:  # a mapping's header: start-end perms ...
                    start, _, end = first.partition("-")
                    inside = int(start, 16) <= address < int(end, 16)
                elif inside and first == "VmFlags:":
                    return "wf" in line.split()[1:]
    except (OSError, ValueError):
        return False
    return False


def sentinel(holder: Home | None = None) -> ForkSentinel:
    """The process's fork sentinel (see ``_new_fork_sentinel``); hot paths keep a reference.

    ``if not sentinel[0]: notice_fork()`` is the pid check without the system call.
    """
    holder = holder or home()
    # getattr: a state made by a forkpool before the sentinel existed (a reload in a long process).
    found: ForkSentinel | None = getattr(holder, "fork_sentinel", None)
    if found is None:
        found = holder.fork_sentinel = _new_fork_sentinel()
        found[0] = int(holder.owner_pid == os.getpid())
    return found


def home() -> Home:
    """forkpool's process-wide holder: created once, found again by every later import or reload."""
    holder = sys.modules.get(_HOME)
    if holder is None:
        candidate = types.ModuleType(_HOME, "forkpool's per-process state; see forkpool/_process.py")
        state = cast(Home, candidate)  # a module takes any attribute: the first group of Home is set here
        state.slots = {}
        state.created = []
        state.hooks_installed = set()
        state.child_callbacks = {}
        state.owner_pid = os.getpid()
        state.handling_fork_in = None
        state.handling_thread = None
        state.unseen_fork_lock = threading.RLock()
        state.noticed_late = False
        state.exit_callbacks = {}
        state.exit_watched_in = None
        state.exit_watch = _ExitWatch()
        state.fork_sentinel = _new_fork_sentinel()
        state.fork_sentinel[0] = 1
        holder = sys.modules.setdefault(_HOME, candidate)
    # Only home() creates the module at this name (a name of forkpool's own): it has Home's first group.
    return cast(Home, holder)


class _Slot:
    """One per_process key: the newest factory and callbacks, and this process's instance."""

    __slots__ = ("close", "creator", "current", "detach", "factory", "key", "lock")

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
        # The sentinel reads 1 only once this process has released what it inherited, which empties
        # every slot another pid filled: an instance found then is this process's.
        if current is not None and _fork_sentinel[0]:
            return current[1]  # type: ignore[no-any-return]  # the slot holds what this factory made: a T
        return self._create()

    def peek(self) -> T | None:
        """This process's instance if it exists, without creating it."""
        current = self._slot.current
        if current is not None and current[0] == os.getpid():
            return current[1]  # type: ignore[no-any-return]  # the slot holds what this factory made: a T
        return None

    def close(self) -> None:
        """Close this process's instance (with ``close``), if it has one; the next call makes a new one."""
        _close_slot(self._slot)

    def __repr__(self) -> str:
        return f"<per_process {self.key}>"

    def _create(self) -> T:
        slot = self._slot
        pid = os.getpid()
        if home().owner_pid != pid:
            notice_fork()  # before the slot's lock: a parent thread may have held it at fork time
        with slot.lock:
            # Invariant: one instance per process. Threads racing on first use queue
            # here and the losers return the winner's instance; the factory runs once.
            current = slot.current
            if current is not None and current[0] == pid:
                return current[1]  # type: ignore[no-any-return]  # the slot holds what this factory made: a T
            if slot.creator == threading.get_ident():
                raise RuntimeError(f"per_process factory {slot.key} calls itself")
            slot.creator = threading.get_ident()
            try:
                instance = slot.factory()
            finally:
                slot.creator = None
            slot.current = (pid, instance)
            home().created.append(slot)
        watch_exit()  # a multiprocessing child closes it too, though it leaves without atexit
        return instance  # type: ignore[no-any-return]  # the factory's: a T


@overload
def per_process(
    factory: Callable[[], T],
    *,
    detach: Callable[[T], None] | None = ...,
    close: Callable[[T], None] | None = ...,
    key: str | None = ...,
) -> PerProcess[T]: ...
@overload
def per_process(
    factory: None = ...,
    *,
    detach: Callable[[Any], None] | None = ...,
    close: Callable[[Any], None] | None = ...,
    key: str | None = ...,
) -> Callable[[Callable[[], T]], PerProcess[T]]: ...


def per_process(
    factory: Callable[[], T] | None = None,
    *,
    detach: Callable[[T], None] | None = None,
    close: Callable[[T], None] | None = None,
    key: str | None = None,
) -> Any:
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


def close_instances() -> None:
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
        except Exception:  # one failing close must not keep the others open
            logger.warning("closing %s failed", slot.key, exc_info=True)


def _detach_inherited_instances() -> None:
    """In a forked child: hand every inherited instance to its ``detach``. No locks, no I/O.

    One of the callbacks of ``after_fork_in_child``, the first registered.
    """
    holder = home()
    pid = os.getpid()
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
            except Exception:  # an at-fork hook must never break the fork
                logger.warning("detaching inherited %s failed", slot.key, exc_info=True)


def on_fork_in_child(name: str, callback: Callable[[], None]) -> None:
    """Add `callback` to what a forked child runs, once, before anything else uses forkpool's state.

    Callbacks run in the order their names were first added (a module's reload
    replaces its callback in place), in the child only, under the rule of the
    module docstring: no network I/O, no lock a parent thread may have held.
    Modules above this one add theirs at import (pools, protected objects,
    broker sockets, metrics): this module imports none of them.
    """
    home().child_callbacks[name] = callback


def after_fork_in_child() -> None:
    """Release everything this process inherited across fork: the one routine every path runs. Idempotent per pid.

    Run by the at-fork hook (``os.fork()``, multiprocessing's fork), by the
    server hooks (Gunicorn, Celery, uWSGI), and by the pid check of every entry
    point (``notice_fork``) for a fork Python's hooks did not see: uWSGI and
    other C code calling ``fork()`` themselves. Each registered callback runs
    once per process, in order; one that fails is logged and the others run.
    """
    holder = home()
    pid = os.getpid()
    if holder.owner_pid == pid:
        return  # done in this process
    if holder.handling_fork_in == pid:
        if getattr(holder, "handling_thread", None) != threading.get_ident():
            # Another thread of this child runs it (two pid checks past a lock a parent thread held at
            # fork time, each replacing it): nothing may use forkpool's state before it is done.
            deadline = time.monotonic() + _OTHER_THREAD_ROUTINE_S
            while holder.owner_pid != pid and time.monotonic() < deadline:
                time.sleep(0.001)
        return  # or being done, further up this thread's stack
    holder.handling_fork_in = pid
    holder.handling_thread = threading.get_ident()
    for name, callback in list(holder.child_callbacks.items()):
        try:
            callback()
        except Exception:  # an at-fork hook must never break the fork
            logger.warning("releasing inherited state (%s) after fork failed", name, exc_info=True)
    # Last: the lock-free checks of other threads pass only once everything is released.
    holder.owner_pid = pid
    sentinel(holder)[0] = 1
    try:
        watch_exit()
    except Exception:  # an at-fork hook must never break the fork
        logger.warning("watching a multiprocessing child's exit failed", exc_info=True)


def notice_fork() -> None:
    """The pid check's slow path: in a process that forkpool's state does not belong to, run the routine.

    Cheap when nothing changed (one attribute read and a pid compare). After a
    fork no Python hook saw, several threads of the child may get here at once:
    they queue on a lock, the first runs ``after_fork_in_child`` and the others
    find it done. That lock may have been held by a parent thread at fork time,
    so it is taken with a timeout and replaced if it never comes free, as
    redis-py's ``ConnectionPool._checkpid`` does with its fork lock.
    """
    holder = home()
    if holder.owner_pid == os.getpid():
        sentinel(holder)[0] = 1  # released already (a pool made in this process asked first)
        return
    lock = holder.unseen_fork_lock
    if not lock.acquire(timeout=5):
        lock = holder.unseen_fork_lock = threading.RLock()
        lock.acquire()
    try:
        holder.noticed_late = True
        after_fork_in_child()
    finally:
        holder.noticed_late = False
        lock.release()


def noticed_late() -> bool:
    """True while ``after_fork_in_child`` runs from a pid check, not right after the fork.

    The child may have opened sockets of its own by then (a client's own pid check
    reconnects): a sweep of sockets by server endpoint must keep to those the parent
    holds too (``kernel_sockets.detach_connected_to(..., only_shared_with_parent=True)``).
    """
    # getattr: a state made by a forkpool before this attribute existed (a reload in a long process).
    return bool(getattr(home(), "noticed_late", False))


def install_fork_hooks(
    name: str,
    *,
    before: Callable[[], None] | None = None,
    after_in_parent: Callable[[], None] | None = None,
    after_in_child: Callable[[], None] | None = None,
) -> None:
    """Fork hooks for `name`: `after_in_child` joins ``after_fork_in_child`` (so a fork Python's hooks
    do not see runs it too); `before` and `after_in_parent` go to ``os.register_at_fork``, once per
    process however often the caller is imported or reloaded."""
    holder = home()
    if after_in_child is not None:
        on_fork_in_child(name, after_in_child)
    if name in holder.hooks_installed:
        return
    holder.hooks_installed.add(name)
    kwargs = {k: v for k, v in (("before", before), ("after_in_parent", after_in_parent)) if v is not None}
    if kwargs and CAN_FORK:
        os.register_at_fork(**kwargs)


def _replace_unseen_fork_lock() -> None:
    # A parent thread may have held it at fork time: the child starts with a free one. Not when a pid
    # check runs the routine: that thread holds the lock, and the child's other threads must queue on it.
    if not noticed_late():
        home().unseen_fork_lock = threading.RLock()


def on_exit(name: str, callback: Callable[[], None]) -> None:
    """Add `callback` to what a process closes when it ends normally, after its ``per_process`` instances.

    That is at interpreter exit (``atexit``: plain scripts, uWSGI workers) and,
    in a multiprocessing child, which leaves through ``os._exit()`` without
    ``atexit``, in multiprocessing's own exit finalizers (see ``watch_exit``).
    """
    home().exit_callbacks[name] = callback


def close_at_exit() -> None:
    """End this process's sessions with a goodbye, not a dropped socket: its instances, then ``on_exit``'s.

    Celery children leave with ``os._exit()`` after their own
    ``worker_process_shutdown``, which closes instead.
    """
    notice_fork()  # in a child no hook saw fork: what it inherited is let go, never closed
    try:
        close_instances()
    except Exception:  # nothing may break interpreter exit
        logger.debug("closing per-process instances at exit failed", exc_info=True)
    for name, callback in list(home().exit_callbacks.items()):
        try:
            callback()
        except Exception:  # nothing may break interpreter exit
            logger.debug("closing %s at exit failed", name, exc_info=True)


class _ExitWatch:
    """What multiprocessing's after-fork registry holds (weakly: this module keeps it alive)."""


def watch_exit(*, again: bool = False) -> None:
    """Once per process where multiprocessing is loaded: its exit finalizers run ``close_at_exit`` too.

    A multiprocessing child (``Process``, ``Pool``, ``ProcessPoolExecutor``; fork,
    forkserver or spawn) ends with ``util._exit_function()``, which runs the
    registered ``util.Finalize`` callbacks, then ``os._exit()``: ``atexit`` never
    runs. Registering when multiprocessing is imported would not do: the child's
    ``BaseProcess._bootstrap`` clears the finalizer registry before ``run()``,
    wiping what the parent (fork) or the child's own imports (spawn) registered.
    So this runs when a process first makes an instance and in every forked
    child, and it also registers with ``util.register_after_fork``, whose
    callbacks ``_bootstrap`` runs right after that clear (every start method):
    the finalizer is registered again there, where it stays.
    """
    holder = home()
    pid = os.getpid()
    if (holder.exit_watched_in == pid and not again) or "multiprocessing" not in sys.modules:
        return
    holder.exit_watched_in = pid
    from multiprocessing import util

    # A plain os.fork() child keeps its parent's finalizers (only a multiprocessing child's
    # _bootstrap clears them): one close_at_exit finalizer per process, not one more per generation.
    # _finalizer_registry and Finalize._callback are private; no public way to list them (3.11-3.13).
    registered = getattr(util, "_finalizer_registry", {}).values()
    if not any(getattr(finalizer, "_callback", None) is close_at_exit for finalizer in registered):
        util.Finalize(None, close_at_exit, exitpriority=0)
    if not again:
        # The after-fork registry is inherited and never cleared: registered once, in the first process.
        util.register_after_fork(holder.exit_watch, _watch_exit_again)


def _watch_exit_again(_: object) -> None:
    watch_exit(again=True)


def _close_at_exit() -> None:
    close_at_exit()


_fork_sentinel = sentinel()  # read by every per_process call

if "per_process" not in home().hooks_installed:
    atexit.register(_close_at_exit)
    if CAN_FORK:
        # The one at-fork hook of the child: every module's callback runs from it, in order.
        os.register_at_fork(after_in_child=after_fork_in_child)
install_fork_hooks("unseen-fork-lock", after_in_child=_replace_unseen_fork_lock)
install_fork_hooks("per_process", after_in_child=_detach_inherited_instances)

# -- background threads no fork sees -------------------------------------------------------------------------
# Background threads no fork sees: ended before ``fork()``, started again in the parent after it.
#
# Python 3.12+ warns ``This process (pid=...) is multi-threaded, use of fork() may
# lead to deadlocks in the child`` in the parent of a fork while more than one OS
# thread is alive. CPython's ``os_fork_impl`` (Modules/posixmodule.c) counts the
# threads after the before-fork hooks and ``fork()`` itself, before the
# after-fork-in-parent hooks (on Linux: ``num_threads`` of /proc/self/stat;
# elsewhere ``threading._active``). So a thread that is merely parked in a
# before-fork hook still counts; one that has *ended* does not, and one started
# again in an after-fork-in-parent hook is not seen. That is what this module
# does for forkpool's own background threads (pool maintainers, the idle-pool
# closer): each is asked to end, joined, and the fork waits (bounded) until the
# kernel no longer lists it; the parent starts it again afterwards.
#
# Where the parent starts them again depends on the interpreter. Python 3.12 counts
# inside ``warn_about_fork_with_threads``, called before ``PyOS_AfterFork_Parent``:
# the after-fork hook restarts them. Python 3.13.0 counts after the after-fork hooks
# (cpython#137109: threads stopped before fork and restarted in ``after_in_parent``
# still warn; fixed by gh-141438, backported to 3.14 in gh-141614): there the threads
# start again at the parent's next use of a pool (``Pool.getconn``), not in the hook.
# Measured on this machine with 3.12.1 and 3.13.0 (tests/test_fork_quiet.py).
#
# A thread busy with something slow (connecting to a server that does not
# answer) may outlast the bound; the fork then goes ahead, with the warning.
# Under gevent's monkey patching a thread started after the patch is a greenlet,
# not an OS thread: it is not waited for (Gunicorn's gevent worker patches after
# ``post_fork`` opened the pools, so their maintainers are real threads there).
# gevent's patched ``os.fork`` ignores DeprecationWarning around the fork itself
# (gevent 26.9, gevent/os.py ``fork_gevent``).

quiet_logger = logging.getLogger("forkpool.pool")

# How long a fork waits for forkpool's threads to end (a round of upkeep in progress finishes first).
END_BOUND = 1.0

# True where the thread count is taken before the after-fork-in-parent hooks run, so that a thread
# started in one is not counted: 3.12 (measured: 3.12.1), and 3.14.1 on (gh-141614, merged into 3.14
# on 2025-11-16; no 3.14 on this machine to measure). 3.13 (measured: 3.13.0; all of 3.13, since no
# 3.13 release with the fix is pinned down here) and 3.14.0 count after them.
RESTART_IN_HOOK = sys.version_info < (3, 13) or sys.version_info >= (3, 14, 1)


class Quiet(Protocol):
    def pause_for_fork(self) -> threading.Thread | None:
        """Ask the thread to end soon (wake it); return it, or None if none runs."""

    def resume_after_fork(self) -> None:
        """Start the thread again if it is wanted (in the parent, after fork)."""


def members() -> weakref.WeakSet[Quiet]:
    holder = home()
    found = getattr(holder, "quiet_threads", None)
    if found is None:
        found = holder.quiet_threads = weakref.WeakSet()
    return found


def register(owner: Quiet) -> None:
    members().add(owner)


def forking() -> bool:
    """True between the before-fork hook and the parent's after-fork hook: start no thread now."""
    return bool(getattr(home(), "quiet_forking", False))


def _os_thread_alive(native_id: int | None) -> bool:
    if native_id is None:
        return False
    try:
        return os.path.exists(f"/proc/self/task/{native_id}")
    except OSError:
        return False


def for_subprocess() -> bool:
    """This fork is subprocess.Popen's (it runs the at-fork hooks only for ``preexec_fn``).

    ``_posixsubprocess`` never warns about threads (tried: 3.12.1, 3.13.0) and the child
    execs at once: there is nothing to end. Found by the calling frames: the hooks run
    from C, inside ``Popen._execute_child``.
    """
    frame: types.FrameType | None = sys._getframe(1)  # CPython's frames are the only way to know who forks
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_code.co_name == "_execute_child" and frame.f_globals.get("__name__") == "subprocess":
            return True
        frame = frame.f_back
    return False


def end_threads() -> None:
    """Before fork: end every forkpool thread of this process, within END_BOUND. Idempotent per fork."""
    holder = home()
    if getattr(holder, "quiet_forking", False) or for_subprocess():
        return
    holder.quiet_forking = True
    owners = list(members())
    threads = []
    for owner in owners:
        try:
            thread = owner.pause_for_fork()
        except Exception:  # an at-fork hook must never break the fork
            quiet_logger.debug("pausing %r before fork failed", owner, exc_info=True)
            continue
        # Under gevent's monkey patching a thread started after the patch is a greenlet on this very
        # OS thread: not counted, and joining it here would switch greenlets inside a fork hook.
        if thread is not None and thread.native_id != threading.get_native_id():
            threads.append(thread)
    deadline = time.monotonic() + END_BOUND
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    # join() returns when the thread's Python state is gone; the OS thread exits a moment later,
    # and CPython counts OS threads. /proc/self/task lists it until then (Linux; elsewhere the
    # count is threading's own, which join() already settled).
    if sys.platform.startswith("linux"):
        for thread in threads:
            while _os_thread_alive(thread.native_id) and not thread.is_alive() and time.monotonic() < deadline:
                os.sched_yield()


def after_fork_in_parent() -> None:
    holder = home()
    if not getattr(holder, "quiet_forking", False):
        return
    holder.quiet_forking = False
    if RESTART_IN_HOOK:
        resume_threads()
    # Otherwise the threads stay ended; the next Pool.getconn() calls resume_threads().


def resume_threads() -> None:
    """Start again what end_threads() ended (in the parent, after fork)."""
    if forking():
        # A request thread (Pool.getconn) while another thread forks: the before-fork hook is
        # joining the threads with the GIL released; starting them now would put them in the fork.
        return
    for owner in list(members()):
        try:
            owner.resume_after_fork()
        except Exception:  # an at-fork hook must never break the fork
            quiet_logger.warning("restarting %r after fork failed", owner, exc_info=True)


def forget_in_child() -> None:
    # The inherited owners are the parent's (their locks may be stale here, and their threads do not
    # exist): the child's own register themselves as it makes them.
    holder = home()
    holder.quiet_forking = False
    holder.quiet_threads = weakref.WeakSet()


install_fork_hooks(
    "quiet-threads", before=end_threads, after_in_parent=after_fork_in_parent, after_in_child=forget_in_child
)
