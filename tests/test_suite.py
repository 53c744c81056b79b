"""The suite as users run it: real Gunicorn, real Celery, real PostgreSQL and Redis.

Every process owns exactly one pool: the server sees web_workers x P web
sessions and concurrency x P worker sessions, none from either master.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from harness.processes import RunningSuite, SuitePlan, start_suite
from tests.conftest import wait_for
from tests.suite_helpers import http, pid_alive, sessions_by_role

POOL = 2


@pytest.fixture(scope="module")
def suite_database(pg_server, database_url) -> str:
    url = pg_server.create_database(f"suite_{uuid.uuid4().hex[:8]}") if pg_server else database_url
    result = subprocess.run(
        [sys.executable, "-m", "forkpool", "initdb"],
        env=_env(DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "schema ready" in result.stdout, result.stderr
    return url


def _env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


@pytest.fixture
def launch(suite_database, redis_url, tmp_path) -> Iterator[Callable[..., RunningSuite]]:
    started: list[RunningSuite] = []

    def launch_suite(**sizes) -> RunningSuite:
        plan = SuitePlan(
            database_url=suite_database,
            redis_url=redis_url,
            suite_id=f"s{uuid.uuid4().hex[:8]}",
            pool_size=POOL,
            **sizes,
        )
        suite = start_suite(plan, tmp_path / "logs")
        started.append(suite)
        return suite

    yield launch_suite
    for suite in started:
        suite.stop()


def settled(admin, suite: RunningSuite, timeout: float = 20.0) -> dict[str, dict[int, int]]:
    """Wait until the server shows exactly the plan's ceiling for this suite, then return it."""
    plan = suite.plan
    want = {"web": plan.web_workers * plan.pool_size, "worker": plan.worker_concurrency * plan.pool_size}

    def at_ceiling() -> bool:
        seen = sessions_by_role(admin, plan.suite_id)
        return {role: sum(pids.values()) for role, pids in seen.items()} == want

    wait_for(at_ceiling, timeout, 0.1)
    return sessions_by_role(admin, plan.suite_id)


def assert_exact_ceiling(admin, suite: RunningSuite) -> None:
    seen = settled(admin, suite)
    plan = suite.plan
    assert set(seen) == {"web", "worker"}, seen
    assert len(seen["web"]) == plan.web_workers and set(seen["web"].values()) == {plan.pool_size}
    assert len(seen["worker"]) == plan.worker_concurrency and set(seen["worker"].values()) == {plan.pool_size}
    every_pid = set(seen["web"]) | set(seen["worker"])
    assert suite.web.pid not in every_pid and suite.worker.pid not in every_pid  # masters hold none
    assert set(seen["web"]) == set(suite.web.children())
    assert set(seen["worker"]) == set(suite.worker.children())
    assert all(pid_alive(pid) for pid in every_pid)


def pool_pids(suite: RunningSuite, rounds: int = 40) -> dict[int, dict]:
    """GET /pool from 8 concurrent clients until every web worker has answered (bounded)."""
    from concurrent.futures import ThreadPoolExecutor

    found: dict[int, dict] = {}
    expected = set(suite.web.children())
    with ThreadPoolExecutor(8) as clients:
        for _ in range(rounds):
            for status, body, _ in clients.map(lambda _: http(suite.web.url, "GET", "/pool"), range(16)):
                assert status == 200
                found[body["pid"]] = body
            if set(found) >= expected:
                break
    return found


def run_job(suite: RunningSuite, kind: str, args: dict, timeout: float = 30.0) -> dict:
    status, body, _ = http(suite.web.url, "POST", "/jobs", {"kind": kind, "args": args})
    assert status == 202, body
    job_id = body["id"]
    final: dict = {}

    def finished() -> bool:
        nonlocal final
        _, final, _ = http(suite.web.url, "GET", f"/jobs/{job_id}")
        return final.get("state") in ("SUCCESS", "FAILURE")

    assert wait_for(finished, timeout, 0.1), final
    return final


def event_rows(admin_db, key: str) -> list[tuple]:
    return admin_db("SELECT key, written_by FROM events WHERE key = %s", key)


@pytest.fixture(scope="module")
def admin_db(suite_database):
    import psycopg2

    conn = psycopg2.connect(suite_database, application_name="pytest-admin")
    conn.autocommit = True

    def query(sql: str, *params) -> list[tuple]:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    yield query
    conn.close()


