"""The Celery app: ``celery -A workers.app worker``.

Pool wiring lives in ``forkpool.celery``: each task process opens its own
pool in ``worker_process_init`` and closes it in ``worker_process_shutdown``;
the main process holds none.
"""

import sys

from celery import Celery, signals

from forkpool.celery import wire_celery
from forkpool.errors import ConfigError
from suite.logging_setup import configure_logging

app = Celery("workers", include=["workers.tasks"])
try:
    app.config_from_object("workers.celeryconfig", force=True)
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")
wire_celery(app)


@signals.setup_logging.connect(weak=False)
def _suite_logging(**_: object) -> None:
    # Connected: Celery leaves logging to us, so workers log like the rest of the suite.
    configure_logging(extra_loggers=("celery", "celery.task"))
