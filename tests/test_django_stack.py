"""The django stack (django_stack/): the Flask app's API from Django, and its Celery worker, as real processes.

Started as the harness starts them (``forkpool loadtest --stack django``):
Gunicorn with forkpool's hooks serving the Django project, and
``celery --app django_stack.celery worker`` with Celery's Django fixup on.
The harness's own run is in tests/test_harness.py; here, what its load does
not ask: every JSON error and status, the jobs' shapes, and the pool's size
against the server's count.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import wait_for
from tests.suite_helpers import http, sessions_by_role

pytest.importorskip("django", reason="the django stack needs Django")
pytest.importorskip("psycopg_pool", reason="Django's native pool needs psycopg_pool")

POOL = 2


@pytest.fixture(scope="module")
def stack(pg_server, database_url, redis_url, tmp_path_factory) -> Iterator[tuple[str, object, str]]:
    """One Gunicorn worker and one task process of the django stack, on a database of their own."""
    from harness.processes import SuitePlan, start_suite
    from suite.schema import init_schema_at

    suite_id = f"dj{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(suite_id) if pg_server else database_url
    init_schema_at(url)
    plan = SuitePlan(
        database_url=url,
        redis_url=redis_url,
        suite_id=suite_id,
        web_workers=1,
        worker_concurrency=1,
        pool_size=POOL,
        stack="django",
    )
    suite = start_suite(plan, tmp_path_factory.mktemp("django-stack"))
    try:
        yield suite_id, suite, url
    finally:
        suite.stop()


def test_errors_are_answered_as_the_flask_app_answers_them():
    """The choice of answer, without a configured Django: statuses, codes, Retry-After."""
    import redis
    from django.db import OperationalError
    from psycopg_pool import PoolTimeout

    from django_stack.errors import HttpError, answer_for
    from web.schemas import ValidationFailed

    busy = OperationalError("couldn't get a connection after 10.00 sec")
    busy.__cause__ = PoolTimeout("couldn't get a connection after 10.00 sec")  # as Django's wrapper raises it
    down = OperationalError("connection refused")
    cases = [
        (busy, 503, "pool_timeout", {"Retry-After": "1"}),
        (down, 503, "database_unavailable", {"Retry-After": "2"}),
        (redis.ConnectionError("refused"), 503, "queue_unavailable", {"Retry-After": "2"}),
        (ValidationFailed("the body does not fit", [{"loc": "name", "msg": "short"}]), 400, "invalid_request", {}),
        (HttpError(405, headers={"Allow": "GET"}), 405, "method_not_allowed", {"Allow": "GET"}),
    ]
    for exc, status, error, headers in cases:
        answer = answer_for(exc)
        assert answer is not None and (answer.status, answer.error, answer.headers) == (status, error, headers), exc
        assert "refused" not in answer.message and "10.00" not in answer.message  # nothing of the driver's text
    details = [{"loc": "a", "msg": "b"}]
    assert answer_for(ValidationFailed("x", details)).extra == {"details": details}
    assert answer_for(RuntimeError("SELECT secret")) is None  # unexpected: the middleware's 500, logged


def test_items_round_trip_and_the_pool_is_what_the_server_sees(stack, admin):
    suite_id, suite, _ = stack
    base = suite.web.url
    status, item, headers = http(base, "POST", "/items", {"name": "widget", "payload": {"n": 1, "tags": ["a"]}})
    assert status == 201 and headers["Location"] == f"/items/{item['id']}"
    assert item["name"] == "widget" and item["payload"] == {"n": 1, "tags": ["a"]} and "T" in item["created_at"]
    assert http(base, "GET", f"/items/{item['id']}")[1] == item
    second = http(base, "POST", "/items", {"name": "gadget"})[1]
    assert second["payload"] is None
    assert http(base, "GET", f"/items?after={item['id'] - 1}&limit=1")[1] == {"items": [item], "next_after": item["id"]}
    assert http(base, "GET", f"/items?after={item['id']}&limit=5")[1] == {"items": [second], "next_after": None}
    status, ready, _ = http(base, "GET", "/readyz")
    assert status == 200 and ready["ready"] is True and ready["pools"] == {"django": {"ok": True, "error": None}}
    status, pool, _ = http(base, "GET", "/pool")
    assert status == 200 and pool["role"] == "web" and pool["suite_id"] == suite_id
    assert pool["pool"]["name"] == "django:default" and pool["pool"]["in_use"] == 0  # every connection went back
    # Celery says "ready" once its consumer is; its task process may still be opening its pool.
    assert wait_for(lambda: set(sessions_by_role(admin, suite_id).get("worker", {}).values()) == {POOL}, 15)
    seen = sessions_by_role(admin, suite_id)
    assert seen["web"] == {pool["pid"]: POOL} == {pool["pid"]: pool["pool"]["size"]}, seen
    assert len(seen["worker"]) == 1 and len(seen) == 2, seen  # masters hold none


def test_bad_requests_get_the_flask_apps_json_errors_and_write_nothing(stack, admin):
    _suite_id, suite, _ = stack
    base = suite.web.url
    before = http(base, "GET", "/items?limit=100")[1]["items"]
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
        ("POST", "/pool", None, 405, "method_not_allowed"),
    ]
    for method, path, body, status, error in cases:
        got, answer, _ = http(base, method, path, body)
        assert (got, answer.get("error")) == (status, error), (method, path, body, answer)
        assert answer["message"]
    assert set(http(base, "DELETE", "/items")[2]["Allow"].split(", ")) >= {"GET", "POST"}
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
        got, answer, headers = http(base, "POST", "/items", raw=content, content_type=content_type)
        assert (got, answer.get("error")) == (status, error), content[:20]
        assert headers["Content-Type"] == "application/json"  # never Django's HTML pages
    assert http(base, "GET", "/items?limit=100")[1]["items"] == before


def test_jobs_run_once_on_the_task_processes_own_pool(stack, admin):
    """The Flask app's job shapes and task names; tasks on their process's pool, not a new one per task.

    Celery's Django fixup (on: DJANGO_SETTINGS_MODULE is set) would close the pool at
    every task; forkpool.django leaves it open: each hold task reports a backend of the
    sessions the process opened at start.
    """
    suite_id, suite, url = stack
    base = suite.web.url
    key = f"{suite_id}:evt"
    status, job, headers = http(base, "POST", "/jobs", {"kind": "record_event", "args": {"key": key, "data": {"a": 1}}})
    assert status == 202 and job["kind"] == "record_event" and headers["Location"] == f"/jobs/{job['id']}"
    assert wait_for(lambda: http(base, "GET", f"/jobs/{job['id']}")[1]["state"] == "SUCCESS", 30, 0.1)
    result = http(base, "GET", f"/jobs/{job['id']}")[1]["result"]
    assert result["key"] == key and result["created"] is True
    with psycopg2.connect(url) as conn, conn.cursor() as cur:  # the stack's own database
        cur.execute("SELECT written_by FROM events WHERE key = %s", (key,))
        [(written_by,)] = cur.fetchall()
    assert written_by == f"{suite_id}:worker:{result['pid']}"  # the task process's own named session
    holds = [http(base, "POST", "/jobs", {"kind": "hold", "args": {"seconds": 0.05}})[1]["id"] for _ in range(6)]
    assert wait_for(lambda: all(http(base, "GET", f"/jobs/{j}")[1]["state"] == "SUCCESS" for j in holds), 30, 0.1)
    backends = {http(base, "GET", f"/jobs/{j}")[1]["result"]["backend_pid"] for j in holds}
    opened = {
        pid
        for (pid,) in admin(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", f"{suite_id}:worker:{result['pid']}"
        )
    }
    assert len(opened) == POOL and backends <= opened, (backends, opened)


def test_the_stack_is_packaged_with_the_suite():
    """The root pyproject's find include lists it, and the harness finds its server files without importing it."""
    from harness.processes import DJANGO_PACKAGE, package_dir

    root = Path(__file__).resolve().parents[1]
    assert f'"{DJANGO_PACKAGE}*"' in (root / "pyproject.toml").read_text()
    assert (package_dir(DJANGO_PACKAGE) / "gunicorn.conf.py").is_file()
