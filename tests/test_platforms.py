"""Where forkpool has less to work with: no fork (Windows), no /proc (macOS), no PostgreSQL driver.

Each case runs in a subprocess that takes away what the platform lacks before
forkpool is imported: ``os.fork`` and ``os.register_at_fork`` (as on Windows,
where the standard library checks for them too), the socket tables doctor
reads, or the drivers (an import blocker, as if neither were installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("sqlalchemy", reason="the no-driver case protects a SQLite engine (sqlalchemy extra)")


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


NO_FORK = """
import importlib, json, os

del os.fork, os.register_at_fork  # what Windows lacks; the standard library checks for both
import forkpool

modules = ["forkpool.identity", "forkpool.redis", "forkpool.health", "forkpool.fork", "forkpool.gunicorn",
           "forkpool.rq", "forkpool.budget", "forkpool.stats"]
for name in modules:
    importlib.import_module(name)

@forkpool.per_process
def client():
    return object()

with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
    cur.execute("SELECT 41 + 1")
    answer = cur.fetchone()[0]
forkpool.close_all()
print(json.dumps({"same": client() is client(), "answer": answer, "names": len(forkpool.__all__)}))
"""


def test_import_and_pool_without_fork(database_url, suite_id):
    """No fork: no hooks to install; per_process is one instance per process and a pool works."""
    done = run(NO_FORK, DATABASE_URL=database_url, DB_POOL_SIZE="1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"same": True, "answer": 42, "names": 20}


def test_doctor_without_proc_says_so_and_exits_2():
    """Where the socket tables cannot be read, doctor reports nothing as clean: one line, exit 2."""
    done = run("""
        import sys
        from forkpool import _sockets, cli

        _sockets.readable = lambda: False  # as on macOS: no /proc to read sockets from
        sys.exit(cli.main(["doctor", "--pid", "1"]))
    """)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "/proc" in lines[0] and "nothing was checked" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_without_a_driver_a_pool_names_both_extras_and_other_pools_work(database_url, tmp_path):
    """No driver installed: forkpool imports, a pool says which extras bring one, a SQLite engine is protected."""
    done = run(
        """
        import json, os, sys

        class NoDriver:
            # As if neither psycopg2 nor psycopg were installed.
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("psycopg2", "psycopg"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoDriver())
        import importlib.util

        _find = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name in ("psycopg2", "psycopg") else _find(name, *a)

        import forkpool
        import sqlalchemy

        found = {}
        for label, action in (("get_pool", forkpool.get_pool), ("configure", lambda: forkpool.configure(max_size=2))):
            try:
                action()
            except forkpool.MissingExtra as exc:
                found[label] = str(exc)
        engine = forkpool.protect(sqlalchemy.create_engine(f"sqlite:///{sys.argv[1]}"))
        with engine.connect() as conn:
            found["sqlite"] = conn.exec_driver_sql("SELECT 42").scalar()
        pid = os.fork()
        if pid == 0:
            with engine.connect() as conn:
                os._exit(0 if conn.exec_driver_sql("SELECT 1").scalar() == 1 else 1)
        found["child"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        found["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg2", "psycopg"))
        print(json.dumps(found))
        """.replace("sys.argv[1]", repr(str(tmp_path / "lite.db"))),
        DATABASE_URL=database_url,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    for label in ("get_pool", "configure"):
        assert "forkpool[psycopg2]" in found[label] and "forkpool[psycopg]" in found[label], found
        assert "\n" not in found[label]
    assert found["sqlite"] == 42 and found["child"] == 0 and found["loaded"] == [], found
