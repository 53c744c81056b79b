"""Background threads no fork sees: ended before ``fork()``, started again in the parent after it.

Python 3.12+ warns ``This process (pid=...) is multi-threaded, use of fork() may
lead to deadlocks in the child`` in the parent of a fork while more than one OS
thread is alive. CPython's ``os_fork_impl`` (Modules/posixmodule.c) counts the
threads after the before-fork hooks and ``fork()`` itself, before the
after-fork-in-parent hooks (on Linux: ``num_threads`` of /proc/self/stat;
elsewhere ``threading._active``). So a thread that is merely parked in a
before-fork hook still counts; one that has *ended* does not, and one started
again in an after-fork-in-parent hook is not seen. That is what this module
does for forkpool's own background threads (pool maintainers, the idle-pool
closer): each is asked to end, joined, and the fork waits (bounded) until the
kernel no longer lists it; the parent starts it again afterwards.

Where the parent starts them again depends on the interpreter. Python 3.12 counts
inside ``warn_about_fork_with_threads``, called before ``PyOS_AfterFork_Parent``:
the after-fork hook restarts them. Python 3.13.0 counts after the after-fork hooks
(cpython#137109: threads stopped before fork and restarted in ``after_in_parent``
still warn; fixed by gh-141438, backported to 3.14 in gh-141614): there the threads
start again at the parent's next use of a pool (``Pool.getconn``), not in the hook.
Measured on this machine with 3.12.1 and 3.13.0 (tests/test_fork_quiet.py).

A thread busy with something slow (connecting to a server that does not
answer) may outlast the bound; the fork then goes ahead, with the warning.
Under gevent's monkey patching a thread started after the patch is a greenlet,
not an OS thread: it is not waited for (Gunicorn's gevent worker patches after
``post_fork`` opened the pools, so their maintainers are real threads there).
gevent's patched ``os.fork`` ignores DeprecationWarning around the fork itself
(gevent 26.9, gevent/os.py ``fork_gevent``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import types
import weakref
from typing import Protocol

from ._process import home, install_fork_hooks

logger = logging.getLogger("forkpool.pool")

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
            logger.debug("pausing %r before fork failed", owner, exc_info=True)
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
            logger.warning("restarting %r after fork failed", owner, exc_info=True)


def forget_in_child() -> None:
    # The inherited owners are the parent's (their locks may be stale here, and their threads do not
    # exist): the child's own register themselves as it makes them.
    holder = home()
    holder.quiet_forking = False
    holder.quiet_threads = weakref.WeakSet()


install_fork_hooks(
    "quiet-threads", before=end_threads, after_in_parent=after_fork_in_parent, after_in_child=forget_in_child
)
