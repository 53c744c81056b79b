"""The benchmarks still run end to end (--quick). Figures are not checked, only that they exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(module: str, *args: str, out: Path | None = None, timeout: float = 55) -> str:
    """`python -m benchmarks.MODULE --quick ARGS [--out OUT]` from the repository's root, in this test's
    environment (the autouse fixture's DATABASE_URL: the session's server); it must exit 0. Its stdout."""
    argv = [sys.executable, "-m", f"benchmarks.{module}", "--quick", *args]
    if out is not None:
        argv += ["--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def quick_report(module: str, out: Path, *args: str, timeout: float = 55) -> tuple[dict[str, Any], str]:
    """Run the benchmark (run_quick) into `out`: the one JSON report and the one Markdown page it wrote there,
    the page titled with the module's name."""
    run_quick(module, *args, out=out, timeout=timeout)
    [json_file] = out.glob(f"{module}_*.json")
    [md_file] = out.glob(f"{module}_*.md")
    markdown = md_file.read_text()
    assert markdown.startswith(f"# {module}")
    return json.loads(json_file.read_text()), markdown


def quick_text(module: str, out: Path) -> str:
    """Run the benchmark (run_quick) into `out`: the one text file it wrote there."""
    run_quick(module, out=out)
    [text_file] = out.glob(f"{module}_*.txt")
    return text_file.read_text()


SCENARIOS = {"checkout_1t", "checkout_8t", "select1_1t", "select1_8t", "checked_select1_1t", "checked_select1_8t"}
PEERS = {"ours", "psycopg2", "psycopg_pool", "sqlalchemy", "connect"}


@pytest.mark.timeout(60)
def test_quick_benchmark_reports_every_contender_and_scenario(tmp_path: Path, database_url: str) -> None:
    # The autouse fixture has set DATABASE_URL: the benchmark uses this session's server.
    assert os.environ["DATABASE_URL"] == database_url
    report, _ = quick_report("pool_bench", tmp_path)

    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1
    assert machine["python"]["version"] and machine["postgresql"]["version"]
    for package in ("psycopg2-binary", "psycopg", "psycopg-pool", "sqlalchemy"):
        assert machine["packages"][package], package

    assert set(report["scenarios"]) == SCENARIOS
    for key, scenario in report["scenarios"].items():
        results, not_applicable = scenario["results"], scenario["not_applicable"]
        assert set(results) | set(not_applicable) >= PEERS, key
        assert "ours" in results and "psycopg_pool" in results and "sqlalchemy" in results, key
        # psycopg 3: ours on the same driver, and psycopg_pool paired against it
        assert "ours_psycopg" in results, key
        assert results["psycopg_pool"]["ratio_to_ours_psycopg"]["median"] > 0, key
        assert results["psycopg_pool"]["driver"] == results["ours_psycopg"]["driver"] == "psycopg 3", key
        for name, row in results.items():
            figures = row["ns_per_op"]
            assert 0 < figures["min"] <= figures["median"] <= figures["max"], (key, name)
            assert row["ratio_to_ours"]["median"] > 0, (key, name)
            assert all(ns > 0 for ns in row["per_round"]["ns_per_op"]), (key, name)
            if scenario["threads"] > 1:
                # 0 is a real figure: a peer without a queue can starve a thread for a whole window.
                assert 0 <= row["fairness"]["median"] <= 1, (key, name)
                if name in ("ours", "ours_psycopg"):
                    assert row["fairness"]["median"] > 0, key  # FIFO: every thread gets its turns
    assert "psycopg2" in report["scenarios"]["select1_8t"]["results"]
    assert "connect" in report["scenarios"]["select1_1t"]["results"]
    assert "psycopg2" in report["scenarios"]["checked_select1_8t"]["not_applicable"]
    assert report["derived"]["ours_checks_on_vs_off"]["select1_8t"]["median"] > 0
    assert report["derived"]["ours_psycopg_checks_on_vs_off"]["select1_8t"]["median"] > 0
    assert "ours_psycopg_nocheck" in report["scenarios"]["select1_8t"]["results"]
    goals = report["derived"]["goals"]
    assert {g["driver"] for g in goals} == {"psycopg2", "psycopg 3"}
    assert all(g["figure"] is not None for g in goals), goals
    assert len(report["rounds"]) == report["config"]["rounds"]
    assert machine["cpu_use"]["machine_busy_pct"] >= 0


# -- the asyncio pools (benchmarks.aio_bench) ------------------------------------------------------------------

AIO_SCENARIOS = {"checkout_1task", "checkout_50tasks", "select1_1task", "select1_50tasks"}
AIO_POOLS = {"ours", "ours_b", "psycopg_pool", "asyncpg", "asyncpg_noreset"}


