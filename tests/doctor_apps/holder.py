"""Hold one PostgreSQL session and wait, in one of three ways (tests/test_doctor.py).

    python holder.py plain | idle-in-transaction | vanish

Prints "ready" once the session is established. ``vanish`` puts the socket in
TCP repair mode and exits: the kernel drops the socket without sending FIN or
RST, so the server keeps a session whose client process no longer exists (what
a client host's crash or a network partition leaves behind). Needs CAP_NET_ADMIN.
"""

import os
import socket
import sys
import time

import psycopg2

TCP_REPAIR = 19

mode = sys.argv[1]
conn = psycopg2.connect(os.environ["DATABASE_URL"], application_name=os.environ.get("APP_NAME", "holder"))
if mode == "idle-in-transaction":
    conn.cursor().execute("SELECT 1")  # psycopg2 opened a transaction: now idle in it
if mode == "vanish":
    # Let the kernel acknowledge everything the server sent (delayed ACKs wait up to
    # 200 ms): a retransmission reaching the vanished socket would be answered with a
    # reset, and the server would notice after all.
    conn.cursor().execute("SELECT 1")
    conn.rollback()
    time.sleep(0.5)
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    except PermissionError:
        print("no-permission", flush=True)
        sys.exit(3)
    print("ready", flush=True)
    os._exit(0)
print("ready", flush=True)
time.sleep(600)
