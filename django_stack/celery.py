"""The django stack's Celery app: ``celery --app django_stack.celery worker``.

Configured from Django's settings (``CELERY_*``), so DJANGO_SETTINGS_MODULE is
set and Celery's Django fixup is active, as in a Django project: it sets Django
up in the main process and closes connections around tasks. ``"forkpool.django"``
makes the fixup harmless; ``wire_celery(app)`` drives the pools: each task
process opens its own at start and closes it at exit, the main process holds none.
"""

import os
import sys

from celery import Celery, signals

from forkpool.celery import wire_celery
from forkpool.errors import ConfigError
from suite.logging_setup import configure_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_stack.settings")

app = Celery("django_stack")
app.config_from_object("django.conf:settings", namespace="CELERY")
try:
    wire_celery(app)  # reads worker_proc_alive_timeout: the settings load here, and a bad value stops us here
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")
app.autodiscover_tasks()  # django_stack.tasks (INSTALLED_APPS), when the worker imports its modules


@signals.setup_logging.connect(weak=False)
def _suite_logging(**_: object) -> None:
    # Connected: Celery leaves logging to us, so this worker logs like the rest of the suite.
    configure_logging(extra_loggers=("celery", "celery.task"))
