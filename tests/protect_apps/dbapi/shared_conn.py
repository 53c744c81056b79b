"""A bare connection made at import time (VARIANT psycopg2 or psycopg), and each process's own one.

``conn``: made where the module is imported (the master, under preload_app);
PROTECT=1 hands it to forkpool.protect. ``own()``: this process's connection
(``forkpool.per_process``), the way to have one per worker.
"""

import os

import forkpool
import forkpool.identity
from forkpool._integrations.dbapi import drop_without_io

if os.environ.get("VARIANT") == "psycopg":
    import psycopg as driver
else:
    import psycopg2 as driver


def connect():
    conn = driver.connect(os.environ["DATABASE_URL"], application_name=forkpool.identity.application_name())
    conn.autocommit = True
    return conn


def backend(conn, sql="SELECT pg_backend_pid() FROM pg_sleep(0.005)"):
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchone()[0]
    finally:
        cur.close()


conn = connect()
if os.environ.get("PROTECT") == "1":
    forkpool.protect(conn)
backend(conn, "SELECT 1")  # work at import

own = forkpool.per_process(connect, detach=drop_without_io, close=lambda mine: mine.close(), key="app.own")
