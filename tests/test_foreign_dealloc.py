"""A connection dropped in a forked child, with no /dev/null step, leaves the parent's session alone.

The pool's fork detach (_base.drop_without_io) points the descriptor at
/dev/null first, so it does not depend on this; these tests check the drivers'
own guard, which the detach also relies on (it never closes, it drops):

- psycopg2 >= 2.8: ``connection_dealloc`` calls ``conn_close`` only when
  ``self->procpid == getpid()`` (``CONN_CHECK_PID``, connection_type.c, psycopg2#829).
- psycopg 3 (3.3.9 here): ``Connection.__del__`` (``_connection_base.py``) never
  closes, it only warns; the libpq handle's finaliser calls ``finish()`` (PQfinish)
  only when ``getpid()`` equals the pid saved at creation: ``PGconn.__del__``
  comparing ``_procpid`` in ``psycopg/pq/pq_ctypes.py`` (the "python"
  implementation), ``PGconn.__dealloc__`` in ``psycopg_c/pq/pgconn.pyx`` (the
  "binary" one the suite runs by default). Both are run below.

A real program, not the pytest process, so the child ends as programs do: a normal
interpreter exit. The child checks that the object really was freed, so the
guard was reached; a child that calls ``close()`` instead is the control: its
Terminate ends the parent's session, which shows the check can fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

PROGRAM = r"""
import gc, json, os, sys, weakref

driver, dsn, action = sys.argv[1:4]
db = __import__(driver)
conn = db.connect(dsn, application_name="foreign-dealloc")
conn.autocommit = True


def backend(c):
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid()")
    return cur.fetchone()[0]


before = backend(conn)
impl = getattr(getattr(db, "pq", None), "__impl__", "c")
child = os.fork()
if child == 0:
    # psycopg 3's guard is on the libpq handle: watch that, else the connection itself.
    gone = weakref.ref(getattr(conn, "pgconn", conn))
    if action == "close":
        conn.close()
    del conn
    gc.collect()
    sys.exit(0 if gone() is None else 3)  # a normal exit; 3: the object outlived the del
status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
try:
    after, error = backend(conn), None
except db.Error as exc:
    after, error = None, f"{type(exc).__name__}: {str(exc).strip()}"
print(json.dumps({"before": before, "after": after, "error": error, "child": status, "impl": impl}))
"""

CASES = [("psycopg2", ""), ("psycopg", "binary"), ("psycopg", "python")]


def run_program(database_url: str, driver: str, impl: str, action: str) -> dict:
    if importlib.util.find_spec(driver) is None:
        pytest.skip(f"driver {driver} is not installed")
    env = dict(os.environ)
    if impl:
        env["PSYCOPG_IMPL"] = impl  # psycopg 3 refuses to import if the implementation asked for is missing
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, driver, database_url, action],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and impl == "python" and "libpq" in result.stderr:
        pytest.skip("psycopg's python implementation needs a system libpq (libpq5), not installed here")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if impl:
        assert report["impl"] == impl  # the implementation under test is the one that ran
    return report


@pytest.mark.parametrize(("driver", "impl"), CASES, ids=["psycopg2", "psycopg-binary", "psycopg-python"])
def test_a_child_that_drops_an_inherited_connection_leaves_the_parents_session(database_url, driver, impl):
    report = run_program(database_url, driver, impl, "drop")
    assert report["child"] == 0, "the child's del + gc.collect() did not free the connection"
    assert report["error"] is None and report["after"] == report["before"]


@pytest.mark.parametrize(("driver", "impl"), CASES, ids=["psycopg2", "psycopg-binary", "psycopg-python"])
def test_control_a_child_that_closes_it_ends_the_parents_session(database_url, driver, impl):
    report = run_program(database_url, driver, impl, "close")
    assert report["child"] == 0
    assert report["after"] is None and report["error"], report