@pytest.mark.timeout(60)
def test_quick_aio_benchmark_reports_every_contender_and_scenario(tmp_path: Path, database_url: str) -> None:
    pytest.importorskip("asyncpg")
    assert os.environ["DATABASE_URL"] == database_url  # the session's server, as pool_bench
    report, _ = quick_report("aio_bench", tmp_path)

    machine = report["machine"]
    assert machine["postgresql"]["version"] and machine["cpu_use"]["machine_busy_pct"] >= 0
    for package in ("psycopg", "psycopg-pool", "asyncpg", "event loop"):
        assert machine["packages"][package], package

    assert set(report["scenarios"]) == AIO_SCENARIOS
    for key, scenario in report["scenarios"].items():
        results = scenario["results"]
        assert set(results) >= AIO_POOLS, key
        for name, row in results.items():
            figures = row["ns_per_op"]
            assert 0 < figures["min"] <= figures["median"] <= figures["max"], (key, name)
            assert row["ratio_to_ours"]["median"] > 0, (key, name)
            if scenario["tasks"] > 1:
                # Whether every task got a turn in a quick run is the scheduler's on a loaded machine:
                # fairness is judged by the benchmark's full runs (BENCHMARKS.md), not here.
                assert 0 <= row["fairness"]["median"] <= 1, (key, name)
    assert {"floor_psycopg", "floor_asyncpg"} <= set(report["scenarios"]["select1_1task"]["results"])
    assert "floor_psycopg" not in report["scenarios"]["checkout_1task"]["results"]
    derived = report["derived"]
    assert all(derived["aa_control"][key]["median"] > 0 for key in AIO_SCENARIOS)
    assert derived["above_floor_ns"]["ours"] and derived["floor_psycopg_over_asyncpg"]["median"] > 0
    assert {g["verdict"] for g in derived["goals"]} <= {"yes", "no", "inconclusive"}
    assert {g["peer"] for g in derived["goals"]} == {"psycopg_pool", "asyncpg", "asyncpg_noreset", None}
    stats = report["ours_pool_stats"]
    assert set(stats) == {"ours", "ours_b"} and all(s["checkouts"] > 0 for s in stats.values())
    assert len(report["rounds"]) == report["config"]["rounds"]


@pytest.mark.timeout(60)
def test_quick_psycopg3_profile_runs(tmp_path: Path, database_url: str) -> None:
    text = quick_text("psycopg3_profile", tmp_path)
    for case in (
        "driver='psycopg', checkout",
        "driver='psycopg2', select1",
        "AsyncPool, checkout + yield",
        "AsyncPool, BEGIN/SELECT 1/COMMIT",
        "== prototypes",
    ):
        assert case in text, case
    assert all(f"\n{name} " in text for name in ("stock_b", "P1", "P2")), text[-800:]


# -- the suite end to end (benchmarks.suite_bench) ------------------------------------------------------------

WEB_VARIANTS = {
    f"{worker_class}/{mode}" for worker_class in ("sync", "gthread") for mode in ("pool", "connect", "floor", "floor-b")
}
CELERY_VARIANTS = {f"prefork/{mode}" for mode in ("pool", "connect", "floor")}


@pytest.mark.slow  # on demand (-m slow): 25 s; the pool benchmarks smoke-test the harness in the default set
@pytest.mark.timeout(60)
def test_quick_suite_benchmark_reports_every_variant(tmp_path: Path) -> None:
    # Its own embedded PostgreSQL and Redis: the session's servers are not used.
    # The WSGI classes and Celery; the asgi class has a test of its own (each well within the timeout).
    report, _ = quick_report("suite_bench", tmp_path, "--web-classes", "sync,gthread", timeout=58)
    assert report["config"]["load_generator"]["name"] in ("wrk", "python")
    assert report["machine"]["postgresql"]["version"] and report["machine"]["redis"]

    web = report["web"]["figures"]
    assert set(web) == WEB_VARIANTS
    for key, row in web.items():
        assert row["requests"] > 0 and row["errors"] == 0, key
        for what in ("rps", "p50_ms", "p99_ms"):
            assert row[what]["median"] > 0, (key, what)
        assert row["rps_to_floor"]["median"] > 0, key

    celery = report["celery"]["figures"]
    assert set(celery) == CELERY_VARIANTS
    for key, row in celery.items():
        assert row["tasks_per_s"]["median"] > 0, key
        assert row["rows_written"] == row["tasks"] > 0, key

    startup = report["startup"]
    for name in ("web sync/pool", "web gthread/pool", "celery prefork/pool"):
        assert startup[name]["processes"] >= 2 and startup[name]["ms"]["median"] > 0, name
        assert startup[name]["all_full"] and min(startup[name]["pool_sizes"]) >= 1, name

    for phase, variants in (("web", WEB_VARIANTS), ("celery", CELERY_VARIANTS)):
        memory = report[phase]["memory"]
        assert set(memory) == variants
        for key, row in memory.items():
            assert row["rss_kib"]["min"] > 0, (phase, key)
    assert {g["goal"].split(":")[0] for g in report["goals"]} == {"web sync", "web gthread", "celery"}


