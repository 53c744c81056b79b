import os

from celery import shared_task
from django.db import connection


@shared_task
def backend():
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO probe_hit (worker, backend) SELECT %s, pg_backend_pid() FROM pg_sleep(0.01) "
                "RETURNING backend",
                [os.getpid()],
            )
            return [os.getpid(), cursor.fetchone()[0]]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__}"]


@shared_task
def identity():
    """The name this task's session carries: "<suite>:worker:<pid>" when forkpool named it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        return [os.getpid(), cursor.fetchone()[0]]


@shared_task
def every_alias():
    """The view's write on each alias, from a task: [pid, "<backend pid> <MariaDB connection id> <SQLite rows>"]."""
    from django.db import connections

    from probe.views import ALIAS_WRITES

    alias = "default"
    try:
        parts = []
        for alias, sql in ALIAS_WRITES:
            with connections[alias].cursor() as cursor:
                cursor.execute(sql[0], [os.getpid()])
                cursor.execute(sql[1])
                parts.append(str(cursor.fetchone()[0]))
        return [os.getpid(), " ".join(parts)]
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        return [os.getpid(), f"error {type(exc).__name__} on {alias}"]
