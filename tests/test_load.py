"""Load through real Gunicorn with Locust (headless, in a subprocess), read back as a LoadResult."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness._procs import free_port
from harness.load import LoadError, LocustRun, run_locust
from tests.conftest import wait_for
from tests.test_suite import admin_db, launch, suite_database  # noqa: F401  (fixtures)

ENDPOINTS = {
    ("GET", "/items?limit=20"),
    ("GET", "/items/[id]"),
    ("POST", "/items"),
    ("POST", "/jobs"),
    ("GET", "/pool"),
}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def requests_so_far(run: LocustRun) -> int:
    """The Aggregated request count in Locust's CSV (rewritten once a second during the run)."""
    try:
        rows = list(csv.DictReader(run.stats_path.read_text().splitlines()))
    except OSError:
        return 0
    return sum(int(row["Request Count"]) for row in rows if row["Name"] == "Aggregated")


def test_locust_load_through_gunicorn_is_counted_and_every_job_writes_its_event_once(launch, admin_db, tmp_path):
    suite = launch(web_workers=2, worker_concurrency=1)
    sid = suite.plan.suite_id
    result = run_locust(suite.web.url, users=5, duration=4, suite_id=sid, workdir=tmp_path / "load")

    assert result.requests > 20, result
    assert result.requests_per_s > 0 and 0 < result.latency_ms["p50"] <= result.latency_ms["max"]
    counts = result.status_counts
    assert {"200", "201", "202"} <= set(counts), counts
    assert sum(counts.values()) == result.requests  # the summary and the stats saw the same requests
    assert not [code for code in counts if code.startswith("5") and code != "503"], counts
    assert "error" not in counts, counts
    assert result.failures == counts.get("503", 0), (result.failures, counts, result.errors)
    assert all("503" in line for line in result.errors), result.errors

    assert {(e["method"], e["name"]) for e in result.endpoints} >= ENDPOINTS, result.endpoints
    assert sum(e["requests"] for e in result.endpoints) == result.requests
    assert not [e for e in result.endpoints if e["name"].startswith(("/items/", "/jobs/")) and "[id]" not in e["name"]]

    assert result.job_ids and len(result.job_ids) == len(result.event_keys) == len(set(result.event_keys))
    assert len(result.job_ids) == counts["202"]
    assert all(key.startswith(f"{sid}:") for key in result.event_keys)
    # Every 201 is recorded by item name (a failover's "acknowledged writes lost" counts them on the new primary).
    assert len(result.items_created) == counts["201"] == len({name for name, _ in result.items_created})

    web_pids = {str(pid) for pid in suite.web.children()}
    assert result.pool_reports and set(result.pool_reports) <= web_pids, (result.pool_reports.keys(), web_pids)
    for pid, body in result.pool_reports.items():
        assert body["pid"] == int(pid) and body["role"] == "web" and body["suite_id"] == sid

    def events_written() -> list[tuple]:
        return admin_db("SELECT key, count(*) FROM events WHERE key = ANY(%s) GROUP BY key", list(result.event_keys))

    assert wait_for(lambda: len(events_written()) == len(result.event_keys), 30, 0.2), (
        f"{len(events_written())} of {len(result.event_keys)} events written"
    )
    assert {count for _, count in events_written()} == {1}


def test_stop_ends_a_long_run_and_wait_returns_what_ran(launch, tmp_path):
    suite = launch(web_workers=1, worker_concurrency=1)
    run = LocustRun(suite.web.url, users=3, duration=60, suite_id=suite.plan.suite_id, workdir=tmp_path / "load")
    with run:
        assert wait_for(lambda: requests_so_far(run) > 0, 15, 0.1)  # it is really loading
        assert run.is_running()
        began = time.monotonic()
        run.stop()
        took = time.monotonic() - began
        assert not run.is_running() and not group_alive(run.pid)
    assert took < 8, f"stop() took {took:.1f} s"
    assert run.stopped
    result = run.wait()  # a stopped run is a partial result, not an error
    assert result.requests > 0 and sum(result.status_counts.values()) == result.requests
    assert result.requests_per_s > 0


class _Overloaded(BaseHTTPRequestHandler):
    """A stand-in web app: busy pool on writes, database down on jobs, a bug on lists."""

    def _answer(self, status: int, body: dict, retry_after: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/pool":
            self._answer(200, {"pid": 4242, "role": "web", "suite_id": "stub", "pool": {"size": 2}})
        elif self.path.startswith("/items?"):
            self._answer(500, {"error": "internal_error", "message": "internal server error"})
        else:
            self._answer(404, {"error": "not_found"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/items":
            self._answer(503, {"error": "pool_timeout"}, retry_after="1")
        else:
            self._answer(503, {"error": "database_unavailable"}, retry_after="2")

    def log_message(self, *args: object) -> None:
        pass


def test_503s_are_failures_named_by_cause_and_told_apart_from_500s(tmp_path):
    wanted = {"503 pool timeout", "503 database_unavailable", "500 server error"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Overloaded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results = []
    try:
        # Locust picks its users' tasks at random, and a loaded machine makes few requests in a short run:
        # short runs until every kind of answer was met (a bound, not a timing).
        deadline = time.monotonic() + 120
        while True:
            results.append(
                run_locust(
                    f"http://127.0.0.1:{server.server_address[1]}",
                    users=2,
                    duration=1,
                    suite_id="stub",
                    workdir=tmp_path / f"run{len(results)}",
                )
            )
            causes = {line.split(": ", 1)[1] for result in results for line in result.errors}
            if causes >= wanted or time.monotonic() > deadline:
                break
    finally:
        server.shutdown()
        server.server_close()
    for result in results:
        counts = result.status_counts
        assert set(counts) <= {"200", "500", "503"} and "200" in counts, counts
        assert result.failures == counts.get("500", 0) + counts.get("503", 0)
        assert result.requests == sum(counts.values())
        assert not result.job_ids and set(result.pool_reports) == {"4242"}
    assert causes == wanted, [result.errors for result in results]
    errors = [line for result in results for line in result.errors]
    assert any(line.endswith("POST /items: 503 pool timeout") for line in errors), errors


def test_unreachable_host_counts_errors_instead_of_crashing(tmp_path):
    result = run_locust(f"http://127.0.0.1:{free_port()}", users=2, duration=1, suite_id="nobody", workdir=tmp_path)
    assert result.requests > 0 and result.failures == result.requests
    assert result.status_counts == {"error": result.requests}
    assert result.errors and all("connection error" in line for line in result.errors)
    assert not result.job_ids and not result.pool_reports


def test_a_broken_locustfile_raises_with_locusts_output(tmp_path: Path):
    broken = tmp_path / "broken_locustfile.py"
    broken.write_text("raise SystemExit('this locustfile is broken on purpose')\n")
    run = LocustRun(
        "http://127.0.0.1:9", users=1, duration=1, suite_id="x", workdir=tmp_path / "out", locustfile=broken
    ).start()
    with pytest.raises(LoadError, match="broken on purpose"):
        run.wait(timeout=30)
    assert not group_alive(run.pid)
