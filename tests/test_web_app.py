"""The Flask app in-process (Flask's test client, real pool, real PostgreSQL)."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

import forkpool
import forkpool.identity
from forkpool.flask import EXTENSION_KEY, ForkPool
from suite.schema import init_schema
from web import create_app


@pytest.fixture
def client(pg_server, database_url, monkeypatch):
    if pg_server is not None:
        monkeypatch.setenv("DATABASE_URL", pg_server.create_database(f"web_{uuid.uuid4().hex[:12]}"))
    init_schema()
    app = create_app({"TESTING": True})
    return app.test_client()


def test_extension_is_registered_the_flask_way():
    app = create_app()
    ext = app.extensions[EXTENSION_KEY]
    assert isinstance(ext, ForkPool) and ext.pool is forkpool.get_pool()


def test_request_connection_is_returned_and_uncommitted_work_rolled_back(client):
    pool = forkpool.get_pool()
    assert client.post("/items", json={"name": "kept"}).status_code == 201
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["checkouts"] >= 1
    with client.application.app_context():
        conn = client.application.extensions[EXTENSION_KEY].connection()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items (name) VALUES ('never committed')")
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM items WHERE name = 'never committed'")
        assert cur.fetchone()[0] == 0
    assert pool.stats()["in_use"] == 0


def test_pool_timeout_is_a_503_with_retry_after(client, monkeypatch):
    forkpool.close_all()
    forkpool.configure(min_size=1, max_size=1, timeout=0.2)
    held = forkpool.get_pool().getconn()
    try:
        response = client.get("/items")
    finally:
        forkpool.get_pool().putconn(held)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"] == "pool_timeout"
    assert "Traceback" not in response.get_data(as_text=True)


def test_unreachable_database_is_a_503_not_a_500(client, monkeypatch, pg_server):
    if pg_server is None:
        pytest.skip("needs the embedded server's port")
    forkpool.close_all()
    monkeypatch.setenv("DATABASE_URL", pg_server.url.replace(f":{pg_server.port}/", ":1/"))
    response = client.post("/items", json={"name": "x"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    body = response.get_data(as_text=True)
    assert response.get_json()["error"] == "database_unavailable"
    assert "Traceback" not in body and "127.0.0.1" not in body
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False


def test_unexpected_errors_are_json_500_without_details(client):
    app = client.application

    @app.get("/boom")
    def boom():
        raise psycopg2.ProgrammingError("SELECT secret FROM internals")

    response = client.get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal_error", "message": "internal server error"}


def test_publish_retry_on_a_silent_broker_stays_within_the_web_redis_bound():
    """kombu's publish waits its socket timeout, then connects max_retries + 1 times (sleeping the
    policy's intervals between): that worst case must fit the bound the redis-blackhole scenario checks."""
    from forkpool.redis import CONNECT_TIMEOUT, SOCKET_TIMEOUT
    from harness.net_scenarios import REDIS_BOUND_S
    from web.api import PUBLISH_RETRY

    retries = PUBLISH_RETRY["max_retries"]
    sleeps = [
        min(PUBLISH_RETRY["interval_start"] + i * PUBLISH_RETRY["interval_step"], PUBLISH_RETRY["interval_max"])
        for i in range(retries)
    ]
    worst = SOCKET_TIMEOUT + (retries + 1) * CONNECT_TIMEOUT + sum(sleeps)
    assert worst <= REDIS_BOUND_S, (worst, REDIS_BOUND_S)


def test_a_failed_publish_is_a_503_and_makes_no_second_redis_call(client, monkeypatch, redis_url):
    """The job's key is written, the publish fails (the broker refuses): 503, and the key is left to
    expire rather than deleted, so a failing Redis is never asked twice within one request."""
    import redis as redis_py

    import suite.queue

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(suite.queue, "_producer", None)
    r = redis_py.Redis.from_url(redis_url)
    before = set(r.scan_iter(f"{forkpool.identity.name()}:job:*"))
    commands: list[str] = []
    original = redis_py.Redis.execute_command

    def counting(self, *args, **options):  # type: ignore[no-untyped-def]
        if self.connection_pool.connection_kwargs.get("port") != 1:  # kombu's own clients of the broker aside
            commands.append(str(args[0]).upper())
        return original(self, *args, **options)

    monkeypatch.setattr(redis_py.Redis, "execute_command", counting)
    response = client.post("/jobs", json={"kind": "record_event", "args": {"key": "k1"}})
    monkeypatch.setattr(redis_py.Redis, "execute_command", original)
    assert response.status_code == 503 and response.get_json()["error"] == "queue_unavailable"
    assert commands == ["SET"], commands
    left = set(r.scan_iter(f"{forkpool.identity.name()}:job:*")) - before
    assert len(left) == 1 and 0 < r.ttl(next(iter(left))) <= 24 * 3600
    monkeypatch.setattr(suite.queue, "_producer", None)


def test_a_write_refused_by_a_server_turned_read_only_is_a_503_on_every_stack():
    """SQLSTATE 25006 (a failover under the write): nothing written, the pool dropped the connection, a retry
    reaches the new primary: a 503, whether psycopg2 raises it or SQLAlchemy wraps it (flask-sqlalchemy)."""
    import psycopg2.errors
    import sqlalchemy.exc
    from flask import Flask

    from web.errors import register_error_handlers

    app = Flask(__name__)
    register_error_handlers(app)
    refused = psycopg2.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")

    @app.route("/driver")
    def driver():
        raise refused

    @app.route("/wrapped")
    def wrapped():
        raise sqlalchemy.exc.InternalError("INSERT ...", {}, refused)

    @app.route("/other")
    def other():
        raise sqlalchemy.exc.InternalError("INSERT ...", {}, psycopg2.errors.InternalError_("not a failover"))

    client = app.test_client()
    for path in ("/driver", "/wrapped"):
        response = client.get(path)
        assert response.status_code == 503 and response.json["error"] == "database_unavailable", path
        assert response.headers["Retry-After"]
    assert client.get("/other").status_code == 500  # only 25006 is a failover
