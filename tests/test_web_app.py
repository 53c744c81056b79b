"""The Flask app in-process (Flask's test client, real pool, real PostgreSQL)."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

import forkpool
from suite.schema import init_schema
from web import create_app
from forkpool.flask import EXTENSION_KEY, ForkPool


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
