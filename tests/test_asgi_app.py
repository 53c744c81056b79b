"""The ASGI app: its endpoints in-process (Starlette's TestClient, real pool, PostgreSQL and Redis),
then for real under Gunicorn's uvicorn workers: exactly workers x pool sessions, role asgi, none in the
master, none left after SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from starlette.routing import Route
from starlette.testclient import TestClient

import forkpool
import suite.queue
import web.asgi_views
from harness._procs import free_port
from suite.schema import init_schema_at
from tests.conftest import wait_for
from tests.server_support import Server, by_process, get
from web import create_asgi_app

ROOT = Path(__file__).resolve().parents[1]
POOL = 2


@pytest.fixture
def database(pg_server, database_url, monkeypatch) -> str:
    url = pg_server.create_database(f"asgi_{uuid.uuid4().hex[:12]}") if pg_server else database_url
    init_schema_at(url)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.fixture
def queue(monkeypatch, suite_id) -> str:
    """A queue of this test's own; the process's Celery producer is made again to use it."""
    name = f"{suite_id}.tasks"
    monkeypatch.setenv("CELERY_QUEUE", name)
    monkeypatch.setattr(suite.queue, "_producer", None)
    return name


@pytest.fixture
def client(database, queue, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", str(POOL))
    with TestClient(create_asgi_app()) as test_client:  # runs the lifespan: pools open, then close
        yield test_client


def test_health_pool_and_readiness(client, sessions, suite_id):
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
    info = client.get("/pool").json()
    assert info["pid"] == os.getpid() and info["role"] == "asgi" and info["suite_id"] == suite_id
    assert info["pool"]["size"] == POOL and info["pool"]["max_size"] == POOL and info["pool"]["in_use"] == 0
    assert [p["name"] for p in info["pools"]] == ["default"]
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["pools"] == {"default": {"ok": True, "error": None}} and ready.json()["redis"]["ok"]
    # The lifespan opened the pool full, named asgi; nothing else of this process holds a session.
    assert sorted(name for name, _ in sessions()) == [f"{suite_id}:asgi:{os.getpid()}"] * POOL


def test_lifespan_shutdown_closes_the_pool_and_the_redis_client(
    database, queue, count_settles, suite_id, redis_url, monkeypatch
):
    monkeypatch.setenv("DB_POOL_SIZE", str(POOL))
    with TestClient(create_asgi_app()) as test_client:
        assert test_client.get("/readyz").status_code == 200
        assert count_settles(POOL, "asgi") == POOL
        assert _redis_names(redis_url, suite_id) == [f"{suite_id}:asgi:{os.getpid()}"]
    assert count_settles(0) == 0
    assert _redis_names(redis_url, suite_id) == []


def test_items_round_trip(client):
    created = client.post("/items", json={"name": "widget", "payload": {"n": 1, "tags": ["a"]}})
    assert created.status_code == 201
    item = created.json()
    assert created.headers["Location"] == f"/items/{item['id']}"
    assert item["name"] == "widget" and item["payload"] == {"n": 1, "tags": ["a"]} and "T" in item["created_at"]
    assert client.get(f"/items/{item['id']}").json() == item
    second = client.post("/items", json={"name": "gadget"}).json()
    assert second["payload"] is None
    page = client.get(f"/items?after={item['id'] - 1}&limit=1").json()
    assert page == {"items": [item], "next_after": item["id"]}
    last = client.get(f"/items?after={item['id']}&limit=5").json()
    assert last == {"items": [second], "next_after": None}
    assert client.get("/pool").json()["pool"]["in_use"] == 0  # every connection went back


def test_bad_requests_get_the_flask_apps_json_errors_and_write_nothing(client, database):
    cases = [
        ("POST", "/items", {"name": ""}, 400, "invalid_request"),
        ("POST", "/items", {"name": "x" * 201}, 400, "invalid_request"),
        ("POST", "/items", {"name": 5}, 400, "invalid_request"),
        ("POST", "/items", {"name": "ok", "payload": [1, 2]}, 400, "invalid_request"),
        ("POST", "/items", {"name": "ok", "extra": 1}, 400, "invalid_request"),
        ("POST", "/items", ["name"], 400, "invalid_request"),
        ("POST", "/items", {"name": "nul\u0000byte"}, 400, "invalid_request"),
        ("POST", "/jobs", {"kind": "drop_tables", "args": {}}, 400, "invalid_request"),
        ("POST", "/jobs", {"kind": "hold", "args": {"seconds": "long"}}, 400, "invalid_request"),
        ("POST", "/jobs", {"kind": "hold", "args": {"seconds": 10_000}}, 400, "invalid_request"),
        ("GET", "/items/999999999", None, 404, "not_found"),
        ("GET", "/items/99999999999999999999999", None, 404, "not_found"),
        ("GET", "/items/abc", None, 404, "not_found"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("GET", "/items?limit=0", None, 400, "invalid_request"),
        ("GET", "/items?limit=ten", None, 400, "invalid_request"),
        ("GET", f"/jobs/{uuid.uuid4()}", None, 404, "not_found"),
        ("GET", "/jobs/not-a-uuid", None, 404, "not_found"),
        ("DELETE", "/items", None, 405, "method_not_allowed"),
    ]
    for method, path, body, status, error in cases:
        response = client.request(method, path, json=body)
        assert (response.status_code, response.json()["error"]) == (status, error), (method, path, body)
        assert response.json()["message"]
    assert set(client.delete("/items").headers["Allow"].split(", ")) >= {"GET", "POST"}
    raw = [
        (b"{not json", "application/json", 400, "bad_request"),
        (b"\xff\xfe\x00", "application/json", 400, "bad_request"),
        (b"", "application/json", 400, "bad_request"),
        (b"[" * 100_00 + b"]" * 100_00, "application/json", 400, "invalid_request"),  # nested too deeply
        (b'{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
        (
            json.dumps({"name": "big", "payload": {"x": "y" * 100_000}}).encode(),
            "application/json",
            413,
            "request_entity_too_large",
        ),
    ]
    for content, content_type, status, error in raw:
        response = client.post("/items", content=content, headers={"Content-Type": content_type})
        assert (response.status_code, response.json()["error"]) == (status, error), content[:20]

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(100):
            yield b" " * 1000

    streamed = client.post("/items", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0


def test_jobs_are_published_off_the_event_loop_with_the_flask_apps_shapes(
    client, queue, redis_url, suite_id, monkeypatch
):
    threads: list[str] = []
    publish = web.asgi_views._publish

    def watched(*args):
        threads.append(threading.current_thread().name)
        publish(*args)

    monkeypatch.setattr(web.asgi_views, "_publish", watched)
    loop_thread = client.portal.call(lambda: threading.current_thread().name)
    key = f"{suite_id}:evt"
    response = client.post("/jobs", json={"kind": "record_event", "args": {"key": key, "data": {"a": 1}}})
    assert response.status_code == 202
    job = response.json()
    assert job["kind"] == "record_event" and response.headers["Location"] == f"/jobs/{job['id']}"
    assert threads and threads[0].startswith("forkpool-blocking") and threads[0] != loop_thread
    # On the queue the workers consume, under the task name the Flask app uses, with the job's id.
    observer = redis.Redis.from_url(redis_url)
    try:
        [message] = [json.loads(m) for m in observer.lrange(queue, 0, -1)]
        assert observer.get(f"{suite_id}:job:{job['id']}") == b"record_event"
    finally:
        observer.close()
    assert message["headers"]["task"] == "workers.record_event" and message["headers"]["id"] == job["id"]
    status = client.get(f"/jobs/{job['id']}").json()
    assert status == {"id": job["id"], "kind": "record_event", "state": "PENDING"}


def test_pool_timeout_is_a_503_with_retry_after(database, queue, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "0.2")
    with TestClient(create_asgi_app()) as client:
        pool = client.portal.call(forkpool.get_async_pool)
        held = client.portal.call(pool.getconn)
        try:
            response = client.get("/items")
        finally:
            client.portal.call(pool.putconn, held)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.json()["error"] == "pool_timeout" and "Traceback" not in response.text
        assert client.get("/items").status_code == 200


def test_unreachable_database_is_a_503_and_not_ready(pg_server, queue, monkeypatch):
    if pg_server is None:
        pytest.skip("needs the embedded server's port")
    monkeypatch.setenv("DATABASE_URL", pg_server.url.replace(f":{pg_server.port}/", ":1/"))
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    with TestClient(create_asgi_app()) as client:
        response = client.post("/items", json={"name": "x"})
        assert response.status_code == 503 and response.headers["Retry-After"] == "2"
        assert response.json()["error"] == "database_unavailable" and "127.0.0.1" not in response.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False


def test_unexpected_errors_are_json_500_without_details(database, queue):
    app = create_asgi_app()

    async def boom(request):
        raise psycopg.ProgrammingError("SELECT secret FROM internals")

    app.router.routes.append(Route("/boom", boom))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal server error"}


# -- for real: Gunicorn + UvicornWorker -----------------------------------------------------------------------


def test_gunicorn_uvicorn_workers_hold_exactly_workers_x_pool_and_nothing_after_sigterm(
    database, redis_url, suite_id, sessions, count_settles, servers, tmp_path
):
    workers, port = 2, free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "ASGI_", "PROMETHEUS_"))}
    # DB_POOL_SIZE says 3 for the rest of the suite; the async tier's own size wins in its processes.
    env.update(
        DB_POOL_SIZE="3",
        ASGI_POOL_SIZE=str(POOL),
        ASGI_CONCURRENCY=str(workers),
        ASGI_PORT=str(port),
        CELERY_QUEUE=f"{suite_id}.tasks",
        PYTHONUNBUFFERED="1",
    )
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(ROOT / "web" / "gunicorn_asgi.conf.py"),
        "--no-control-socket",
    ]
    server = Server(argv, ROOT, env, tmp_path / "asgi.log")
    servers.append(server)
    url = f"http://127.0.0.1:{port}"
    server.wait_until(lambda: len(server.children()) == workers and get(url + "/healthz")[0] == 200, "asgi ready")
    children = set(server.children())
    assert count_settles(workers * POOL) == workers * POOL  # every role: a master's session would count too
    held = by_process(sessions, suite_id)
    assert {key: len(backends) for key, backends in held.items()} == {("asgi", pid): POOL for pid in children}
    assert server.pid not in {pid for _, pid in held}
    from harness.suite_probe import web_pool_reports

    reports = web_pool_reports(url, children)
    assert set(reports) == children and all(r["size"] == POOL and r["max_size"] == POOL for r in reports.values())
    item = json.loads(_post(url + "/items", {"name": "real"}))
    assert json.loads(get(f"{url}/items/{item['id']}")[1]) == item
    assert wait_for(lambda: all(get(url + "/readyz")[0] == 200 for _ in range(8)), 10)
    names = _redis_names(redis_url, suite_id)
    assert names and {n.rsplit(":", 2)[1] for n in names} == {"asgi"}
    assert {int(n.rsplit(":", 1)[1]) for n in names} <= children and len(names) == len(set(names))
    assert count_settles(workers * POOL) == workers * POOL  # serving opened nothing more
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert count_settles(0) == 0  # lifespan shutdown closed every pool
    assert wait_for(lambda: not _redis_names(redis_url, suite_id), 10)
    log = server.log()
    assert "Application startup complete" in log and "Traceback" not in log


def _post(url: str, body: dict) -> bytes:
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def _redis_names(redis_url: str, suite_id: str) -> list[str]:
    observer = redis.Redis.from_url(redis_url)
    try:
        return sorted(c["name"] for c in observer.client_list() if c.get("name", "").startswith(f"{suite_id}:"))
    finally:
        observer.close()
