import os

from django.db import connection
from django.http import HttpResponse


def backend(request):
    """One write and one read on this process's connection: "<worker pid> <backend pid>"."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO probe_hit (worker, backend) SELECT %s, pg_backend_pid() FROM pg_sleep(0.005) "
                           "RETURNING backend", [os.getpid()])
            body, status = f"{os.getpid()} {cursor.fetchone()[0]}", 200
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        body, status = f"{os.getpid()} error {type(exc).__name__}", 500
    return HttpResponse(body, status=status, content_type="text/plain")
