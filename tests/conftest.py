"""Fixtures: real PostgreSQL and Redis for the whole session, a clean `shared` per test.

Servers are embedded (started from pip-installed packages) unless DATABASE_URL
/ REDIS_URL name servers to use instead. Every test gets its own suite id, so it
counts only its own sessions in pg_stat_activity and CLIENT LIST.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from hypothesis import settings as hypothesis_settings

import forkpool
from forkpool import _registry as registry
from forkpool import identity
from harness.services import (
    EmbeddedMariaDB,
    EmbeddedPostgres,
    EmbeddedRedis,
    ReplicatedPostgres,
    ServiceError,
    external_database_url,
    external_redis_url,
)
from tests.server_support import Server

ADMIN_APP_NAME = "pytest-admin"

# In CI every property test sees the same examples, so a red run is always reproducible;
# locally they explore new ones each time.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server (None when DATABASE_URL names an external one)."""
    if external_database_url():
        yield None
        return
    server = EmbeddedPostgres(max_connections=300)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_pair() -> Iterator[ReplicatedPostgres]:
    """An embedded primary and its synchronous streaming standby, fresh for each test: a failover
    changes them for good. ``pg_pair.dsn()`` names both, primary first, ``target_session_attrs=read-write``."""
    pair = ReplicatedPostgres(max_connections=100)
    pair.start()
    try:
        yield pair
    finally:
        pair.cleanup()


@pytest.fixture(scope="session")
def database_url(pg_server: EmbeddedPostgres | None) -> str:
    return external_database_url() or pg_server.url  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = external_redis_url()
    if external:
        yield external
        return
    server = EmbeddedRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[EmbeddedMariaDB]:
    """A private MariaDB for the session (Debian's mariadb-server; skipped, with the install command, without it)."""
    try:
        server = EmbeddedMariaDB()
    except ServiceError as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def mariadb_url(mariadb: EmbeddedMariaDB) -> str:
    """``mysql://forkpool@127.0.0.1:PORT/test``: name the driver (``mysql+pymysql``) where SQLAlchemy wants one."""
    return mariadb.url


@pytest.fixture(scope="session")
def admin(database_url: str) -> Iterator[Callable[..., list[tuple]]]:
    """Run a query as an observer whose own session is never counted."""
    state: dict[str, psycopg2.extensions.connection] = {}

    def query(sql: str, *params: object) -> list[tuple]:
        conn = state.get("conn")
        if conn is None or conn.closed:
            conn = state["conn"] = psycopg2.connect(database_url, application_name=ADMIN_APP_NAME)
            conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg2.OperationalError:
            conn.close()  # the server restarted under us: reconnect once
            state.pop("conn")
            return query(sql, *params)

    yield query
    if "conn" in state:
        state["conn"].close()


@pytest.fixture
def suite_id(monkeypatch: pytest.MonkeyPatch) -> str:
    sid = f"t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("FORKPOOL_NAME", sid)
    return sid


