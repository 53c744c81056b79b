"""Wire Celery's prefork signals so each task process owns its pools and the main process none.

Call ``wire_celery(app)`` once where the Celery app is defined; calling it again
is harmless: each receiver is connected once (a fixed ``dispatch_uid``), and
the latest call's role and time bound are the ones used.
Signals (celery/signals.py): ``worker_init`` runs in the main process before
the pool's children exist, so whatever it leaves open is inherited: it closes
everything. ``worker_process_init`` runs in every child, replacements included,
and must finish within ``worker_proc_alive_timeout`` (4 s) or the child is
killed and respawned: opening the pools is bounded well inside it. Children end
with ``os._exit()``, so ``atexit`` never runs there: ``worker_process_shutdown``
closes instead.

A pool process forked after the main process connected to the broker (every
replacement: ``max_tasks_per_child``, a killed child) inherits the main
process's broker and result-backend sockets inside kombu objects it never
uses; they keep those connections referenced until the child exits. The child
points its copies at /dev/null (``kernel_sockets.detach_connected_to``):
no byte is sent, no lock taken, and only sockets the main process holds too.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import _endpoints as endpoints
from ._metrics_dir import mark_dead, prepare_directory
from ._process import install_fork_hooks
from ._servers import (
    DEFAULT_OPEN_TIMEOUT,
    release_in_master,
    start_in_child,
    stop_in_child,
)
from ._sockets import detach_connected_to
from .budget import startup_check
from .errors import ConfigError, import_extra
from .identity import set_process_role
from .settings import env_int

WORKER_ROLE = "worker"
METRICS_PORT_ENV = "WORKER_METRICS_PORT"
METRICS_ADDR_ENV = "WORKER_METRICS_ADDR"
# Share of worker_proc_alive_timeout that opening the pools may take at most.
_ALIVE_SHARE = 0.6


def wire_celery(app: Any = None, *, role: str = WORKER_ROLE, open_timeout: float | None = None) -> None:
    """Connect the pool lifecycle to Celery's worker signals. Idempotent.

    With `app`, opening the pools in a new child stays within 60 % of the app's
    ``worker_proc_alive_timeout``; `open_timeout` overrides that bound.
    """
    signals = import_extra("celery.signals", "celery", "forkpool.celery")
    if open_timeout is None:
        alive = getattr(getattr(app, "conf", None), "worker_proc_alive_timeout", None) or 4.0
        open_timeout = min(DEFAULT_OPEN_TIMEOUT, float(alive) * _ALIVE_SHARE)
    _wiring.update(role=role, open_timeout=open_timeout, app=app)
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="forkpool.worker_init")
    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid="forkpool.worker_process_init")
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="forkpool.worker_process_shutdown"
    )


# What the receivers use: set by the latest wire_celery() call.
_wiring: dict[str, Any] = {
    "role": WORKER_ROLE,
    "open_timeout": DEFAULT_OPEN_TIMEOUT,
    "app": None,
    "broker_endpoints": endpoints.Endpoints(),
}


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    role = _wiring["role"]
    kind = _pool_kind(sender)
    # prefork: the tasks run in the pool's children, this process only forks them. The others
    # (threads, gevent, eventlet, solo) run every task here: this is the worker.
    set_process_role(f"{role}-main" if kind == "prefork" else role)
    release_in_master("celery main process")
    concurrency = int(getattr(sender, "concurrency", None) or 1)
    processes, threads = {
        "prefork": (concurrency, 1),
        "thread": (1, concurrency),  # a pool shared by `concurrency` threads: at least that many connections
    }.get(kind, (1, 1))  # gevent/eventlet: greenlets queue on one pool; solo: one task at a time
    try:
        # The app (and the modules it imports) is loaded by now: its protected pools are known.
        startup_check(role, processes, threads=threads)
    except ConfigError as exc:
        sys.exit(f"forkpool: {exc}")  # the one line, on stderr
    prepare_directory()
    serve_metrics_alone()
    # Resolved once here, before any child exists: children inherit the answer.
    _wiring["broker_endpoints"] = _broker_endpoints(getattr(sender, "app", None) or _wiring["app"])


def _pool_kind(sender: Any) -> str:
    """The worker's execution pool: prefork, thread, gevent, eventlet or solo (the module's last part).

    ``worker_init`` is sent before Celery resolves ``pool_cls`` (WorkController.setup_instance):
    it may still be the name given to ``--pool``, resolved here through Celery's own aliases.
    """
    pool_cls = getattr(sender, "pool_cls", None)
    if isinstance(pool_cls, str):
        from celery.concurrency import ALIASES

        path = str(ALIASES.get(pool_cls, pool_cls))
        return path.split(":")[0].rsplit(".", 1)[-1]
    module = getattr(pool_cls, "__module__", "") or "celery.concurrency.prefork"
    return str(module).rsplit(".", 1)[-1]


def _on_process_init(**_: Any) -> None:
    _detach_broker_sockets()  # again, for a fork the at-fork hook did not see
    start_in_child(_wiring["role"], timeout=_wiring["open_timeout"])


def _detach_broker_sockets() -> None:
    # In a pool process just forked by the main process (the at-fork hook: the
    # moment the child exists, not later at worker_process_init).
    if _wiring["broker_endpoints"]:
        detach_connected_to(_wiring["broker_endpoints"], only_shared_with_parent=True)


def _broker_endpoints(app: Any) -> endpoints.Endpoints:
    conf = getattr(app, "conf", None)
    found = endpoints.Endpoints()
    if conf is None:
        return found
    for url in (conf.broker_url, conf.result_backend):
        if isinstance(url, str):
            for part in url.split(";"):  # kombu takes a failover list
                part = part.strip()
                found |= endpoints.url(part, 6379 if part.startswith("redis") else 5672)
    return found


def _on_process_shutdown(**_: Any) -> None:
    stop_in_child()
    mark_dead(os.getpid())


def serve_metrics_alone() -> None:
    """With WORKER_METRICS_PORT set, the main process serves the workers' metrics itself."""
    port = env_int(METRICS_PORT_ENV, 0, minimum=0)
    if port:
        from prometheus_client import start_http_server

        from . import metrics  # raises MissingExtra naming `prometheus` when it is not installed

        addr = os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
        start_http_server(port, addr=addr, registry=metrics.suite_registry())


install_fork_hooks("celery-broker-sockets", after_in_child=_detach_broker_sockets)
