"""The regression guard: the pool benchmarks at two commits, interleaved in one run on one server.

    python -m benchmarks.guard                       # base: the last release tag, else main~5; 12 rounds
    python -m benchmarks.guard --base 1587244        # any commit, tag or branch
    python -m benchmarks.guard --quick               # seconds: does it still run? (figures meaningless)
    python -m benchmarks.guard --base main --head my-branch --rounds 20

The base (and --head, if given) is checked out into a temporary ``git worktree``; without --head
the head is this working tree, uncommitted changes included (the output says which files of
shared/ differ from HEAD). Every figure of benchmarks/guard_bench.py runs at both commits on the
same PostgreSQL (DATABASE_URL, else an embedded one), each commit's library imported in its own
processes from its own tree (the benchmark code is this tree's for both), as pyperf benchmarks:
per round, every benchmark in a shuffled order, each run at both commits back to back (in a
shuffled order; one pyperf worker process each, 1 warm-up + 3 values), so the two sides of
a ratio are measured seconds apart; appended to one pyperf file per commit.

Printed: for each figure, head / base of ours paired by round (median, 90 % bootstrap interval,
min-max), the same for each peer (it runs the same code at both commits: the A/A control, the
run's noise), ours / peer at each commit (the issue's figures) and its head / base, fairness with
several threads or tasks; then ``python -m pyperf compare_to base.json head.json --table`` (mean +- std dev of every
value, and whether a difference is significant). --quick runs one process per commit with one
value of a few hundred operations per benchmark (pyperf's --debug-single-value): a smoke test.
The text and both pyperf files go to benchmarks/results/ (or --out). Asserts nothing unless
--fail-above is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .aio_figures import median_interval
from .guard_bench import BENCHES
from .machine import CpuMeter, load_average, postmaster_pid, run_context_line

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_ROUNDS = 12
VALUES = 3

# (figure, ours, peer): the issue's figures, ours' cost over the peer's (below 1: ours is cheaper).
FIGURES = [
    ("psycopg2 checkout + return, 1 thread, vs ThreadedConnectionPool", "checkout_1t/ours", "checkout_1t/psycopg2"),
    ("psycopg2 checkout + return, 1 thread, vs psycopg_pool", "checkout_1t/ours", "checkout_1t/psycopg_pool"),
    ("psycopg 3 checkout + return, 1 thread, vs psycopg_pool", "checkout_1t/ours_psycopg", "checkout_1t/psycopg_pool"),
    ("SELECT 1, 8 threads on 5 connections, vs ThreadedConnectionPool", "select1_8t/ours", "select1_8t/psycopg2"),
    ("asyncio BEGIN/SELECT 1/COMMIT, 1 task, vs asyncpg's pool", "aio_txn_1task/ours", "aio_txn_1task/asyncpg"),
    ("asyncio BEGIN/SELECT 1/COMMIT, 50 tasks, vs asyncpg's pool", "aio_txn_50tasks/ours", "aio_txn_50tasks/asyncpg"),
    (
        "asyncio BEGIN/SELECT 1/COMMIT, 1 task, ours on asyncpg vs asyncpg's pool",
        "aio_txn_1task/ours_asyncpg",
        "aio_txn_1task/asyncpg",
    ),
    (
        "asyncio BEGIN/SELECT 1/COMMIT, 50 tasks, ours on asyncpg vs asyncpg's pool",
        "aio_txn_50tasks/ours_asyncpg",
        "aio_txn_50tasks/asyncpg",
    ),
    (
        "asyncio, 1 task, ours on asyncpg vs a bare asyncpg connection (our pool's overhead)",
        "aio_txn_1task/ours_asyncpg",
        "aio_txn_1task/asyncpg_bare",
    ),
    (
        "asyncio, 1 task, asyncpg's pool vs a bare asyncpg connection (its pool's overhead)",
        "aio_txn_1task/asyncpg",
        "aio_txn_1task/asyncpg_bare",
    ),
    (
        "asyncio, 1 task, ours on psycopg 3 vs ours on asyncpg (the drivers)",
        "aio_txn_1task/ours",
        "aio_txn_1task/ours_asyncpg",
    ),
    (
        "autocommit SELECT 1 (DB_POOL_AUTOCOMMIT=on), vs ThreadedConnectionPool",
        "autocommit_1t/ours",
        "autocommit_1t/psycopg2",
    ),
]


def git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise GuardError(f"git {' '.join(args)}: {(out.stderr.strip().splitlines() or ['failed'])[-1]}")
    return out.stdout.strip()


class GuardError(Exception):
    """A one-line reason the guard cannot run (bad commit, no library in it)."""


def default_base() -> str:
    """The last release tag reachable from HEAD, else main~5 (HEAD~5 where there is no main)."""
    try:
        return git("describe", "--tags", "--abbrev=0", "HEAD")
    except GuardError:
        pass
    try:
        git("rev-parse", "--verify", "--quiet", "main^{commit}")
        return "main~5"
    except GuardError:
        return "HEAD~5"


def resolve(ref: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GuardError:
        raise GuardError(f"{ref!r} is not a commit of this repository") from None


def library_dir(tree: Path, what: str) -> Path:
    """The directory to put first on sys.path so that `import forkpool` finds this tree's library."""
    for candidate in (tree / "shared", tree / "shared" / "src"):
        if (candidate / "forkpool" / "__init__.py").is_file():
            return candidate
    raise GuardError(f"{what} has no shared/forkpool (the library's own distribution): nothing to measure")


