"""An RQ job that uses forkpool's pool: run in a work-horse forked per job."""

import os

import forkpool


def backend() -> list[int]:
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return [os.getpid(), cur.fetchone()[0]]
