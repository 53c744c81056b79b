"""Celery's Django fixup next to forkpool.django: it finds nothing to harm, and pools live as long as their process.

Celery turns on ``celery.fixups.django`` when ``DJANGO_SETTINGS_MODULE`` is
set. Its ``DjangoWorkerFixup`` (read in Celery 5.4.0, 5.5.3, 5.6.0 and
5.7.0; run with 5.7.0):

1. at ``worker_process_init``, ``os.close()``s the file descriptor of every
   inherited Django connection (a later close of that object then acts on a
   descriptor number that may have been reused), then closes each connection
   and (5.6+), for pooled aliases, the pool: ``pool.close()`` in a child
   takes the inherited pool's lock and says goodbye on the parent's sockets;
2. closes connections, and (5.6+) pools, again at every ``task_prerun`` and
   ``task_postrun`` (celery#10554): each task pays a new pool;
3. closes nothing when the child exits (children end with ``os._exit``).

What forkpool does about each, in order of the worker's life:

- Receiver order. Celery sends ``worker_process_init`` to receivers in the
  order they connected. The fixup connects its receiver in its
  ``on_worker_init`` -> ``install()``, at ``worker_init``: after
  ``django.setup()`` ran our ``ready()``, usually after ``wire_celery(app)``
  too. forkpool's detach does not depend on that order: it runs in the at-fork
  hook, before any signal, so the fixup's receiver finds no connection to
  ``os.close`` and no pool to close (it makes an unopened pool of its own and
  closes that: no I/O). Opening the child's pools (``warm``, forkpool.celery's
  ``worker_process_init`` receiver) must come *after* the fixup's receiver, or
  the fixup closes what was just opened. So in the main process, before each
  child is forked (``worker_before_create_process``, Celery >= 5.3), and at
  ``worker_init``, forkpool's receiver is disconnected and connected again by
  its ``dispatch_uid``: it becomes the last one.
- Masters hold none. A main process may use the database after
  ``worker_init`` (a receiver loading settings, say): it closes what it holds
  before each fork, as Gunicorn's ``pre_fork`` hook does.
- Task boundaries: Celery's own knob. ``DjangoWorkerFixup.close_database``
  closes only every ``CELERY_DB_REUSE_MAX`` tasks when that setting is set; it
  is read when the fixup is built, at ``import_modules``, before ``ready()``
  can set it. So at ``worker_init``, when some alias is pooled and the
  project left the setting unset, forkpool sets the fixup's ``db_reuse_max``
  so that it never closes, and does the part of Celery's default that is right
  itself, at the same two signals: ``close()`` on every connection (a pooled
  one goes back to its pool, a classic one is closed, as Celery decided after
  celery#9824), never ``close_pool()``. The pool closes once, at child exit
  (forkpool.celery's ``worker_process_shutdown``). A project that sets
  ``CELERY_DB_REUSE_MAX`` itself keeps its setting (and the fixup then closes
  pools every that many tasks). Why not replace the fixup's receivers: its
  cache closing and model checks stay Celery's.
  The one private attribute: ``app._fixups``, Celery's list of the app's
  fixup instances (the same in 5.4.0 to 5.7.0), to reach the public
  ``worker_fixup.db_reuse_max``. Without it (another Celery), nothing is
  changed: the pool is then closed between tasks, as before.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .databases import DATABASES, INTEGRATION

logger = logging.getLogger("forkpool.django")

# forkpool.celery's dispatch_uid for its worker_process_init receiver.
PROCESS_INIT_UID = "forkpool.worker_process_init"
_NEVER = sys.maxsize
_state: dict[str, Any] = {"boundaries": False, "warned_unwired": False}


def connect() -> bool:
    """Connect forkpool.django's Celery receivers (once); False when Celery is not installed."""
    try:
        from celery import signals
    except ImportError:
        return False
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="forkpool.django.worker_init")
    signals.worker_before_create_process.connect(_before_fork, weak=False, dispatch_uid="forkpool.django.before_fork")
    return True


def django_worker_fixups(app: Any) -> list[Any]:
    """The ``DjangoWorkerFixup`` of each Django fixup Celery installed for `app`."""
    from celery.fixups.django import DjangoFixup

    return [fixup.worker_fixup for fixup in getattr(app, "_fixups", None) or () if isinstance(fixup, DjangoFixup)]


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    # Main process, before the pool's children exist: what is set here, they inherit.
    fixups = django_worker_fixups(getattr(sender, "app", None))
    closes_per_task = any(not fixup.db_reuse_max for fixup in fixups)
    if DATABASES.pooled and closes_per_task:
        for fixup in fixups:
            if not fixup.db_reuse_max:
                fixup.db_reuse_max = _NEVER
        _state["boundaries"] = True
        from celery import signals

        signals.task_prerun.connect(_at_task_boundary, weak=False, dispatch_uid="forkpool.django.task_prerun")
        signals.task_postrun.connect(_at_task_boundary, weak=False, dispatch_uid="forkpool.django.task_postrun")
    # A classic connection opened at child start would be closed by the first task.
    DATABASES.warm_classic = not closes_per_task
    run_forkpool_process_init_last(warn=False)


def _before_fork(**_: Any) -> None:
    # Main process, just before each child is forked (the first ones and every replacement).
    if DATABASES.aliases and DATABASES.holds_connections():
        logger.info("celery main process: closing its Django connections before forking; masters hold none")
        INTEGRATION.release(DATABASES)
    run_forkpool_process_init_last(warn=True)


def run_forkpool_process_init_last(warn: bool) -> bool:
    """Make forkpool.celery's ``worker_process_init`` receiver the last: it opens pools the fixup would close."""
    from celery import signals

    from .. import celery as forkpool_celery

    if signals.worker_process_init.disconnect(dispatch_uid=PROCESS_INIT_UID):
        signals.worker_process_init.connect(forkpool_celery._on_process_init, weak=False, dispatch_uid=PROCESS_INIT_UID)
        return True
    if warn and not _state["warned_unwired"]:
        _state["warned_unwired"] = True
        logger.warning(
            "forkpool.django: this Celery worker was not wired (forkpool.celery.wire_celery(app)): "
            "Django pools open at the first task and are not closed when a child exits"
        )
    return False


def _at_task_boundary(sender: Any = None, **_: Any) -> None:
    """Celery's per-task ``close()`` of every connection, without ``close_pool()``."""
    if not _state["boundaries"] or getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import DatabaseError, InterfaceError, connections

    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except InterfaceError:
            pass
        except DatabaseError as exc:
            if "closed" not in str(exc) and "not connected" not in str(exc):
                logger.warning("closing Django connection %r after a task failed: %s", conn.alias, exc)
