"""A Django project in one process for tests/test_failover.py: threads serve "requests" on persistent connections.

Each request is what Django's handler does around a view: ``request_started``, one
INSERT in autocommit, ``request_finished``. The database is a two-host DSN with
``target_session_attrs=read-write`` and ``CONN_MAX_AGE = None`` (a connection per
thread, kept). One line per attempt goes to OUT: ``ack WRITER N PORT MONOTONIC`` or
``fail MONOTONIC ERROR``; the program stops when STOP exists.

    python tests/django_failover_program.py HOSTS PORTS DBNAME OUT STOP THREADS
"""

from __future__ import annotations

import os
import sys
import threading
import time

import django
from django.conf import settings


def main() -> None:
    hosts, ports, dbname, out_path, stop_path, threads = sys.argv[1:7]
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": dbname,
                "USER": "postgres",
                "HOST": hosts,
                "PORT": ports,
                "CONN_MAX_AGE": None,
                "OPTIONS": {"target_session_attrs": "read-write"},
            }
        },
        INSTALLED_APPS=["forkpool.django"],
        USE_TZ=True,
    )
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connection

    with open(out_path, "a", buffering=1) as out:
        lock = threading.Lock()

        def record(line: str) -> None:
            with lock:
                out.write(line + "\n")

        def writer(w: int) -> None:
            n = 0
            while not os.path.exists(stop_path):
                n += 1
                request_started.send(sender=None)
                try:
                    with connection.cursor() as cur:
                        cur.execute("INSERT INTO writes (writer, n) VALUES (%s, %s)", (w, n))
                    port = int(connection.connection.info.port)
                except Exception as exc:  # noqa: BLE001 - every failed attempt is reported, whatever it raised
                    record(f"fail {time.monotonic()} {type(exc).__name__}")
                    time.sleep(0.005)  # a client's pause before it retries
                else:
                    record(f"ack {w} {n} {port} {time.monotonic()}")
                finally:
                    request_finished.send(sender=None)
            connection.close()

        workers = [threading.Thread(target=writer, args=(w,)) for w in range(int(threads))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()


if __name__ == "__main__":
    main()
