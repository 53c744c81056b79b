"""The regression guard, fork_cost and hotpath_profile still run end to end (--quick); no timing is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.guard import FIGURES
from benchmarks.guard_bench import BENCHES

ROOT = Path(__file__).resolve().parents[1]


def _git_checkout() -> bool:
    return (
        subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0
        and (ROOT / "shared" / "forkpool").is_dir()
    )


@pytest.mark.timeout(240)
def test_quick_guard_prints_every_figure_for_both_commits(tmp_path: Path, database_url: str) -> None:
    if not _git_checkout():
        pytest.skip("the guard checks a commit out with git: this is not a git checkout")
    assert os.environ["DATABASE_URL"] == database_url  # the session's server, as the other benchmarks
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.guard", "--quick", "--base", "HEAD", "--out", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    for bench in BENCHES:  # every benchmark, for both commits, in the guard's table and in pyperf's
        assert f"  {bench.name} " in out, bench.name
        assert f"| {bench.name} " in out, bench.name
    for figure, _, _ in FIGURES:
        assert figure in out, figure
    assert out.count("    base: ") == out.count("    head: ") == len(FIGURES)
    assert out.count("    head / base of ours / peer: ") == len(FIGURES)
    assert "fairness ours" in out
    # each commit's processes imported their own tree's library: the base's from its temporary worktree
    facts = {
        line.split(":", 1)[0].strip(): line for line in out.splitlines() if line.startswith(("  base:", "  head:"))
    }
    assert "forkpool-guard-" in facts["base"] and str(ROOT / "shared" / "forkpool") in facts["head"], facts
    assert "autocommit_pool_lends_autocommit=True" in facts["head"], facts  # DB_POOL_AUTOCOMMIT taken
    [text] = tmp_path.glob("guard_*.txt")
    assert text.read_text().startswith("# guard: base HEAD") and text.read_text().strip() in out
    [figures] = tmp_path.glob("guard_*_figures.json")
    rows = json.loads(figures.read_text())["rows"]
    assert {r["benchmark"] for r in rows if "benchmark" in r} == {b.name for b in BENCHES}
    assert all(len(r["head_over_base"]) == 1 and r["head_over_base"][0] > 0 for r in rows if "benchmark" in r)
    assert len(list(tmp_path.glob("guard_*_base.json"))) == len(list(tmp_path.glob("guard_*_head.json"))) == 1
    # the temporary worktree is gone again (only the guard's own: other worktrees may come and go meanwhile)
    base_tree = facts["base"].split("forkpool=", 1)[1].split(";")[0].rsplit("/shared/forkpool", 1)[0]
    assert "forkpool-guard-" in base_tree and base_tree.endswith("/base"), base_tree
    after = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert base_tree not in after and not Path(base_tree).exists(), after


def test_guard_refuses_a_bad_base_in_one_line(tmp_path: Path) -> None:
    if not _git_checkout():
        pytest.skip("the guard checks a commit out with git: this is not a git checkout")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.guard", "--quick", "--base", "no-such-ref-xyz", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "benchmarks.guard: 'no-such-ref-xyz' is not a commit of this repository"
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(180)
def test_quick_fork_cost_reports_pool_and_scratch_children(tmp_path: Path, database_url: str) -> None:
    pytest.importorskip("psutil")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fork_cost", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [text_file] = tmp_path.glob("fork_cost_*.txt")
    text = text_file.read_text()
    table = [line.split() for line in text.splitlines() if line.startswith(("pool ", "pool1 ", "scratch "))]
    rows = {cells[0]: cells for cells in table if cells[1] != "/"}  # not the "pool / scratch" summary line
    assert set(rows) == {"pool", "pool1", "scratch"}, text
    for kind, cells in rows.items():
        assert float(cells[1]) > 0, (kind, text)  # fork to first query, ms
        assert float(cells[4]) > 0, (kind, text)  # the child's USS, MiB
    assert int(rows["pool"][6]) >= int(rows["scratch"][6]) >= 1, text  # threads alive in the idle child
    assert "pool / scratch, fork to first query, paired by round" in text
    assert "the pool's memory in a child" in text


@pytest.mark.timeout(180)
def test_quick_hotpath_profile_reports_every_part(tmp_path: Path, database_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.hotpath_profile", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [text_file] = tmp_path.glob("hotpath_profile_*.txt")
    text = text_file.read_text()
    for part in ("1. getconn() + putconn()", "2. ours' steps", "3. cProfile", "4. variants"):
        assert part in text, part
    for row in ("psycopg2 + semaphore", "psycopg_pool", "before", "C_status_only"):
        assert f"\n{row} " in text, row
    assert "forkpool/_pool.py" in text  # the profile names the pool's own functions
