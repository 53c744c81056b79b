"""uWSGI wiring in one line: ``--import forkpool.uwsgi`` (uWSGI's option), or ``import forkpool.uwsgi`` in the app.

uWSGI forks its workers in C: Python's ``os.register_at_fork`` hooks do not
run there, and it has no Python hook in the master before it forks (only
``--py-call-uwsgi-fork-hooks`` with ``enable-threads`` makes it call CPython's
fork hooks). This module gives each stage what the Gunicorn hooks give:

- **master, before every fork** (the first workers, and each respawn after
  ``max-requests``, ``harakiri``, a reload): it closes what the application
  opened at import, so it holds no connection when it forks. The hook is a
  C-level ``pthread_atfork`` *prepare* handler, registered with ctypes: libc
  runs it in the process calling ``fork()``, before the fork, whoever calls
  it. It acts only in the uWSGI master (a worker's own forks, ``subprocess``
  and the like, pass through untouched). With ``py-call-uwsgi-fork-hooks``
  uWSGI calls CPython's fork hooks itself: a Python ``before`` hook does it
  then instead.
- **worker, after fork** (``uwsgi.post_fork_hook``, through ``uwsgidecorators``'
  chain so the app's ``@postfork`` functions keep running, after this one):
  the worker releases what it inherited (``after_fork_in_child``: no network
  I/O, no lock), then opens its own pools and protected objects, bounded.
  Mules and spoolers only release; they open on first use.
- **worker exit** (``uwsgi.atexit``, chained to any callable already there):
  the worker closes its pools, so its sessions end with a goodbye, on
  ``max-requests`` recycling, reloads and shutdown. A worker killed by
  ``harakiri`` (SIGKILL) runs nothing: the server ends its sessions when the
  kernel closes its sockets, and the replacement starts clean.
- ``lazy-apps = true``: the app (and this module) load in each worker after
  its fork; the import then releases whatever the worker inherited and marks
  it started, so pools and protected objects open as the app makes them.

Outside uWSGI (``import uwsgi`` fails: tests, another server) importing this
module does nothing. Process roles: ``PROCESS_ROLE`` or ``web`` for workers,
``<role>-master`` for the master, as under Gunicorn.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ._process import after_fork_in_child, home
from ._servers import DEFAULT_OPEN_TIMEOUT, release_in_master, start_in_child, stop_in_child
from .budget import startup_check
from .errors import ConfigError
from .identity import set_process_role

logger = logging.getLogger("forkpool.uwsgi")

WEB_ROLE = "web"
ROLE_ENV = "PROCESS_ROLE"
_INSTALLED = "uwsgi"  # in home().hooks_installed: wired once per process, however often imported

try:
    import uwsgi as _uwsgi  # exists only inside a uWSGI process
except ImportError:
    _uwsgi = None

_FORK_HANDLER = ctypes.CFUNCTYPE(None)


def role() -> str:
    return os.environ.get(ROLE_ENV) or WEB_ROLE


def in_uwsgi() -> bool:
    """True inside a uWSGI process (master, worker, mule or spooler)."""
    return _uwsgi is not None


def _master_pid() -> int:
    return int(_uwsgi.masterpid()) if _uwsgi is not None else 0  # 0: no master process


def before_fork() -> None:
    """In the uWSGI master, just before it forks: close everything (masters hold no connection)."""
    if _master_pid() == os.getpid():
        release_in_master("uwsgi master")


def post_fork() -> None:
    """In each new worker, mule or spooler: release what was inherited; a worker opens its own pools.

    Call it first from your own ``uwsgi.post_fork_hook`` if you replace the hook
    yourself (``uwsgidecorators.postfork`` functions need nothing).
    """
    if _uwsgi is not None and int(_uwsgi.worker_id()) > 0:
        start_in_child(role(), timeout=DEFAULT_OPEN_TIMEOUT)
        return
    after_fork_in_child()
    if _uwsgi is not None:
        set_process_role(f"{role()}-{'mule' if int(_uwsgi.mule_id()) > 0 else 'spooler'}")


def at_exit() -> None:
    """In a worker leaving (recycled, reloaded, stopped): its sessions end now, with a goodbye."""
    if _master_pid() != os.getpid():
        stop_in_child()


def _chain_post_fork(hook: Callable[[], None]) -> None:
    try:
        import uwsgidecorators  # sets uwsgi.post_fork_hook to its chain on first import (needs a master)
    except Exception:  # noqa: BLE001 - no master process (it raises), or not shipped with this uWSGI
        previous = getattr(_uwsgi, "post_fork_hook", None)
        _uwsgi.post_fork_hook = _then(hook, previous)
        return
    uwsgidecorators.postfork_chain.insert(0, hook)  # first: the app's @postfork code finds its own state


def _then(first: Callable[[], None], previous: Callable[[], Any] | None) -> Callable[[], None]:
    def both() -> None:
        first()
        if previous is not None:
            previous()

    return both


def _register_prepare_handler() -> None:
    # uWSGI calls fork() from C and offers no Python hook before it (without
    # --py-call-uwsgi-fork-hooks): libc's at-fork handlers are the only thing that
    # runs in the master before every fork. glibc exports __register_atfork (its
    # pthread_atfork is a static wrapper in libc_nonshared.a); musl pthread_atfork.
    libc = ctypes.CDLL(None)
    handler = _FORK_HANDLER(_prepare)
    home().uwsgi_fork_handler = handler  # a ctypes callback must outlive every call: kept for good
    register = getattr(libc, "__register_atfork", None)
    if register is not None:
        register.argtypes = [_FORK_HANDLER, _FORK_HANDLER, _FORK_HANDLER, ctypes.c_void_p]
        failed = register(handler, _FORK_HANDLER(), _FORK_HANDLER(), None)
    else:
        libc.pthread_atfork.argtypes = [_FORK_HANDLER, _FORK_HANDLER, _FORK_HANDLER]
        failed = libc.pthread_atfork(handler, _FORK_HANDLER(), _FORK_HANDLER())
    if failed:
        logger.warning(
            "forkpool.uwsgi: registering the before-fork handler failed (%s); "
            "the master keeps what the app opened at import",
            failed,
        )


def _prepare() -> None:
    # libc calls this in whichever process forks, before the fork; only the master acts.
    # Nothing here may fork or register another handler (libc holds its at-fork lock).
    try:
        before_fork()
    except Exception:  # a failure here must not stop uWSGI from forking
        logger.warning("forkpool.uwsgi: releasing in the master before fork failed", exc_info=True)


def _option_int(name: str, default: int) -> int:
    value = getattr(_uwsgi, "opt", {}).get(name)
    if isinstance(value, list):  # an option given more than once
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _check_budget() -> None:
    try:
        startup_check(role(), int(_uwsgi.numproc), max(_option_int("threads", 1), 1))
    except ConfigError as exc:
        logging.getLogger("forkpool.budget").error("%s", exc)
        sys.exit(f"forkpool: {exc}")


def _install() -> None:
    holder = home()
    if _uwsgi is None or _INSTALLED in holder.hooks_installed:
        return
    holder.hooks_installed.add(_INSTALLED)
    _uwsgi.atexit = _then(at_exit, getattr(_uwsgi, "atexit", None))
    _chain_post_fork(post_fork)
    if int(_uwsgi.worker_id()) > 0:
        # lazy-apps: loaded in a worker, after its fork: release what it inherited, and
        # mark it started (objects protected from now on open at once).
        post_fork()
        return
    set_process_role(f"{role()}-master")
    _check_budget()
    if _master_pid() != os.getpid():
        return
    if _option_int("py-call-uwsgi-fork-hooks", 0) or _uwsgi.opt.get("py-call-uwsgi-fork-hooks") is True:
        # uWSGI runs CPython's before-fork hooks itself (its threads are on by default since 2.0.2x),
        # with the GIL taken its own way: a ctypes callback then deadlocks taking it again (seen with
        # uWSGI 2.0.31, CPython 3.11). Python's hook is enough there.
        os.register_at_fork(before=before_fork)
    else:
        _register_prepare_handler()


_install()
