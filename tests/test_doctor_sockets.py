"""`forkpool doctor` beyond TCP to PostgreSQL: Unix-socket sessions and Redis clients.

docs/doctor.md says Unix sockets are "seen and matched" (the client socket's
peer carries the server's path; a session is matched through the peer of the
backend's own socket) and that a Redis URL's ``CLIENT LIST`` is matched to
client processes, a shared Redis socket flagged like a database one. Each case
runs the real command against a real process tree (tests/doctor_apps/forker.py):
a parent that forks two children, either sharing a connection the parent opened
(inherited, never detached) or each with connections of its own.
"""

from __future__ import annotations

import uuid

import pytest

from tests.test_doctor import children_of, codes, counts, doctor, sessions_named, start_app, stop

CHILDREN = 2


def forked(kind: str, mode: str, url: str, count: int) -> tuple[object, str]:
    """The forker's tree (kind postgresql or redis, mode inherited or own) and its connections' name prefix."""
    name = f"fork-{uuid.uuid4().hex[:6]}"
    proc, _ = start_app("forker.py", [kind, mode, str(CHILDREN), str(count)], {"CONNECT_URL": url, "APP_NAME": name})
    return proc, name


def tree_of(proc) -> tuple[int, list[int]]:
    children = children_of(proc.pid)
    assert len(children) == CHILDREN, children
    return proc.pid, children


@pytest.fixture
def socket_url(pg_server) -> str:
    """The embedded server over its Unix socket (libpq's host= a directory)."""
    if pg_server is None:
        pytest.skip("needs the embedded server's Unix socket directory: DATABASE_URL names an external server")
    return pg_server.socket_url


@pytest.fixture
def socket_path(pg_server, socket_url) -> str:
    """The server's socket file, the path its accepted sockets carry (skipped with socket_url)."""
    return f"{pg_server.socket_dir}/.s.PGSQL.{pg_server.port}"


# -- PostgreSQL over a Unix socket -----------------------------------------------------------


def test_an_inherited_unix_socket_connection_is_a_shared_socket_and_its_session_is_matched(socket_url, socket_path):
    proc, name = forked("postgresql", "inherited", socket_url, 1)
    try:
        parent, children = tree_of(proc)
        code, report = doctor("--pid", str(parent), "--dsn", socket_url, "--pool-size", "1")
        assert code == 1 and codes(report) == {"shared-socket", "master-connection"}, report["findings"]
        [shared] = [f for f in report["findings"] if f["code"] == "shared-socket"]
        assert shared["pids"] == sorted([parent, *children]) and "postgresql" in shared["message"]
        [conn] = [c for c in report["connections"] if c["kind"] == "postgresql"]
        assert conn["transport"] == "unix" and conn["server"] == socket_path
        assert sorted(conn["pids"]) == sorted([parent, *children])
        assert counts(report) == {parent: 1, **dict.fromkeys(children, 1)}  # a shared socket counts in each holder
        [session] = sessions_named(report, f"{name}-{parent}")
        assert session["client"] == "unix" and session["where"] == "tree"
        assert session["client_pid"] in [parent, *children]
    finally:
        stop(proc)


@pytest.mark.parametrize("dsn", ["unix", "tcp"], ids=["dsn-unix", "dsn-tcp"])
def test_unix_socket_connections_of_their_own_are_clean_and_counted_per_process(
    dsn, socket_url, socket_path, database_url
):
    """Given the TCP DSN, the Unix socket is known from the local postgres's own listening socket."""
    proc, name = forked("postgresql", "own", socket_url, 2)
    try:
        parent, children = tree_of(proc)
        args = ("--pid", str(parent), "--dsn", socket_url if dsn == "unix" else database_url)
        code, report = doctor(*args, "--pool-size", "2")
        assert code == 0 and codes(report) == set(), report["findings"]
        assert counts(report) == {parent: 0, **dict.fromkeys(children, 2)}
        ours = [c for c in report["connections"] if c["kind"] == "postgresql"]
        assert len(ours) == 2 * CHILDREN
        assert all(c["transport"] == "unix" and c["server"] == socket_path and len(c["pids"]) == 1 for c in ours)
        for child in children:
            mine = sessions_named(report, f"{name}-{child}")
            assert len(mine) == 2, report["sessions"]
            assert all(s["client"] == "unix" and s["where"] == "tree" and s["client_pid"] == child for s in mine)
        # The counts are the ones the pool size is held to: one fewer allowed, both children are above it.
        code, small = doctor(*args, "--pool-size", "1")
        assert code == 1 and codes(small) == {"above-pool-size", "above-ceiling"}, small["findings"]
        assert sorted(f["pids"] for f in small["findings"] if f["code"] == "above-pool-size") == [
            [c] for c in sorted(children)
        ]
    finally:
        stop(proc)


# -- Redis ------------------------------------------------------------------------------------


def redis_counts(report: dict) -> dict[int, int]:
    return {p["pid"]: p["redis"] for p in report["processes"]}


def test_an_inherited_redis_connection_is_a_shared_socket_and_its_client_is_matched(redis_url, database_url):
    proc, name = forked("redis", "inherited", redis_url, 1)
    try:
        parent, children = tree_of(proc)
        code, report = doctor("--pid", str(parent), "--dsn", database_url, "--redis-url", redis_url)
        # Shared, but no master-connection: that finding is about database connections.
        assert code == 1 and codes(report) == {"shared-socket"}, report["findings"]
        [shared] = [f for f in report["findings"] if f["code"] == "shared-socket"]
        assert shared["pids"] == sorted([parent, *children]) and "redis" in shared["message"]
        assert redis_counts(report) == {parent: 1, **dict.fromkeys(children, 1)}
        assert counts(report) == {parent: 0, **dict.fromkeys(children, 0)}
        [client] = sessions_named(report, f"{name}-{parent}")
        assert client["kind"] == "redis" and client["where"] == "tree" and client["client_pid"] in [parent, *children]
    finally:
        stop(proc)


def test_redis_connections_of_their_own_are_clean_and_each_client_is_matched_to_its_process(redis_url, database_url):
    proc, name = forked("redis", "own", redis_url, 2)
    try:
        parent, children = tree_of(proc)
        code, report = doctor("--pid", str(parent), "--dsn", database_url, "--redis-url", redis_url)
        assert code == 0 and codes(report) == set(), report["findings"]
        assert redis_counts(report) == {parent: 0, **dict.fromkeys(children, 2)}
        for child in children:
            mine = sessions_named(report, f"{name}-{child}")
            assert len(mine) == 2, report["sessions"]
            assert all(s["kind"] == "redis" and s["where"] == "tree" and s["client_pid"] == child for s in mine)
    finally:
        stop(proc)
