"""Metrics across processes, `forkpool stats`, the start-up budget check and the logs (real suite)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness.processes import CeleryWorker, SuitePlan, WebServer
from tests.conftest import wait_for
from tests.suite_helpers import http
from tests.test_suite import POOL, admin_db, launch, settled, suite_database  # noqa: F401 - fixtures


def scrape(url: str) -> dict[str, dict[tuple[str, int], float]]:
    """{metric: {(role, pid): value}} for the per-process gauges."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    found: dict[str, dict[tuple[str, int], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "pid" in sample.labels:
                found.setdefault(sample.name, {})[(sample.labels["role"], int(sample.labels["pid"]))] = sample.value
    return found


def counter(url: str, name: str, role: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and s.labels.get("role") == role
    )


def test_metrics_of_every_process_match_the_server(launch, admin):
    suite = launch(web_workers=3, worker_concurrency=2)
    seen = settled(admin, suite)
    server = {(role, pid): n for role, pids in seen.items() for pid, n in pids.items()}

    def metrics_agree() -> bool:
        return scrape(suite.web.url).get("forkpool_pool_size") == server

    assert wait_for(metrics_agree, 10), (scrape(suite.web.url).get("forkpool_pool_size"), server)
    for _ in range(20):
        http(suite.web.url, "GET", "/items?limit=1")
    assert wait_for(lambda: counter(suite.web.url, "forkpool_pool_checkouts_total", "web") >= 20, 10)


def test_gauges_of_killed_processes_disappear(launch, admin):
    suite = launch(web_workers=2, worker_concurrency=2)
    settled(admin, suite)
    victims = [suite.web.children()[0], suite.worker.children()[0]]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not set(victims) & set(suite.web.children() + suite.worker.children()), 20)
    settled(admin, suite)

    def only_live_pids() -> bool:
        pids = {pid for _, pid in scrape(suite.web.url).get("forkpool_pool_size", {})}
        return pids == set(suite.web.children()) | set(suite.worker.children())

    assert wait_for(only_live_pids, 15)


def test_forkpool_stats_reports_every_process_beside_the_server(launch, admin, suite_database):
    suite = launch(web_workers=2, worker_concurrency=2)
    settled(admin, suite)
    result = subprocess.run(
        [sys.executable, "-m", "forkpool", "stats", "--url", suite.web.url, "--database-url", suite_database, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["suite_id"] == suite.plan.suite_id
    for role, processes in (("web", 2), ("worker", 2)):
        total = found["roles"][role]
        assert total["processes"] == processes and total["size"] == total["server"] == processes * POOL
    assert all(row["size"] == row["server"] == POOL for row in found["processes"])
    table = subprocess.run(
        [sys.executable, "-m", "forkpool", "stats", "--url", suite.web.url, "--database-url", suite_database],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "Per role" in table.stdout


def test_servers_refuse_to_start_when_their_share_does_not_fit(suite_database, redis_url, tmp_path):
    big = SuitePlan(
        database_url=suite_database,
        redis_url=redis_url,
        suite_id="toobig",
        web_workers=8,
        worker_concurrency=7,
        pool_size=50,
    )  # 400 and 350 of the session server's 297
    for server in (WebServer(big, tmp_path), CeleryWorker(big, tmp_path)):
        server.start()
        assert server.proc.wait(60) != 0
        log = server.log_text()
        assert "does not fit" in log and "DB_BUDGET_CHECK" in log, log[-2000:]
    relaxed = SuitePlan(
        **{
            **big.__dict__,
            "extra_env": {"DB_BUDGET_CHECK": "warn", "DB_POOL_MIN": "0"},
            "web_workers": 1,
            "pool_size": 300,
        }
    )
    web = WebServer(relaxed, tmp_path / "relaxed").start()
    try:
        assert wait_for(lambda: "does not fit" in web.log_text(), 30)
        assert web.is_running()  # warned, started anyway
    finally:
        web.stop()


def test_json_logs_carry_role_and_pid(launch):
    suite = launch(web_workers=1, worker_concurrency=1, extra_env={"LOG_FORMAT": "json"})
    http(suite.web.url, "GET", "/healthz")
    lines = [json.loads(line) for line in suite.web.log_text().splitlines() if line.startswith("{")]
    roles = {line["role"] for line in lines}
    assert {"web-master", "web"} <= roles and all(isinstance(line["pid"], int) for line in lines)


def test_text_logs_mask_passwords(caplog):
    from suite.logging_setup import IdentityFilter, TextFormatter

    record = logging.LogRecord("t", logging.INFO, __file__, 1, "dsn postgresql://u:hunter22@h/db", None, None)
    IdentityFilter().filter(record)
    line = TextFormatter("%(role)s:%(process)d %(message)s").format(record)
    assert "hunter22" not in line and f":{os.getpid()} " in line
