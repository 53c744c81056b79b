"""The pool benchmark still runs end to end (--quick). Figures are not checked, only that they exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]

SCENARIOS = {"checkout_1t", "checkout_8t", "select1_1t", "select1_8t", "checked_select1_1t", "checked_select1_8t"}
PEERS = {"ours", "psycopg2", "psycopg_pool", "sqlalchemy", "connect"}


@pytest.mark.timeout(60)
def test_quick_benchmark_reports_every_contender_and_scenario(tmp_path: Path, database_url: str) -> None:
    # The autouse fixture has set DATABASE_URL: the benchmark uses this session's server.
    assert os.environ["DATABASE_URL"] == database_url
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pool_bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [json_file] = tmp_path.glob("pool_bench_*.json")
    [md_file] = tmp_path.glob("pool_bench_*.md")
    assert md_file.read_text().startswith("# pool_bench")
    report = json.loads(json_file.read_text())

    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1
    assert machine["python"]["version"] and machine["postgresql"]["version"]
    for package in ("psycopg2-binary", "psycopg", "psycopg-pool", "sqlalchemy"):
        assert machine["packages"][package], package

    assert set(report["scenarios"]) == SCENARIOS
    for key, scenario in report["scenarios"].items():
        results, not_applicable = scenario["results"], scenario["not_applicable"]
        assert PEERS <= set(results) | set(not_applicable), key
        assert "ours" in results and "psycopg_pool" in results and "sqlalchemy" in results, key
        for name, row in results.items():
            figures = row["ns_per_op"]
            assert 0 < figures["min"] <= figures["median"] <= figures["max"], (key, name)
            assert row["ratio_to_ours"]["median"] > 0, (key, name)
            assert all(ns > 0 for ns in row["per_round"]["ns_per_op"]), (key, name)
            if scenario["threads"] > 1:
                assert 0 < row["fairness"]["median"] <= 1, (key, name)
    assert "psycopg2" in report["scenarios"]["select1_8t"]["results"]
    assert "connect" in report["scenarios"]["select1_1t"]["results"]
    assert "psycopg2" in report["scenarios"]["checked_select1_8t"]["not_applicable"]
    assert report["derived"]["ours_checks_on_vs_off"]["select1_8t"]["median"] > 0
