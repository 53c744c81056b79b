""" "forkpool.django" protects every alias whatever its backend: PostgreSQL, MariaDB (Django's MySQL backend,
mysqlclient) and SQLite in one project, under real Gunicorn (preload_app) and real Celery prefork.

The project is tests/protect_apps/django_site with MARIADB_URL and SQLITE_PATH
set: its aliases "default" (PostgreSQL, one persistent connection per thread),
"maria" and "lite" (each persistent too). The Gunicorn master (work at import)
and the Celery main process (a worker_init receiver) use all three before
forking. Each request or task writes on every alias and answers with the
PostgreSQL backend pid and the MariaDB connection id it used.

Unprotected: the master holds a MariaDB session for its life and its socket
is shared with every worker (two processes talking through one session: the
failure users report, "Lost connection", "Packets out of order", or answers
from one connection id in several workers). Protected: every request and task
succeeds; no socket shared; the master holds none; the server's sessions are
exactly one per worker on each server (MariaDB: by the ``_pid`` connection
attribute libmariadb sends; mysqlclient cannot send ``program_name``); none
left when the children exit.

A fork alone, with no use of the inherited connection, already ends a MariaDB
session another thread of the parent holds, at the child's next garbage
collection (mysqlclient's dealloc says goodbye: see
forkpool/django/databases.py): the last test shows it, and that
forkpool.django keeps it alive.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from forkpool._sockets import socket_inodes, tcp_table
from tests.conftest import wait_for
from tests.protect_support import (
    APPS,
    backends_by_worker,
    exact,
    failures,
    http_load,
    protected_run_ends_clean,
    recycled_http_load,
    shared_backends,
    start_celery_app,
    start_gunicorn_app,
    task_load,
)
from tests.server_support import by_process

pytest.importorskip("django", reason="forkpool.django needs Django (pip install 'forkpool[django]')")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is None,
    reason="Django's MySQL backend needs mysqlclient (MySQLdb): apt-get install libmariadb-dev pkg-config, "
    "then pip install mysqlclient==2.3.1",
)

SITE = APPS / "django_site"
SETTINGS = "probe_site.settings"
WORKERS, CONCURRENCY = 3, 2
REUSE_MAX = "100"  # CELERY_DB_REUSE_MAX: Celery's fixup keeps classic connections across tasks
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def site_databases(admin, mariadb, tmp_path) -> dict[str, str]:
    """The probe table on each server; the environment that adds the "maria" and "lite" aliases."""
    admin(
        "CREATE TABLE IF NOT EXISTS probe_hit (id bigserial PRIMARY KEY, worker int NOT NULL, "
        "backend int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
    )
    mariadb.execute_as_root(
        "CREATE TABLE IF NOT EXISTS test.probe_hit (id bigint AUTO_INCREMENT PRIMARY KEY, "
        "worker int NOT NULL, backend bigint NOT NULL)"
    )
    path = tmp_path / "lite.sqlite3"
    with sqlite3.connect(path) as lite:
        lite.execute("PRAGMA journal_mode=WAL")  # readers and one writer at once, across the workers
        lite.execute("CREATE TABLE probe_hit (id integer PRIMARY KEY, worker int NOT NULL, backend int NOT NULL)")
    return {"MARIADB_URL": mariadb.url, "SQLITE_PATH": str(path)}


def site_env(protected: bool, databases: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PROTECT": "1" if protected else "0",
        "DJANGO_DB": "classic",
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        **databases,
        **extra,
    }


def maria_sessions(mariadb) -> dict[int, list[int]]:
    """The forkpool user's MariaDB sessions as {client pid (the ``_pid`` connection attribute): [connection ids]}."""
    rows = mariadb.execute_as_root(
        "SELECT CAST(a.ATTR_VALUE AS UNSIGNED), p.ID FROM information_schema.processlist p "
        "JOIN performance_schema.session_connect_attrs a ON a.PROCESSLIST_ID = p.ID AND a.ATTR_NAME = '_pid' "
        "WHERE p.USER = 'forkpool' ORDER BY p.ID"
    )
    found: dict[int, list[int]] = {}
    for pid, connection_id in rows:
        found.setdefault(int(pid), []).append(int(connection_id))
    return found


