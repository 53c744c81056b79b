"""A master holding the descriptor of a connection the server closed, then a fork (tests/test_doctor.py).

    python dead_master.py close-wait|reset

Opens a session and prints its backend pid; after a line on stdin (the test has
terminated that backend meanwhile) it forks a child that sleeps and prints
"ready": a master whose pool still holds an idle connection that is gone.
``close-wait``: untouched, the socket waits in CLOSE_WAIT. ``reset``: a byte is
written to it first, as a pool's next use would; the server's kernel answers
with a reset, and the socket leaves every kernel table while its descriptor
stays open.
"""

import os
import socket
import sys
import time

import psycopg2

mode = sys.argv[1]
conn = psycopg2.connect(os.environ["DATABASE_URL"], application_name=os.environ.get("APP_NAME", "dead-master"))
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("SELECT pg_backend_pid()")
    print(cur.fetchone()[0], flush=True)
sys.stdin.readline()
if mode == "reset":
    # A duplicate of the descriptor: libpq's own is left open, as a pool's idle connection's is.
    raw = socket.socket(fileno=os.dup(conn.fileno()))
    raw.send(b"\0")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the reset arrived: the socket reports it as an error
        if raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or not raw.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK):
            break
        time.sleep(0.01)
    raw.detach()
if os.fork() == 0:
    time.sleep(600)
    os._exit(0)
print("ready", flush=True)
time.sleep(600)