def test_each_process_owns_exactly_one_pool_and_masters_none(launch, admin, admin_db, redis_url):
    suite = launch(web_workers=3, worker_concurrency=2)
    assert_exact_ceiling(admin, suite)
    # Every web worker answers with its own pool of P, and only web workers answer.
    reports = pool_pids(suite)
    assert set(reports) == set(suite.web.children())
    for report in reports.values():
        assert report["role"] == "web" and report["pool"]["size"] == POOL and report["pool"]["pid"] == report["pid"]
    # One named Redis client per process that used Redis (/readyz pings it).
    for _ in range(30):
        assert http(suite.web.url, "GET", "/readyz")[0] == 200
    observer = redis.Redis.from_url(redis_url)
    names = [c["name"] for c in observer.client_list() if c.get("name", "").startswith(suite.plan.suite_id + ":")]
    observer.close()
    assert names and len(names) == len(set(names))
    assert {int(n.rsplit(":", 1)[1]) for n in names} <= set(suite.web.children())
    assert_exact_ceiling(admin, suite)  # serving changed nothing


def test_items_and_jobs_round_trip_and_write_once(launch, admin, admin_db):
    suite = launch(web_workers=3, worker_concurrency=2)
    status, item, headers = http(suite.web.url, "POST", "/items", {"name": "widget", "payload": {"n": 1}})
    assert status == 201 and headers["Location"] == f"/items/{item['id']}"
    assert http(suite.web.url, "GET", f"/items/{item['id']}")[1] == item
    listed = http(suite.web.url, "GET", f"/items?after={item['id'] - 1}&limit=1")[1]
    assert listed["items"] == [item] and listed["next_after"] == item["id"]

    key = f"evt-{uuid.uuid4().hex}"
    first = run_job(suite, "record_event", {"key": key, "data": {"a": 1}})
    again = run_job(suite, "record_event", {"key": key, "data": {"a": 2}})
    assert first["state"] == again["state"] == "SUCCESS"
    assert first["result"]["created"] is True and again["result"]["created"] is False
    rows = event_rows(admin_db, key)
    assert len(rows) == 1 and rows[0][1].startswith(f"{suite.plan.suite_id}:worker:")
    aggregate = run_job(suite, "aggregate", {})
    assert aggregate["result"]["items"] >= 1 and aggregate["result"]["events"] >= 1
    held = run_job(suite, "hold", {"seconds": 0.2})
    assert held["result"]["held_seconds"] == 0.2


