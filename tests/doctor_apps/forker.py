"""A parent and the children it forks, holding PostgreSQL or Redis connections (tests/test_doctor_sockets.py).

    python forker.py postgresql|redis inherited|own CHILDREN COUNT

CONNECT_URL is what to connect to: a libpq URL (``host=`` a directory: a Unix
socket) or a Redis URL. Each connection is named APP_NAME-<pid of the process
that opened it> (application_name, or CLIENT SETNAME). ``inherited``: the
parent opens COUNT connections, then forks children that keep them and never
detach (a module-level connection under a pre-forking server). ``own``: the
parent holds none and each child opens COUNT of its own. Prints "ready" once
every child holds its connections, then everyone sleeps.
"""

import os
import sys
import time
import traceback

kind, mode, children, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
url, name = os.environ["CONNECT_URL"], os.environ["APP_NAME"]


def connect() -> object:
    """One connection, established and named after this process."""
    label = f"{name}-{os.getpid()}"
    if kind == "postgresql":
        import psycopg2

        conn = psycopg2.connect(url, application_name=label)
        conn.autocommit = True
        conn.cursor().execute("SELECT 1")
        return conn
    import redis

    client = redis.Redis.from_url(url, client_name=label, single_connection_client=True)
    client.ping()
    return client


held = [connect() for _ in range(count)] if mode == "inherited" else []
read_fd, write_fd = os.pipe()
for _ in range(children):
    if os.fork() == 0:
        code = 0
        try:
            mine = [connect() for _ in range(count)] if mode == "own" else []
            os.write(write_fd, b".")
            os.close(write_fd)  # once every child has, or has died, the parent reads the end
            time.sleep(600)
        except BaseException:  # noqa: BLE001 - the child reports any failure and exits with 1
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)  # no atexit, no close: an inherited connection stays as it is
os.close(write_fd)
arrived = b""
while len(arrived) < children:
    chunk = os.read(read_fd, children)
    if not chunk:
        break  # a child failed: its traceback is on stderr
    arrived += chunk
print("ready" if len(arrived) == children else f"only {len(arrived)} of {children} children connected", flush=True)
time.sleep(600)
