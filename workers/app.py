"""The Celery app: ``celery -A workers.app worker``.

Pool wiring lives in ``shared.celery_signals``: each task process opens its own
pool in ``worker_process_init`` and closes it in ``worker_process_shutdown``;
the main process holds none.
"""

import sys

from celery import Celery, signals

from shared.celery_signals import wire_celery
from shared.errors import ConfigError
from shared.logging_setup import configure_logging

app = Celery("workers", include=["workers.tasks"])
try:
    app.config_from_object("workers.celeryconfig", force=True)
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")
wire_celery()


@signals.setup_logging.connect(weak=False)
def _suite_logging(**_: object) -> None:
    # Connected: Celery leaves logging to us, so workers log like the rest of the suite.
    configure_logging(extra_loggers=("celery", "celery.task"))
