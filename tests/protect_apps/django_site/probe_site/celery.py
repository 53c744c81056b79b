"""The Celery app, configured from Django's settings: DJANGO_SETTINGS_MODULE is set, so Celery's Django fixup runs.

PROTECT=1 wires forkpool's Celery signals. The main process reads the
database in a worker_init receiver (after the fixup has closed its
connections there), as a project loading settings at worker start does: so it
holds a connection, or an open pool, when its children are forked.
"""

import os
import sys

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "probe_site.settings")

app = Celery("probe_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_process_init.connect
def what_the_fixup_will_find(**_):
    # Connected at import, so it runs before the fixup's own receiver (connected at
    # worker_init), after the at-fork hooks: it sees what the fixup is about to os.close.
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    inherited = [c.alias for c in connections.all(initialized_only=True) if c.connection is not None]
    print(
        f"fixup-will-find pid={os.getpid()} connections={inherited} pools={sorted(DatabaseWrapper._connection_pools)}",
        file=sys.stderr,
        flush=True,
    )


if os.environ.get("PROTECT") == "1":
    from forkpool.celery import wire_celery

    wire_celery(app)


@signals.worker_init.connect
def load_settings_from_the_database(**_):
    from django.db import connections

    for alias in connections:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM probe_hit")
