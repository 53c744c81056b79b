"""Wire Celery's prefork signals so each task process owns one pool and the main process none.

Call ``wire_celery()`` once where the Celery app is defined. Signals
(celery/signals.py): ``worker_init`` runs in the main process before the pool's
children exist; ``worker_process_init`` in every child, replacements included,
and it must finish within 4 s or the child is killed; children end with
``os._exit()``, so ``atexit`` never runs there: ``worker_process_shutdown`` closes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import signals

from . import metrics
from .budget import startup_check
from .errors import ConfigError

from .identity import set_process_role
from .lifecycle import DEFAULT_OPEN_TIMEOUT, release_in_master, start_in_child, stop_in_child

WORKER_ROLE = "worker"


def wire_celery(role: str = WORKER_ROLE, open_timeout: float = DEFAULT_OPEN_TIMEOUT) -> None:
    """Connect the pool lifecycle to Celery's worker signals (idempotent)."""

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        set_process_role(f"{role}-main")
        release_in_master("celery main process")
        concurrency = getattr(sender, "concurrency", None) or 1
        try:
            startup_check(role, int(concurrency), threads=1)
        except ConfigError as exc:
            logging.getLogger("forkpool.budget").error("%s", exc)
            sys.exit(f"forkpool: {exc}")
        metrics.prepare_directory()
        serve_metrics_alone()

    def on_process_init(**_: Any) -> None:
        start_in_child(role, timeout=open_timeout)

    def on_process_shutdown(**_: Any) -> None:
        stop_in_child()
        metrics.mark_dead(os.getpid())

    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="forkpool.worker_init")
    signals.worker_process_init.connect(on_process_init, weak=False, dispatch_uid="forkpool.worker_process_init")
    signals.worker_process_shutdown.connect(
        on_process_shutdown, weak=False, dispatch_uid="forkpool.worker_process_shutdown"
    )


METRICS_PORT_ENV = "WORKER_METRICS_PORT"
METRICS_ADDR_ENV = "WORKER_METRICS_ADDR"


def serve_metrics_alone() -> None:
    """With WORKER_METRICS_PORT set, the main process serves the workers' metrics itself."""
    from prometheus_client import start_http_server

    from .settings import env_int

    port = env_int(METRICS_PORT_ENV, 0, minimum=0)
    if port:
        addr = os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
        start_http_server(port, addr=addr, registry=metrics.suite_registry())
