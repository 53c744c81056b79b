import os

from django.db import connection
from django.http import HttpResponse


def backend(request):
    """One write and one read on this process's connection: "<worker pid> <backend pid>"."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO probe_hit (worker, backend) SELECT %s, pg_backend_pid() FROM pg_sleep(0.005) "
                "RETURNING backend",
                [os.getpid()],
            )
            body, status = f"{os.getpid()} {cursor.fetchone()[0]}", 200
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        body, status = f"{os.getpid()} error {type(exc).__name__}", 500
    return HttpResponse(body, status=status, content_type="text/plain")


def every_alias(request):
    """One write on each alias: "<worker pid> <backend pid> <MariaDB connection id> <SQLite rows>"."""
    from django.db import connections

    alias = "default"
    try:
        parts = []
        for alias, sql in ALIAS_WRITES:
            with connections[alias].cursor() as cursor:
                cursor.execute(sql[0], [os.getpid()])
                cursor.execute(sql[1])
                parts.append(str(cursor.fetchone()[0]))
        body, status = f"{os.getpid()} {' '.join(parts)}", 200
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        body, status = f"{os.getpid()} error {type(exc).__name__} on {alias}", 500
    return HttpResponse(body, status=status, content_type="text/plain")


# (alias, (a write, then a read of this session's id)): the server session each process talks to.
ALIAS_WRITES = [
    ("default", ("INSERT INTO probe_hit (worker, backend) SELECT %s, pg_backend_pid()", "SELECT pg_backend_pid()")),
    ("maria", ("INSERT INTO probe_hit (worker, backend) SELECT %s, CONNECTION_ID()", "SELECT CONNECTION_ID()")),
    ("lite", ("INSERT INTO probe_hit (worker, backend) VALUES (%s, 0)", "SELECT count(*) FROM probe_hit")),
]