ASGI_VARIANTS = {f"asgi/{mode}" for mode in ("pool", "connect", "floor", "floor-b")}


@pytest.mark.slow  # on demand (-m slow)
@pytest.mark.timeout(60)
def test_quick_suite_benchmark_asgi_tier(tmp_path: Path) -> None:
    # Gunicorn with uvicorn workers, on suite_bench's own embedded PostgreSQL and Redis; no Celery phase.
    pytest.importorskip("uvicorn_worker")
    report, markdown = quick_report(
        "suite_bench", tmp_path, "--web-classes", "asgi", "--celery-rounds", "0", timeout=58
    )
    assert "uvicorn_worker.UvicornWorker" in markdown
    assert report["config"]["web_classes"] == ["asgi"] and report["config"]["celery_rounds"] == 0
    machine = report["machine"]
    assert machine["packages"]["uvicorn"] and machine["packages"]["psycopg"]
    assert machine["cpu_use"]["machine_busy_pct"] >= 0 and machine["cpu_use"]["this_process_pct"] > 0

    web, variants = report["web"]["figures"], report["web"]["variants"]
    assert set(web) == ASGI_VARIANTS
    for key, row in web.items():
        assert row["requests"] > 0 and row["errors"] == 0, key
        for what in ("rps", "p50_ms", "p99_ms", "worker_cpu_us_per_request"):
            assert row[what]["median"] > 0, (key, what)
        assert row["rps_to_floor"]["median"] > 0 and row["rps_to_connect"]["median"] > 0, key
        assert all(r["load_1min_after"] is not None for r in report["web"]["rounds"][key]), key
    assert variants["asgi/pool"]["pool_size"] == 1 and variants["asgi/floor-b"]["control"]
    assert report["celery"]["figures"] == {}

    startup = report["startup"]  # the lifespan startup: the pool full, the floor's connection open
    for name, held in (("web asgi/pool", [1]), ("web asgi/floor", [1]), ("web asgi/connect", [0])):
        assert startup[name]["processes"] >= 2 and startup[name]["all_full"], name
        assert startup[name]["pool_sizes"] == held, name
    memory = report["web"]["memory"]
    assert set(memory) == ASGI_VARIANTS and all(row["rss_kib"]["min"] > 0 for row in memory.values())
    assert memory["asgi/pool"]["sessions"] == memory["asgi/floor"]["sessions"] == 2  # one per worker
    goals = report["goals"]
    assert {g["goal"].split(":")[0] for g in goals} == {"web asgi"} and len(goals) == 3
    assert all(g["figure"] is not None for g in goals), goals


@pytest.mark.timeout(60)
def test_quick_asgi_profile_runs(tmp_path: Path, database_url: str) -> None:
    text = quick_text("asgi_profile", tmp_path)
    for row in ("  pool ", "  floor ", "  floor-b (A/A) ", "cProfile of the pool's cycle", "_pool_async.py"):
        assert row in text, row


WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:40000/item
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.61ms  642.11us  12.30ms   80.00%
    Req/Sec     2.50k   120.00     2.70k    70.00%
  Latency Distribution
     50%    1.50ms
     75%    1.90ms
     90%    2.30ms
     99%  850.00us
  7500 requests in 3.00s, 1.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2499.50
Transfer/sec:    410.00KB
"""


def test_wrk_output_is_read() -> None:
    from benchmarks.loadgen import parse_wrk

    result = parse_wrk(WRK_OUTPUT)
    assert (result.requests, result.errors, result.seconds, result.rps) == (7500, 7, 3.0, 2499.5)
    assert (result.p50_ms, result.p99_ms) == (1.5, 0.85)


def test_close_each_request_is_asked_of_wrk(monkeypatch: pytest.MonkeyPatch) -> None:
    # The asgi servers close after a response only when the client asks (uvicorn has no setting for it).
    from benchmarks import loadgen

    seen: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, WRK_OUTPUT, "")

    monkeypatch.setattr(loadgen.subprocess, "run", fake_run)
    loadgen.run_wrk("wrk", "http://127.0.0.1:1/item", 16, 1, close=True)
    loadgen.run_wrk("wrk", "http://127.0.0.1:1/item", 16, 1)
    assert seen[0][-3:] == ["-H", "Connection: close", "http://127.0.0.1:1/item"]
    assert "-H" not in seen[1]


@pytest.mark.timeout(60)
def test_quick_autocommit_benchmark_prints_every_contender(database_url: str) -> None:
    stdout = run_quick("autocommit_bench")
    rows = {line.split()[0] for line in stdout.splitlines()[2:] if line.strip()}
    assert {"after", "before_txn", "before_toggle", "after_block", "psycopg2_tcp"} <= rows, stdout
