"""No password from any DSN appears anywhere the suite writes.

A separate embedded PostgreSQL whose role `forkpool` must authenticate with a
distinctive random password; the suite is run with that DSN, for real, and
every output is scanned for the password (raw, URL-encoded, and its random core,
so a half-masked copy is caught too): the harness's stdout/stderr, its JSON and
text reports, every log (Gunicorn, Celery, Locust), the live HTTP endpoints,
error bodies, `forkpool stats` / `budget` / `initdb` output, the error paths of
an unreachable database and of a wrong password, and the connection identities
the servers see (pg_stat_activity, Redis CLIENT LIST, process command lines).

Debug mode and the in-process 500 body are covered by
tests/test_web_app.py::test_unexpected_errors_are_json_500_without_details;
here the 500 goes through the real Gunicorn server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg2
import pytest
import redis

from harness.processes import RunningSuite, SuitePlan, start_suite
from harness.services import EmbeddedPostgres
from tests.conftest import wait_for
from tests.suite_helpers import http

CORE = uuid.uuid4().hex
# Characters a URL must encode, so the encoded and the decoded forms differ.
SECRET = f"pw-{CORE}/s+cr@t"
WRONG_CORE = uuid.uuid4().hex
WRONG = f"wrong-{WRONG_CORE}/x+y@z"
# Settings a caller's environment could use to supply a password behind our back.
_NOT_INHERITED = (
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "DATABASE_URL",
    "REDIS_URL",
    "FORKPOOL_NAME",
    "SUITE_ID",
    "PROCESS_ROLE",
)


def needles(*passwords: str) -> list[str]:
    """Every form of each password worth looking for: raw, URL-encoded (both ways), random core."""
    found: list[str] = []
    for password in passwords:
        core = password.split("-", 1)[1].split("/", 1)[0]
        found += [password, quote(password, safe=""), quote(password), core]
    return list(dict.fromkeys(found))


ALL_NEEDLES = needles(SECRET, WRONG)


def leaks(data: str | bytes, forms: list[str] = ALL_NEEDLES) -> list[str]:
    """The password forms present in `data` (case-insensitive: hex may be upper-cased)."""
    blob = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    blob = blob.lower()
    return [form for form in forms if form.lower() in blob]


def assert_clean(where: str, data: str | bytes, forms: list[str] = ALL_NEEDLES) -> None:
    found = leaks(data, forms)
    if found:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        lines = [line for line in text.splitlines() if leaks(line, forms)]
        pytest.fail(f"password leaked in {where}: {found}; lines: {lines[:5]}")


def scan_tree(root: Path) -> list[Path]:
    """Assert no file under `root` holds a password; the files scanned."""
    scanned = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        assert_clean(str(path), path.read_bytes())
        scanned.append(path)
    return scanned


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED and not k.startswith("DB_POOL_")}
    env["PGPASSFILE"] = os.devnull
    env.update(extra)
    return env


def harness(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forkpool", *args], env=clean_env(**env), capture_output=True, text=True, timeout=timeout
    )


def harness_all(*calls: tuple[tuple[str, ...], dict[str, str]]) -> list[subprocess.CompletedProcess]:
    """Several `forkpool` commands side by side (each is mostly interpreter start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as runner:
        return list(runner.map(lambda call: harness(*call[0], **call[1]), calls))


def scan_redis(redis_url: str, limit: int = 50_000) -> int:
    """Assert no key or value in Redis (job keys, queued and unacked task messages, results)
    holds a password; the number of keys scanned."""
    client = redis.Redis.from_url(redis_url)
    scanned = 0
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = [k + b"=" + v for k, v in client.hgetall(key).items()]
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = client.zrange(key, 0, -1)
            else:
                values = []
            assert_clean(f"redis key {key!r}", b"\n".join([key, *values]))
            scanned += 1
            if scanned >= limit:
                break
    finally:
        client.close()
    return scanned


def assert_run_clean(what: str, result: subprocess.CompletedProcess, forms: list[str] = ALL_NEEDLES) -> None:
    assert_clean(f"{what} stdout", result.stdout, forms)
    assert_clean(f"{what} stderr", result.stderr, forms)


# the suite's `forkpool: ...`, the `forkpool` command's `forkpool NAME: ...` (every command, the suite's too)
ERROR_LINE = re.compile(r"forkpool( [a-z][a-z0-9_-]*)?: ")


def assert_one_line_error(what: str, result: subprocess.CompletedProcess, forms: list[str] = ALL_NEEDLES) -> str:
    """Exactly one error line on stderr, no traceback, none of the password `forms` anywhere."""
    assert result.returncode != 0, (what, result.stdout)
    assert "Traceback" not in result.stderr + result.stdout, (what, result.stderr)
    assert_run_clean(what, result, forms)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1 and lines == errors, (what, result.stderr)
    return errors[0]


@dataclass
class SecureDatabase:
    server: EmbeddedPostgres
    dsn: str  # the forkpool role, with SECRET
    dbname: str

    def dsn_with(self, password: str | None, port: int | None = None) -> str:
        url = self.server.url_for(self.dbname, user="forkpool", password=password)
        return url.replace(f":{self.server.port}/", f":{port}/") if port else url

    def admin(self, query: str, *params: object) -> list[tuple]:
        conn = psycopg2.connect(self.server.url_for(self.dbname), application_name="pytest-admin")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


@pytest.fixture(scope="module")
def secure_db() -> Iterator[SecureDatabase]:
    server = EmbeddedPostgres(max_connections=60, password=SECRET)
    server.start()
    try:
        name = f"secure_{uuid.uuid4().hex[:8]}"
        server.create_database(name, owner="forkpool")
        db = SecureDatabase(server, server.url_for(name, user="forkpool", password=SECRET), name)
        assert quote(SECRET, safe="") in db.dsn and SECRET not in db.dsn  # the URL carries the encoded form
        init = harness("initdb", DATABASE_URL=db.dsn)
        assert init.returncode == 0 and "schema ready" in init.stdout, init.stderr
        assert_run_clean("initdb", init)
        yield db
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def live_suite(secure_db: SecureDatabase, redis_url: str, tmp_path_factory) -> Iterator[RunningSuite]:
    logs = tmp_path_factory.mktemp("secure-suite")
    plan = SuitePlan(
        database_url=secure_db.dsn,
        redis_url=redis_url,
        suite_id=f"sec{uuid.uuid4().hex[:8]}",
        web_workers=2,
        worker_concurrency=1,
        pool_size=2,
    )
    suite = start_suite(plan, logs)
    try:
        yield suite
    finally:
        suite.stop()


def test_the_password_is_required(secure_db: SecureDatabase, monkeypatch):
    """Otherwise nothing below proves anything: the password must matter."""
    for var in _NOT_INHERITED:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    for dsn in (secure_db.dsn_with(None), secure_db.dsn_with(WRONG)):
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(dsn, connect_timeout=5).close()
        message = str(refused.value)
        assert "no password supplied" in message or "password authentication failed" in message, message
    conn = psycopg2.connect(secure_db.dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == "forkpool"
    finally:
        conn.close()


def test_a_real_loadtest_writes_no_password_anywhere(secure_db: SecureDatabase, redis_url: str, tmp_path):
    json_path, report_dir = tmp_path / "run.json", tmp_path / "report"
    result = harness(
        "loadtest",
        "--duration",
        "5",
        "--users",
        "4",
        "--kill-workers",
        "1",
        "--json",
        str(json_path),
        "--report",
        str(report_dir),
        timeout=180,
        DATABASE_URL=secure_db.dsn,
        REDIS_URL=redis_url,
    )
    assert_run_clean("loadtest", result)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # It ran on our server (external DATABASE_URL: no embedded PostgreSQL of its own).
    assert f"forkpool:***@127.0.0.1:{secure_db.server.port}" in result.stdout
    assert_clean(str(json_path), json_path.read_bytes())
    scanned = {p.relative_to(report_dir).as_posix() for p in scan_tree(report_dir)}
    assert {"report.json", "report.txt", "connections.png"} <= scanned, scanned
    assert any(re.fullmatch(r"logs/web-\d+\.log", p) for p in scanned), scanned
    assert any(re.fullmatch(r"logs/worker-run\w+\.log", p) for p in scanned), scanned
    assert any(p.startswith("logs/locust/") and p.endswith(".log") for p in scanned), scanned
    assert any(p.startswith("logs/locust/") and p.endswith(".json") for p in scanned), scanned


def test_live_endpoints_and_cli_output_hold_no_password(live_suite: RunningSuite, secure_db: SecureDatabase):
    url = live_suite.web.url
    for _ in range(6):  # /pool answers from whichever worker: ask a few times
        status, body, _ = http(url, "GET", "/pool")
        assert status == 200 and body["pool"]["size"] == 2
        assert_clean("GET /pool", repr(body))
    status, body, _ = http(url, "GET", "/readyz")
    assert status == 200 and body["ready"] is True, body
    assert_clean("GET /readyz", repr(body))
    status, _item, _ = http(url, "POST", "/items", {"name": "secure", "payload": {"k": 1}})
    assert status == 201
    raw = _raw(url + "/metrics")
    assert b"forkpool_pool_size" in raw
    assert_clean("GET /metrics", raw)

    env = {"DATABASE_URL": secure_db.dsn}
    stats, stats_json, budget = harness_all(
        (("stats", "--url", url, "--database-url", secure_db.dsn), env),
        (("stats", "--json", "--url", url, "--database-url", secure_db.dsn), env),
        (("budget",), env),
    )
    assert stats.returncode == 0 and live_suite.plan.suite_id in stats.stdout, stats.stderr
    assert_run_clean("forkpool stats", stats)
    assert stats_json.returncode == 0 and '"server_checked": true' in stats_json.stdout, stats_json.stderr
    assert_run_clean("forkpool stats --json", stats_json)
    assert budget.returncode == 0 and "60" in budget.stdout, budget.stdout + budget.stderr
    assert_run_clean("forkpool budget", budget)


def test_error_bodies_over_gunicorn_carry_no_traceback_sql_or_password(live_suite: RunningSuite):
    url = live_suite.web.url
    cases = [
        ("POST", "/items", {"name": ""}, None, 400),
        ("POST", "/items", {"name": "ok", "payload": [1]}, None, 400),
        ("POST", "/items", None, b"{not json", 400),
        ("POST", "/items", {"name": "ok", "extra": 1}, None, 400),
        ("GET", "/items/999999999", None, None, 404),
        ("GET", "/items?limit=zero", None, None, 400),
        ("GET", f"/jobs/{uuid.uuid4()}", None, None, 404),
        ("DELETE", "/items", None, None, 405),
        # Nesting deeper than the JSON decoder's recursion limit: an unexpected error in the app.
        ("POST", "/items", None, b"[" * 60_000, None),
    ]
    for method, path, body, raw, expected in cases:
        status, payload, _ = _http_raw(url, method, path, body, raw)
        text = payload.decode("utf-8", "replace")
        assert status >= 400 and (expected is None or status == expected), (method, path, status, text)
        assert text.lstrip().startswith("{"), text[:200]  # JSON, never an HTML debug page
        assert "Traceback" not in text and "SELECT" not in text and "INSERT" not in text, text
        assert_clean(f"{method} {path} -> {status}", text)
        if status == 500:
            assert text.strip() == '{"error":"internal_error","message":"internal server error"}', text


def test_debug_mode_is_off():
    from web import create_app

    app = create_app()
    assert app.debug is False and app.config["PROPAGATE_EXCEPTIONS"] is False


def test_connection_identities_carry_no_secret(live_suite: RunningSuite, secure_db: SecureDatabase, redis_url: str):
    sid = live_suite.plan.suite_id
    http(live_suite.web.url, "GET", "/readyz")  # every answering worker names a Redis client
    pattern = re.compile(rf"{re.escape(sid)}:(web|worker):\d+")
    assert wait_for(
        lambda: (
            len(secure_db.admin("SELECT 1 FROM pg_stat_activity WHERE application_name LIKE %s", sid + ":%"))
            == live_suite.plan.ceiling
        ),
        15,
        0.1,
    )
    rows = secure_db.admin("SELECT application_name, coalesce(query, '') FROM pg_stat_activity")
    mine = [name for name, _ in rows if name.startswith(sid + ":")]
    assert len(mine) == live_suite.plan.ceiling, rows
    assert all(pattern.fullmatch(name) for name in mine), mine
    for name, query in rows:
        assert_clean("pg_stat_activity", f"{name} {query}")

    observer = redis.Redis.from_url(redis_url)
    try:
        raw_list = observer.execute_command("CLIENT LIST")
        names = [c.get("name", "") for c in observer.client_list()]
    finally:
        observer.close()
    assert_clean("redis CLIENT LIST", raw_list if isinstance(raw_list, (str, bytes)) else repr(raw_list))
    suite_names = [n for n in names if n.startswith(sid + ":")]
    assert suite_names and all(pattern.fullmatch(n) for n in suite_names), names

    for pid in [live_suite.web.pid, live_suite.worker.pid, *live_suite.web.children(), *live_suite.worker.children()]:
        assert_clean(f"command line of {pid} (ps)", "\0".join(psutil.Process(pid).cmdline()))


def test_unreachable_database_and_wrong_password_errors_are_one_redacted_line(
    secure_db: SecureDatabase, live_suite: RunningSuite
):
    from harness._procs import free_port

    wrong_port = {"DATABASE_URL": secure_db.dsn_with(SECRET, port=free_port())}  # the right password
    wrong_password = {"DATABASE_URL": secure_db.dsn_with(WRONG)}
    stats = ("stats", "--url", live_suite.web.url, "--database-url", wrong_password["DATABASE_URL"])
    results = harness_all(
        (("initdb",), wrong_port),
        (("initdb",), wrong_password),
        (("budget",), wrong_port),
        (("budget",), wrong_password),
        (stats, wrong_password),
    )
    lines = [
        assert_one_line_error(what, result)
        for what, result in zip(
            [
                "initdb, wrong port",
                "initdb, wrong password",
                "budget, wrong port",
                "budget, wrong password",
                "stats, wrong password",
            ],
            results,
            strict=False,
        )
    ]
    assert all(result.returncode == 2 for result in results), [r.returncode for r in results]
    for line, reason in zip(lines, ["Connection refused", "authentication failed"] * 2, strict=False):
        assert line.startswith("forkpool ") and "DATABASE_URL='postgresql://forkpool:***@" in line, line
        assert "cannot connect" in line and reason in line, line
    # stats checks the database before it asks the suite anything
    assert lines[4].startswith("forkpool stats: --database-url postgresql://forkpool:***@"), lines[4]
    assert "authentication failed" in lines[4], lines[4]


def test_a_suite_on_a_wrong_password_logs_and_answers_without_it(secure_db: SecureDatabase, redis_url: str, tmp_path):
    plan = SuitePlan(
        database_url=secure_db.dsn_with(WRONG),
        redis_url=redis_url,
        suite_id=f"bad{uuid.uuid4().hex[:8]}",
        web_workers=1,
        worker_concurrency=1,
        pool_size=1,
    )
    suite = start_suite(plan, tmp_path / "logs")
    try:
        url = suite.web.url
        status, body, _ = http(url, "GET", "/readyz")
        assert status == 503 and body["ready"] is False, body
        assert_clean("GET /readyz (wrong password)", repr(body))
        status, body, _ = http(url, "POST", "/items", {"name": "x"})
        assert status == 503 and body["error"] == "database_unavailable", body
        assert_clean("POST /items (wrong password)", repr(body))
        status, body, _ = http(url, "GET", "/pool")
        assert_clean("GET /pool (wrong password)", repr(body))
        assert_clean("GET /metrics (wrong password)", _raw(url + "/metrics"))
        status, job, _ = http(url, "POST", "/jobs", {"kind": "record_event", "args": {"key": "k"}})
        assert status == 202, job
        # The task process tries the database and fails authentication: that is the error path to scan.
        assert wait_for(lambda: "Retry in" in suite.worker.log_text(), 20, 0.1), suite.worker.log_text()[-2000:]
    finally:
        suite.stop()
    scanned = scan_tree(tmp_path / "logs")
    assert suite.web.log_path in scanned and suite.worker.log_path in scanned
    assert "authentication failed" in suite.web.log_text() + suite.worker.log_text()
    assert scan_redis(redis_url) > 0  # the retried task's message and the job key included


def test_live_suite_logs_and_server_log_hold_no_password(
    live_suite: RunningSuite, secure_db: SecureDatabase, redis_url: str
):
    """Last: stops the live suite (shutdown logging included), then scans everything it wrote."""
    live_suite.stop()
    scan_redis(redis_url)
    scanned = scan_tree(live_suite.web.log_path.parent)
    assert live_suite.web.log_path in scanned and live_suite.worker.log_path in scanned
    # The server's own log: failed logins above, and the role created with a verifier only.
    assert_clean("postgres server log", secure_db.server.log_path.read_bytes())


# --- helpers -----------------------------------------------------------------


def _raw(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _http_raw(base: str, method: str, path: str, body: object, raw: bytes | None) -> tuple[int, bytes, dict]:
    """(status, raw body, headers): the bytes as sent, not parsed (a debug page would not be JSON)."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        base + path, method=method, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
