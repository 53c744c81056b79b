"""RQ in one line: ``rq worker --worker-class forkpool.rq.Worker`` (or ``forkpool.rq.Worker`` in code).

RQ forks a work-horse per job with ``os.fork()``: the at-fork hook releases
what the horse inherited, and ``get_pool()`` (or a protected object) in the
job opens the horse's own connections. The horse then ends with
``os._exit()``: neither ``atexit`` nor multiprocessing's finalizers run there,
so its sessions would end when the kernel closes its sockets, without
libpq's goodbye (PostgreSQL logs "unexpected EOF on client connection").
``Worker`` closes everything the horse opened once its job is done, results
stored: the horse's sessions end properly. A horse killed by a signal (RQ's
``job_timeout`` monitor, ``kill``) runs nothing; the server ends its sessions
when its sockets close.

A worker class of your own: put ``ClosesWhatTheHorseOpened`` first in its bases.
"""

from __future__ import annotations

from typing import Any

from ._process import close_at_exit
from .errors import import_extra

import_extra("rq", "rq", "forkpool.rq")  # without rq: one line saying pip install 'forkpool[rq]'

import rq  # noqa: E402 - after the check above


class ClosesWhatTheHorseOpened:
    """Mixin for an ``rq.Worker`` class: a work-horse closes its pools and protected objects after its job."""

    _forkpool_horse = False

    def main_work_horse(self, *args: Any, **kwargs: Any) -> None:
        # The horse's entry point (RQ 2.x and 3.0: fork and spawn workers both run it), which
        # ends in os._exit(): the flag tells perform_job it runs in a horse, not in the worker
        # itself (SimpleWorker runs jobs in its own process and keeps its pools between them).
        self._forkpool_horse = True
        super().main_work_horse(*args, **kwargs)  # type: ignore[misc]  # a mixin: rq.Worker comes after it in the MRO

    def perform_job(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().perform_job(*args, **kwargs)  # type: ignore[misc]  # a mixin: rq.Worker comes after it in the MRO
        finally:
            if self._forkpool_horse:
                close_at_exit()


class Worker(ClosesWhatTheHorseOpened, rq.Worker):
    """``rq.Worker`` whose work-horses end their sessions with a goodbye."""