def test_tasks_enqueued_directly_through_celery(launch, admin_db):
    suite = launch(web_workers=1, worker_concurrency=2)
    env = suite.plan.env(0)
    key = f"cli-{uuid.uuid4().hex}"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "workers.app",
            "call",
            "workers.record_event",
            "--kwargs",
            json.dumps({"key": key}),
            "--queue",
            env["CELERY_QUEUE"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    code = (
        "from suite.queue import get_celery\n"
        f"r = get_celery().send_task('workers.record_event', kwargs={{'key': {key + '-py'!r}}})\n"
        "print(r.get(timeout=30))\n"
    )
    direct = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert direct.returncode == 0, direct.stderr
    assert "'created': True" in direct.stdout
    assert wait_for(lambda: len(event_rows(admin_db, key)) == 1, 30)
    assert len(event_rows(admin_db, key + "-py")) == 1


def test_preload_app_keeps_one_pool_per_worker(launch, admin):
    suite = launch(web_workers=3, worker_concurrency=2, preload=True)
    assert_exact_ceiling(admin, suite)
    assert set(pool_pids(suite)) == set(suite.web.children())


def test_gthread_workers_share_their_process_pool(launch, admin):
    suite = launch(web_workers=3, web_threads=2, worker_concurrency=2)
    assert_exact_ceiling(admin, suite)
    reports = pool_pids(suite)
    assert all(r["pool"]["max_size"] == POOL for r in reports.values())


def test_recycled_workers_return_to_exactly_the_ceiling(launch, admin):
    suite = launch(web_workers=3, worker_concurrency=2, max_requests=15, max_tasks_per_child=3)
    first_web, first_workers = set(suite.web.children()), set(suite.worker.children())
    # All three workers may leave at once (15 requests each): a request then waits in the listen
    # backlog while their replacements import the app, seconds on a loaded machine.
    for _ in range(120):
        http(suite.web.url, "GET", "/pool", timeout=90)
    jobs = [
        http(
            suite.web.url,
            "POST",
            "/jobs",
            {"kind": "record_event", "args": {"key": f"recycle-{suite.plan.suite_id}-{i}"}},
        )[1]["id"]
        for i in range(20)
    ]
    assert wait_for(
        lambda: all(http(suite.web.url, "GET", f"/jobs/{j}")[1].get("state") == "SUCCESS" for j in jobs), 60, 0.2
    )
    # How requests and tasks spread over processes is the kernel's and Celery's business:
    # at least one process of each server must have been recycled and replaced.
    assert wait_for(lambda: first_web - set(suite.web.children()), 30)
    assert wait_for(lambda: first_workers - set(suite.worker.children()), 30)
    assert_exact_ceiling(admin, suite)  # includes: no session whose pid is gone


def test_bad_requests_get_json_errors_and_write_nothing(launch, admin_db):
    suite = launch(web_workers=1, worker_concurrency=1)
    before = admin_db("SELECT count(*) FROM items")[0][0]
    url = suite.web.url
    cases = [
        ("POST", "/items", {"name": ""}, 400),
        ("POST", "/items", {"name": "x" * 201}, 400),
        ("POST", "/items", {"name": 5}, 400),
        ("POST", "/items", {"name": "ok", "payload": [1, 2]}, 400),
        ("POST", "/items", {"name": "ok", "extra": 1}, 400),
        ("POST", "/items", ["name"], 400),
        ("POST", "/items", {"name": "nul\u0000byte"}, 400),
        ("POST", "/jobs", {"kind": "drop_tables", "args": {}}, 400),
        ("POST", "/jobs", {"kind": "hold", "args": {"seconds": "long"}}, 400),
        ("POST", "/jobs", {"kind": "hold", "args": {"seconds": 10_000}}, 400),
        ("GET", "/items/999999999", None, 404),
        ("GET", "/items/99999999999999999999999", None, 404),
        ("GET", "/items/abc", None, 404),
        ("GET", "/items?limit=0", None, 400),
        ("GET", "/items?limit=ten", None, 400),
        ("GET", f"/jobs/{uuid.uuid4()}", None, 404),
        ("GET", "/jobs/not-a-uuid", None, 404),
        ("DELETE", "/items", None, 405),
    ]
    for method, path, body, expected in cases:
        status, payload, _ = http(url, method, path, body)
        assert status == expected, (method, path, body, status, payload)
        assert isinstance(payload, dict) and payload.get("error"), payload
    assert http(url, "POST", "/items", raw=b"{not json")[0] == 400
    assert http(url, "POST", "/items", raw=b"\xff\xfe\x00")[0] == 400
    assert http(url, "POST", "/items", raw=b'{"name": "x"}', content_type="text/plain")[0] == 415
    status, payload, _ = http(url, "POST", "/items", {"name": "big", "payload": {"x": "y" * 100_000}})
    assert status == 413 and payload["error"]
    assert admin_db("SELECT count(*) FROM items")[0][0] == before


def test_threads_beyond_pool_size_refuse_to_start(suite_database, redis_url, tmp_path):
    from harness.processes import WebServer

    plan = SuitePlan(database_url=suite_database, redis_url=redis_url, suite_id="refuse", web_threads=4, pool_size=2)
    web = WebServer(plan, tmp_path).start()
    assert web.proc.wait(30) != 0
    log = web.log_text()
    assert "WEB_THREADS=4 needs a pool of at least 4" in log and "Traceback" not in log


def test_workers_start_while_the_database_is_down_and_tasks_retry_until_it_is_back(redis_url, tmp_path):
    from harness.services import EmbeddedPostgres

    with EmbeddedPostgres(max_connections=30) as db:
        url = db.create_database("down_db")
        init = subprocess.run(
            [sys.executable, "-m", "forkpool", "initdb"],
            env=_env(DATABASE_URL=url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stderr
        db.stop()
        plan = SuitePlan(
            database_url=url,
            redis_url=redis_url,
            suite_id=f"down{uuid.uuid4().hex[:6]}",
            web_workers=1,
            worker_concurrency=2,
            pool_size=1,
        )
        suite = start_suite(plan, tmp_path)
        try:
            children = set(suite.worker.children())
            status, job, _ = http(suite.web.url, "POST", "/jobs", {"kind": "record_event", "args": {"key": "k"}})
            assert status == 202
            assert http(suite.web.url, "GET", "/readyz")[0] == 503
            assert wait_for(lambda: "Retry in" in suite.worker.log_text(), 20), "the task did not retry"
            assert set(suite.worker.children()) == children  # no respawn storm
            db.start_server()
            assert wait_for(
                lambda: http(suite.web.url, "GET", f"/jobs/{job['id']}")[1].get("state") == "SUCCESS", 60, 0.2
            )
            assert wait_for(lambda: http(suite.web.url, "GET", "/readyz")[0] == 200, 20)
        finally:
            suite.stop()