class Worktrees:
    """Temporary detached worktrees, removed (and pruned) on exit."""

    def __init__(self, stack: ExitStack) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="forkpool-guard-"))
        stack.callback(self._remove_all)
        self.made: list[Path] = []

    def add(self, sha: str, name: str) -> Path:
        path = self.base_dir / name
        git("worktree", "add", "--detach", "--quiet", str(path), sha)
        self.made.append(path)
        return path

    def _remove_all(self) -> None:
        for path in self.made:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def run_commit(
    label: str, library: Path, dsn: str, out_json: Path, side: Path, quick: bool, values: int, only: str | None = None
) -> None:
    cmd = [sys.executable, "-m", "benchmarks.guard_bench", "--dsn", dsn, "--library", str(library)]
    cmd += ["--label", label, "--side", str(side), "--quiet", "--append", str(out_json)]
    if only:
        cmd += ["--only", only]
    # pyperf's worker mode: this process runs the loops itself (no manager spawning one more process);
    # the loop count is fixed (each benchmark's operations per value), not calibrated.
    if quick:
        cmd += ["--quick", "--worker", "--loops", "1", "--warmups", "0", "--values", "1"]
    else:
        cmd += ["--worker", "--loops", "1", "--warmups", "1", "--values", str(values)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise GuardError(f"the {label} run failed (exit {proc.returncode}):\n{tail}")


def per_round(path: Path) -> dict[str, list[float]]:
    """Benchmark name -> its mean value (seconds per operation) in each run, in the order of the rounds."""
    import pyperf

    found: dict[str, list[float]] = {}
    for bench in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks():
        found[bench.get_name()] = [statistics.fmean(run.values) for run in bench.get_runs() if run.values]
    return found


def side_facts(side_files: list[Path]) -> tuple[dict[tuple[str, str], list[float]], dict[str, set[str]]]:
    """(label, benchmark) -> fairness of each value; label -> the facts its runs noted (which forkpool...)."""
    fairness: dict[tuple[str, str], list[float]] = {}
    facts: dict[str, set[str]] = {}
    for path in side_files:
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if "fairness" in row:
                    fairness.setdefault((row["label"], row["bench"]), []).append(row["fairness"])
                else:
                    label = row.pop("label")
                    facts.setdefault(label, set()).update(f"{k}={v}" for k, v in row.items())
    return fairness, facts


def _ratio_text(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{statistics.median(values):.3f}"
    interval = median_interval(values)
    if interval:
        text += f" ({interval[0]:.3f}-{interval[1]:.3f}; min-max {min(values):.2f}-{max(values):.2f})"
    return text


def _us(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e6:,.2f} µs" if values else "-"


def report(
    base: dict[str, list[float]], head: dict[str, list[float]], fair: dict[tuple[str, str], list[float]]
) -> tuple[str, list[dict[str, Any]]]:
    """The figures as text, and as rows (for the JSON); every ratio paired round by round."""
    lines: list[str] = []
    rows: list[dict[str, Any]] = []

    def paired(a: list[float], b: list[float]) -> list[float]:
        return [x / y for x, y in zip(a, b, strict=False) if y]

    lines.append("head / base, per benchmark (paired by round: median (90 % interval; min-max)); below 1: head faster")
    for bench in BENCHES:
        name = bench.name
        change = paired(head.get(name, []), base.get(name, []))
        kind = "ours" if bench.contender.startswith("ours") else "peer, A/A control"
        lines.append(
            f"  {name:<32} base {_us(base.get(name, [])):>12}  head {_us(head.get(name, [])):>12}"
            f"  head/base {_ratio_text(change)}  [{kind}]"
        )
        rows.append({"benchmark": name, "kind": kind, "head_over_base": change})
    lines.append("")
    lines.append("ours / peer at each commit (cost ratio, paired by round; below 1: ours cheaper)")
    for figure, ours, peer in FIGURES:
        lines.append(f"  {figure}")
        row: dict[str, Any] = {"figure": figure, "ours": ours, "peer": peer}
        for label, found in (("base", base), ("head", head)):
            ratio = paired(found.get(ours, []), found.get(peer, []))
            row[label] = ratio
            fair_text = ""
            if (label, ours) in fair:
                fair_text = (
                    f"; fairness ours {statistics.median(fair[(label, ours)]):.2f}, "
                    f"peer {statistics.median(fair.get((label, peer), [0.0])):.2f}"
                )
            lines.append(f"    {label}: {_ratio_text(ratio)}{fair_text}")
        # ours' change with the machine's drift divided out: (ours / peer) at head over the same at base
        drift_free = paired(row["head"], row["base"])
        row["head_over_base_per_peer"] = drift_free
        lines.append(f"    head / base of ours / peer: {_ratio_text(drift_free)}")
        rows.append(row)
    return "\n".join(lines), rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.guard",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", help="commit, tag or branch to compare against (default: last tag, else main~5)")
    parser.add_argument("--head", help="commit to measure (default: this working tree, uncommitted changes included)")
    parser.add_argument("--rounds", type=int, help=f"rounds, each running both commits (default {DEFAULT_ROUNDS})")
    parser.add_argument("--quick", action="store_true", help="one round, one process per commit: a smoke test")
    parser.add_argument("--seed", type=int, help="seed of the order of commits in each round (default: random)")
    parser.add_argument(
        "--fail-above",
        type=float,
        metavar="RATIO",
        help="exit 1 if ours' head/base interval lies wholly above RATIO for any benchmark (e.g. 1.10)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except GuardError as exc:
        print(f"benchmarks.guard: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    began = time.monotonic()
    load_start = load_average()

    def progress(message: str) -> None:
        print(f"[guard {time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    base_ref = args.base or default_base()
    base_sha = resolve(base_ref)
    head_sha = resolve(args.head) if args.head else None
    with ExitStack() as stack:
        trees = Worktrees(stack)
        base_lib = library_dir(trees.add(base_sha, "base"), f"base {base_ref}")
        if head_sha:
            head_lib = library_dir(trees.add(head_sha, "head"), f"head {args.head}")
            head_text = f"{args.head} ({head_sha[:10]})"
        else:
            head_lib = library_dir(ROOT, "this working tree")
            dirty = git("status", "--porcelain", "--", str(head_lib / "forkpool"))
            head_text = f"this working tree at {git('rev-parse', '--short', 'HEAD')}" + (
                f", shared/ changed: {len(dirty.splitlines())} file(s)" if dirty else ", shared/ clean"
            )
        dsn = os.environ.get("DATABASE_URL") or None
        embedded = dsn is None
        if embedded:
            from harness.services import EmbeddedPostgres

            progress("starting an embedded PostgreSQL")
            dsn = stack.enter_context(EmbeddedPostgres(max_connections=100)).url
        meter = CpuMeter(postmaster_pid(dsn) if embedded else None, reaped=True)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="forkpool-guard-runs-")))
        files = {"base": work / "base.json", "head": work / "head.json"}
        libraries = {"base": base_lib, "head": head_lib}
        rng = random.Random(args.seed)
        side_files: list[Path] = []
        progress(f"base {base_ref} ({base_sha[:10]}) against head: {head_text}; {args.rounds} round(s)")
        for number in range(args.rounds):
            # --quick: one process per commit. Else each benchmark at both commits back to back, in a
            # shuffled order of benchmarks and of commits: the two sides of a ratio seconds apart.
            names = [None] if args.quick else [b.name for b in BENCHES]
            rng.shuffle(names)
            for name in names:
                order = ["base", "head"]
                rng.shuffle(order)
                for label in order:
                    side = work / f"side_{label}_{number}.jsonl"
                    if side not in side_files:
                        side_files.append(side)
                    run_commit(label, libraries[label], dsn, files[label], side, args.quick, VALUES, name)
            progress(f"round {number + 1}/{args.rounds} done (load {load_average()})")
        cpu_use = meter.result()
        base, head = per_round(files["base"]), per_round(files["head"])
        fairness, facts = side_facts(side_files)
        text, rows = report(base, head, fairness)
        text += "\n\nwhat each commit's runs used:\n" + "\n".join(
            f"  {label}: {'; '.join(sorted(facts.get(label, ())))}" for label in ("base", "head")
        )
        compare = subprocess.run(
            [sys.executable, "-m", "pyperf", "compare_to", str(files["base"]), str(files["head"]), "--table"],
            capture_output=True,
            text=True,
        )
        header = (
            f"# guard: base {base_ref} ({base_sha[:10]}) / head {head_text}\n"
            f"{args.rounds} round(s), seed {args.seed}, {time.monotonic() - began:.0f} s"
            + (", --quick: figures meaningless" if args.quick else "")
            + f"\n{run_context_line(load_start, cpu_use, quick=args.quick)}\n"
            "The machine may be shared: absolute times are noisy, only the paired, interleaved ratios count."
        )
        full = f"{header}\n\n{text}\n\npyperf compare_to base.json head.json --table\n{compare.stdout}{compare.stderr}"
        print(full)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = started_at.strftime("%Y-%m-%dT%H%M%SZ")
        (args.out / f"guard_{stamp}.txt").write_text(full)
        for label, path in files.items():
            shutil.copy(path, args.out / f"guard_{stamp}_{label}.json")
        with open(args.out / f"guard_{stamp}_side.jsonl", "w") as side_out:  # fairness and facts, per value
            for side in side_files:
                if side.exists():
                    side_out.write(side.read_text())
        (args.out / f"guard_{stamp}_figures.json").write_text(
            json.dumps({"base": base_sha, "head": head_sha or "worktree", "rows": rows}, indent=1)
        )
        print(f"results: {args.out / f'guard_{stamp}.txt'} (+ _base.json, _head.json: pyperf files; _side.jsonl)")
    if args.fail_above is not None:
        for row in rows:
            if row.get("kind") == "ours" and len(row["head_over_base"]) >= 2:
                low, _ = median_interval(row["head_over_base"]) or (0.0, 0.0)
                if low > args.fail_above:
                    print(f"benchmarks.guard: {row['benchmark']} slower at head: interval above {args.fail_above}")
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