def maria_exact(mariadb, family: set[int], live: list[int]) -> bool:
    """Of the processes in `family` (the server's, now and before), exactly one session for each of `live`."""
    held = {pid: ids for pid, ids in maria_sessions(mariadb).items() if pid in family}
    return held.keys() == set(live) and all(len(ids) == 1 for ids in held.values())


def maria_sockets(pid: int, port: int) -> set[int]:
    """Inodes of `pid`'s TCP sockets connected to the MariaDB port."""
    inodes = set(socket_inodes(pid))
    return {inode for inode, sock in tcp_table(pid, inodes).items() if sock.remote[1] == port}


def split(answers: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Answers "<backend pid> <connection id> <rows>" as PostgreSQL's and MariaDB's (worker pid, session) lists."""
    pg, maria = [], []
    for pid, rest in answers:
        if rest.startswith("error"):
            pg.append((pid, rest))
            maria.append((pid, rest))
        else:
            backend, connection_id, _ = rest.split()
            pg.append((pid, backend))
            maria.append((pid, connection_id))
    return pg, maria


def everything_shared(pids: list[int], port: int) -> dict[int, set[int]]:
    """MariaDB socket inodes held by more than one of `pids`."""
    holders: dict[int, set[int]] = {}
    for pid in pids:
        for inode in maria_sockets(pid, port):
            holders.setdefault(inode, set()).add(pid)
    return {inode: who for inode, who in holders.items() if len(who) > 1}


@pytest.mark.parametrize(
    "protected, transport",
    [(False, "tcp"), (True, "tcp"), (True, "unix")],
    ids=["unprotected", "protected", "protected-unix-socket"],
)
def test_every_backend_under_gunicorn_preload(
    protected, transport, site_databases, mariadb, servers, sessions, suite_id, database_url, tmp_path
):
    """MariaDB over TCP (HOST/PORT) or over its Unix socket (a HOST starting with "/")."""
    conf = "gunicorn_protected.conf.py" if protected else "gunicorn_unprotected.conf.py"
    unix = {"MARIADB_SOCKET": str(mariadb.socket_path)} if transport == "unix" else {}
    server, url = start_gunicorn_app(
        servers,
        SITE,
        conf,
        "probe_site.wsgi:application",
        site_env(protected, site_databases, **unix),
        tmp_path / "gunicorn.log",
        WORKERS,
    )
    family = {server.pid, *server.children()}
    if not protected:
        # The master keeps the session its import opened, and every worker holds the same socket.
        assert maria_sockets(server.pid, mariadb.port), maria_sessions(mariadb)
        assert everything_shared([server.pid, *server.children()], mariadb.port)
        _, maria = split(http_load(url + "all"))
        assert shared_backends(maria) or failures(maria), maria  # what users report
        server.stop(timeout=5)  # a worker may wait forever for an answer another process read: no graceful wait
        return
    # Each worker opened one session on each server at start; the master holds none.
    assert wait_for(lambda: exact(sessions, suite_id, "web", server.children(), 1), timeout=15), (
        server.children(),
        by_process(sessions, suite_id),
    )
    assert wait_for(lambda: maria_exact(mariadb, family | set(server.children()), server.children()), timeout=15), (
        server.children(),
        maria_sessions(mariadb),
    )
    answers = recycled_http_load(server, url + "all")
    pg, maria = split(answers)
    family |= {pid for pid, _ in answers} | set(server.children())
    assert failures(answers) == [], answers
    assert shared_backends(pg) == {} and shared_backends(maria) == {}, answers
    assert all(len(ids) == 1 for ids in backends_by_worker(maria).values()), backends_by_worker(maria)
    assert server.pid not in maria_sessions(mariadb) and maria_sockets(server.pid, mariadb.port) == set()
    assert everything_shared([server.pid, *server.children()], mariadb.port) == {}
    assert not open_files(server.pid, site_databases["SQLITE_PATH"])  # the master holds no SQLite handle either
    assert wait_for(lambda: maria_exact(mariadb, family | set(server.children()), server.children()), timeout=15), (
        server.children(),
        maria_sessions(mariadb),
    )
    family |= set(server.children())
    protected_run_ends_clean(server, "web", sessions, suite_id, database_url, 1)
    assert wait_for(lambda: not maria_sessions(mariadb).keys() & family, timeout=10), maria_sessions(mariadb)


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_every_backend_under_celery_prefork(
    protected, site_databases, mariadb, servers, sessions, suite_id, database_url, redis_url, tmp_path
):
    queue = f"{suite_id}.{uuid.uuid4().hex[:4]}"
    env = site_env(protected, site_databases, REDIS_URL=redis_url, CELERY_DB_REUSE_MAX=REUSE_MAX)
    worker = start_celery_app(servers, SITE, "probe_site", queue, env, tmp_path / "celery.log", CONCURRENCY)
    family = {worker.pid, *worker.children()}
    if not protected:
        # The main process holds what its worker_init receiver opened, for its whole life.
        assert worker.pid in maria_sessions(mariadb) and maria_sockets(worker.pid, mariadb.port), maria_sessions(
            mariadb
        )
        return
    assert wait_for(lambda: exact(sessions, suite_id, "worker", worker.children(), 1), timeout=15), (
        worker.children(),
        by_process(sessions, suite_id),
    )
    assert wait_for(lambda: maria_exact(mariadb, family | set(worker.children()), worker.children()), timeout=15), (
        worker.children(),
        maria_sessions(mariadb),
    )
    answers = task_load(redis_url, queue, "probe.tasks.every_alias")
    pg, maria = split(answers)
    family |= {pid for pid, _ in answers} | set(worker.children())
    assert failures(answers) == [], answers
    assert shared_backends(pg) == {} and shared_backends(maria) == {}, answers
    assert all(len(ids) == 1 for ids in backends_by_worker(maria).values()), backends_by_worker(maria)
    assert len(backends_by_worker(maria)) > CONCURRENCY  # max_tasks_per_child recycled some
    assert maria_sockets(worker.pid, mariadb.port) == set() and worker.pid not in maria_sessions(mariadb)
    assert everything_shared([worker.pid, *worker.children()], mariadb.port) == {}
    assert wait_for(lambda: maria_exact(mariadb, family | set(worker.children()), worker.children()), timeout=15), (
        worker.children(),
        maria_sessions(mariadb),
    )
    family |= set(worker.children())
    protected_run_ends_clean(worker, "worker", sessions, suite_id, database_url, 1)
    assert wait_for(lambda: not maria_sessions(mariadb).keys() & family, timeout=10), maria_sessions(mariadb)


def open_files(pid: int, path: str) -> list[str]:
    """`pid`'s descriptors open on `path` (or its -wal / -shm files)."""
    return [handle.path for handle in psutil.Process(pid).open_files() if handle.path.startswith(path)]


THREAD_PROGRAM = """
import gc, json, os, sys, threading

import django

django.setup()

from django.db import connections

import forkpool

ALIASES = {"default": "SELECT pg_backend_pid()", "maria": "SELECT CONNECTION_ID()", "lite": "SELECT 1"}
FORKS = int(sys.argv[1])
ready, go, done = threading.Event(), threading.Event(), threading.Event()
seen = {}


def ident(alias):
    with connections[alias].cursor() as cursor:
        cursor.execute(ALIASES[alias])
        return cursor.fetchone()[0]


def holder():
    # This thread's wrappers live only in its own storage: in a child, CPython clears it.
    seen["before"] = {alias: ident(alias) for alias in ALIASES}
    ready.set()
    go.wait(60)
    try:
        seen["after"] = {alias: ident(alias) for alias in ALIASES}
    except Exception as exc:
        seen["after"] = f"error {type(exc).__name__}: {exc}"
    done.set()


main_before = {alias: ident(alias) for alias in ALIASES}  # the forking thread's own, inherited too
threading.Thread(target=holder, daemon=True).start()
ready.wait(60)
statuses = []
for _ in range(FORKS):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # Django's wrappers sit in reference cycles: the other thread's go with the next collection,
            # whenever it comes in a real worker; here at once.
            gc.collect()
            mine = {alias: ident(alias) for alias in ALIASES}  # the child's own connections
            forkpool.close_all()
            theirs = {seen["before"]["maria"], main_before["maria"]}
            code = 0 if mine["maria"] not in theirs and mine["default"] != main_before["default"] else 2
        finally:
            os._exit(code)
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
go.set()
done.wait(60)
try:
    main_after = {alias: ident(alias) for alias in ALIASES}
except Exception as exc:
    main_after = f"error {type(exc).__name__}: {exc}"
print(json.dumps({"before": seen["before"], "after": seen["after"], "statuses": statuses,
                  "main_before": main_before, "main_after": main_after}), flush=True)
"""


@pytest.mark.parametrize("protected", [False, True], ids=["unprotected", "protected"])
def test_a_fork_leaves_another_threads_sessions_alone(protected, site_databases, suite_id):
    """Both threads hold a connection on each alias; the main thread forks, each child queries on each alias and
    exits. Unprotected, mysqlclient's dealloc in the child (CPython clears the other threads' states, the garbage
    collector frees their wrappers) ends the parent thread's MariaDB session; protected, it survives every fork, and so does its PostgreSQL session."""
    env = site_env(protected, site_databases, PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-c", THREAD_PROGRAM, "5"], cwd=SITE, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    if not protected:
        # A child queried on the forking thread's inherited sessions (exit status 2), and the other thread's
        # MariaDB session is gone: 2006 "Server has gone away" or 2013 "Lost connection to server during query".
        assert 2 in report["statuses"], report
        assert str(report["after"]).startswith("error OperationalError"), report
        return
    # Every child made its own sessions; both threads of the parent kept theirs.
    assert report["statuses"] == [0] * 5, (report, result.stderr[-2000:])
    assert report["after"] == report["before"] and report["main_after"] == report["main_before"], report


REPORT_PROGRAM = """
import json, os, threading

import django

django.setup()

from django.db import connections

from forkpool import _protect as protection
from forkpool.django.databases import mysql_endpoints
from forkpool._sockets import own_peer


def use(alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


for alias in connections:
    use(alias)
other = threading.Thread(target=lambda: use("maria"))  # a second thread: a second classic MariaDB connection
other.start()
other.join()
maria = connections["maria"]
endpoints = mysql_endpoints(maria.settings_dict)
peer = own_peer(maria.connection.fileno() if hasattr(maria.connection, "fileno") else maria.connection._sock.fileno())
with maria.cursor() as cursor:
    cursor.execute("SELECT ATTR_VALUE FROM performance_schema.session_connect_attrs "
                   "WHERE PROCESSLIST_ID = CONNECTION_ID() AND ATTR_NAME = 'program_name'")
    program_name = (cursor.fetchone() or [None])[0]
reports = {report.label: [report.backend, report.max_size, report.source, report.open]
           for _, report in protection.reports()}
print(json.dumps({"pid": os.getpid(), "reports": reports, "program_name": program_name,
                  "peer_found": (list(peer) in [list(e) for e in endpoints.tcp]) or peer in endpoints.unix}))
"""


@pytest.mark.parametrize("driver, transport", [("mysqlclient", "tcp"), ("mysqlclient", "unix"), ("pymysql", "tcp")])
def test_reports_endpoints_and_identity_of_every_alias(driver, transport, site_databases, mariadb, suite_id):
    """What forkpool.django reports of each alias, that the MariaDB socket is where the endpoints say (so an
    inherited one is found), and the name each driver can carry (mysqlclient: none; PyMySQL: program_name)."""
    if driver == "pymysql":
        pytest.importorskip("pymysql")
    extra = {"MARIADB_DRIVER": driver, "DJANGO_DB": "pool", "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)])}
    if transport == "unix":
        extra["MARIADB_SOCKET"] = str(mariadb.socket_path)
    if importlib.util.find_spec("psycopg_pool") is None:
        extra["DJANGO_DB"] = "classic"
    result = subprocess.run(
        [sys.executable, "-c", REPORT_PROGRAM],
        cwd=SITE,
        env={**site_env(True, site_databases), **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["peer_found"], report
    assert report["program_name"] == (f"{suite_id}:app:{report['pid']}" if driver == "pymysql" else None), report
    reports = report["reports"]
    if extra["DJANGO_DB"] == "pool":  # settings: min_size = max_size = 2, opened by the first query
        assert reports["django database 'default'"][:3] == ["postgresql", 2, "OPTIONS['pool'] max_size 2"], reports
    else:
        assert reports["django database 'default'"] == ["postgresql", None, "one connection per thread (no pool)", 1], (
            reports
        )
    # Classic aliases: one connection per thread that used it (the main thread's and the other's), no bound.
    assert reports["django database 'maria'"] == ["mysql", None, "one connection per thread (no pool)", 2], reports
    assert reports["django database 'lite'"] == ["sqlite", None, "one connection per thread (no pool)", 1], reports