@pytest.fixture
def sessions(admin: Callable[..., list[tuple]], suite_id: str) -> Callable[..., list[tuple[str, int]]]:
    """This test's server sessions as (application_name, backend pid)."""

    def list_sessions(role: str | None = None) -> list[tuple[str, int]]:
        pattern = f"{suite_id}:{role}:%" if role else f"{suite_id}:%"
        return [
            tuple(row)
            for row in admin(
                "SELECT application_name, pid FROM pg_stat_activity WHERE application_name LIKE %s ORDER BY pid",
                pattern,
            )
        ]

    return list_sessions


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll until `predicate()` holds; the server ends sessions asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def count_settles(sessions: Callable[..., list]) -> Callable[..., int]:
    """Wait for the session count to reach `expected`, then return the count seen."""

    def settle(expected: int, role: str | None = None, timeout: float = 10.0) -> int:
        wait_for(lambda: len(sessions(role)) == expected, timeout)
        return len(sessions(role))

    return settle


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per driver (modules opt in with `pytestmark = pytest.mark.usefixtures("driver")`)."""
    import importlib.util

    if importlib.util.find_spec(request.param) is None:
        pytest.skip(f"driver {request.param} is not installed")
    monkeypatch.setenv("DB_POOL_DRIVER", request.param)
    return request.param


def transaction_status(conn: object) -> str:
    """ "IDLE", "INTRANS", ... for a connection of either driver."""
    status = getattr(conn, "get_transaction_status", None)
    if status is not None:  # psycopg2
        import psycopg2.extensions as ext

        names = {
            ext.TRANSACTION_STATUS_IDLE: "IDLE",
            ext.TRANSACTION_STATUS_INTRANS: "INTRANS",
            ext.TRANSACTION_STATUS_INERROR: "INERROR",
            ext.TRANSACTION_STATUS_ACTIVE: "ACTIVE",
            ext.TRANSACTION_STATUS_UNKNOWN: "UNKNOWN",
        }
        return names[status()]
    return conn.info.transaction_status.name  # type: ignore[attr-defined]  # psycopg 3


@pytest.fixture(autouse=True)
def clean_shared(monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str) -> Iterator[None]:
    """Each test starts with no pools, no configured settings and the default identity."""
    for var in list(os.environ):
        if var.startswith("DB_POOL_") or var in ("PROCESS_ROLE", "HOST_LABEL"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    identity._name = identity._role = identity._host = None
    yield
    forkpool.close_all()
    registry.configured().clear()
    registry.size_sources().clear()
    registry._used().clear()  # which pools this process used: each test starts with none
    pools = registry.process_pools.peek()
    if pools is not None:
        pools.manager_counts = dict.fromkeys(pools.manager_counts, 0)
    identity._name = identity._role = identity._host = None


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pgbouncer_binary() -> str:
    """The `pgbouncer` binary, or the test is skipped, saying the one command that installs it."""
    from harness._procs import ServiceError
    from harness.pgbouncer import pgbouncer_binary as find

    try:
        return str(find())
    except ServiceError as exc:
        pytest.skip(str(exc))


# Under pytest-xdist (`bootstrap.py test` runs two workers), the modules that run whole deployments
# under load and time their recovery share one worker, one after another: two of them at once on a
# 2-core machine would measure each other. Everything else spreads over both workers.
SERIAL_MODULES = frozenset({"test_faults.py", "test_fleet_runs.py", "test_harness.py", "test_runner_loadtests.py"})


def pytest_configure(config: pytest.Config) -> None:
    # xdist registers its marker itself; without it (-p no:xdist, one process) the mark is inert.
    config.addinivalue_line("markers", "xdist_group(name): run on the same pytest-xdist worker as its group")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("deployments"))


def backend_pids(pool: forkpool.Pool, count: int, timeout: float = 10.0) -> list[int]:
    """Check out `count` connections of forkpool's pool at once and ask each its backend pid (a real round trip)."""
    conns = [pool.getconn(timeout=timeout) for _ in range(count)]
    try:
        pids = []
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.append(cur.fetchone()[0])
        return pids
    finally:
        for conn in conns:
            pool.putconn(conn)


def on_devnull(fd: int) -> bool:
    """Whether this process's descriptor `fd` is open on /dev/null (where a detached connection's socket is
    pointed); OSError (EBADF) when it is closed. fstat, not a /proc link: psutil lists only regular files."""
    return os.path.samestat(os.fstat(fd), os.stat(os.devnull))


def _utf8(text: str) -> str:
    """`text` with any lone surrogate escaped (\\udc80): what a report may carry to xdist's controller."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    # Reports cross to pytest-xdist's controller as UTF-8. The fuzz tests send lone surrogates on
    # purpose, and what the app logs or an assertion quotes may carry one: unescaped, the whole run
    # would end with an INTERNALERROR instead of the test's own result.
    report: pytest.TestReport = yield
    report.sections = [(title, _utf8(text)) for title, text in report.sections]
    if report.longrepr is not None and not isinstance(report.longrepr, tuple):
        text = str(report.longrepr)
        if _utf8(text) != text:
            report.longrepr = _utf8(text)
    return report
