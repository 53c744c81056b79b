"""What a fork costs a child: fork to first query, its memory, and its idle CPU, pool against scratch.

    python -m benchmarks.fork_cost                   # ~2 min: 12 rounds, 5 s idle windows
    python -m benchmarks.fork_cost --base 1587244    # also a parent on an older forkpool (git worktree)
    python -m benchmarks.fork_cost --quick           # seconds: does it still run? (figures meaningless)

Parents, each its own long-lived process on the same PostgreSQL (DATABASE_URL, else an embedded one):

    pool       forkpool's default pool, 4 connections (its default size), opened full in the parent,
               as a process that used its pool before forking; the child's first query is
               ``forkpool.get_pool().connection()``: the at-fork hooks let the inherited
               connections go, the child's pool connects (its maintainer fills the rest meanwhile)
    pool1      the same with a pool of 1: no maintainer connecting beside the first query
    pool@base  as pool, on the forkpool of --base (checked out into a temporary git worktree)
    scratch    forkpool not imported; the child's first query is ``psycopg2.connect()`` + SELECT 1

Each round forks one child from every parent (shuffled order). A child reports the time from
the parent's ``os.fork()`` call to its first query's result (CLOCK_MONOTONIC on both sides), and
its RSS and USS (psutil) right after that query; then every child and parent sits idle while
their CPU time (the threads' /proc schedstat, in nanoseconds) is read over --idle seconds (the
children's pools have had a second to fill): a pool's maintainer thread is all that runs there. Medians over rounds; the pool's memory is a pool
child's USS minus a scratch child's. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .machine import CpuMeter, load_average, postmaster_pid, run_context_line, save_text_result

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SETTLE = 1.0  # seconds for the children's pools to fill before the idle window


# -- inside a parent ------------------------------------------------------------------------------------


def parent(kind: str, dsn: str, library: str | None, size: int) -> None:
    """Serve the orchestrator on stdin/stdout: 'fork' -> a child's JSON line; 'release' ends the children."""
    import psutil

    if library:
        sys.path.insert(0, library)
    held: list[Any] = []  # the scratch child keeps its connection, as a pool child keeps its pool
    if kind == "scratch":
        import psycopg2

        def first_query() -> None:
            conn = psycopg2.connect(dsn, application_name="fork_cost:scratch")
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchone()
            conn.commit()
            held.append(conn)

    else:
        import forkpool

        if library and not os.path.realpath(forkpool.__file__).startswith(os.path.realpath(library)):
            raise SystemExit(f"fork_cost: forkpool came from {forkpool.__file__}, not from {library}")
        forkpool.configure(dsn=dsn, min_size=size, max_size=size)
        pool = forkpool.get_pool()
        pool.open(wait=True, timeout=30)
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

        def first_query() -> None:
            with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()

    me = psutil.Process()
    print(json.dumps({"ready": True, "rss": me.memory_info().rss, "pid": os.getpid()}), flush=True)
    children: list[tuple[int, int]] = []  # (pid, write end of its release pipe)
    for line in sys.stdin:
        command = line.strip()
        if command == "fork":
            report_r, report_w = os.pipe()
            release_r, release_w = os.pipe()
            started = time.monotonic_ns()
            pid = os.fork()
            if pid == 0:
                os.close(report_r)
                os.close(release_w)
                code = 0
                try:
                    first_query()
                    done = time.monotonic_ns()
                    info = psutil.Process().memory_full_info()
                    row = {"pid": os.getpid(), "first_query_ms": (done - started) / 1e6, "rss": info.rss}
                    row["uss"] = info.uss
                    os.write(report_w, json.dumps(row).encode())
                    os.close(report_w)
                    os.read(release_r, 1)  # idle until released: the orchestrator reads our CPU meanwhile
                except BaseException as exc:  # noqa: BLE001 - a child reports any failure and leaves
                    os.write(report_w, json.dumps({"error": repr(exc)}).encode())
                    code = 1
                os._exit(code)
            os.close(report_w)
            os.close(release_r)
            data = b""
            while chunk := os.read(report_r, 65536):
                data += chunk
            os.close(report_r)
            children.append((pid, release_w))
            print(data.decode() or json.dumps({"error": "child said nothing"}), flush=True)
        elif command == "release":
            for pid, release_w in children:
                os.close(release_w)
                os.waitpid(pid, 0)
            children.clear()
            print(json.dumps({"released": True}), flush=True)
        elif command == "quit":
            break


# -- the orchestrator -------------------------------------------------------------------------------------


class Parent:
    def __init__(self, kind: str, dsn: str, library: Path | None, stack: ExitStack) -> None:
        size = "1" if kind == "pool1" else "4"
        what = "scratch" if kind == "scratch" else "pool"
        cmd = [sys.executable, "-m", "benchmarks.fork_cost", "--parent", what, "--size", size, "--dsn", dsn]
        if library:
            cmd += ["--library", str(library)]
        self.kind = kind
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stack.callback(self.stop)
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"fork_cost: the {self.kind} parent ended (exit {self.proc.wait()})")
        row: dict[str, Any] = json.loads(line)
        if "error" in row:
            raise SystemExit(f"fork_cost: a {self.kind} child failed: {row['error']}")
        return row

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("release")
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - already broken: end it
                self.proc.kill()


def cpu_seconds(pid: int) -> tuple[float, int]:
    """(seconds on a CPU, threads) of a live process: the sum of its threads' schedstat (nanoseconds;
    /proc's user and system times count 10 ms ticks, too coarse for an idle maintainer), else psutil's."""
    import psutil

    proc = psutil.Process(pid)
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        ran = sum(int((task / "schedstat").read_text().split()[0]) for task in tasks)
        return ran / 1e9, len(tasks)
    except (OSError, ValueError, IndexError):
        times = proc.cpu_times()
        return times.user + times.system, proc.num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fork_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="children forked from each parent (default 12)")
    parser.add_argument("--idle", type=float, help="seconds of each idle window (default 5)")
    parser.add_argument("--base", help="also a parent on this commit's forkpool (a temporary git worktree)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 0.5 s idle: a smoke run")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--parent", choices=("pool", "scratch"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parent:
        parent(args.parent, args.dsn, args.library, args.size)
        return 0
    rounds = args.rounds or (2 if args.quick else 12)
    idle = args.idle or (0.5 if args.quick else 5.0)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    started_at = datetime.now(UTC)
    load_start = load_average()

    from .guard import GuardError, Worktrees, library_dir, resolve

    with ExitStack() as stack:
        here = library_dir(ROOT, "this working tree")
        kinds: dict[str, Path | None] = {"pool": here, "pool1": here, "scratch": None}
        if args.base:
            try:
                kinds["pool@base"] = library_dir(Worktrees(stack).add(resolve(args.base), "base"), args.base)
            except GuardError as exc:
                print(f"benchmarks.fork_cost: {exc}", file=sys.stderr)
                return 2
        dsn = os.environ.get("DATABASE_URL") or None
        embedded = dsn is None
        if embedded:
            from harness.services import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres(max_connections=100)).url
        parents = {kind: Parent(kind, dsn, library, stack) for kind, library in kinds.items()}
        helpers = [p.hello["pid"] for p in parents.values()]
        meter = CpuMeter(postmaster_pid(dsn) if embedded else None, reaped=True, helpers=helpers)
        rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in parents}
        for _ in range(rounds):
            order = list(parents)
            rng.shuffle(order)
            children = {kind: parents[kind].ask("fork") for kind in order}
            time.sleep(SETTLE)  # a benchmark, not a test: the children's pools fill, then the idle window
            pids = {kind: [child["pid"], parents[kind].hello["pid"]] for kind, child in children.items()}
            before = {kind: [cpu_seconds(pid) for pid in found] for kind, found in pids.items()}
            time.sleep(idle)
            for kind, found in pids.items():
                after = [cpu_seconds(pid) for pid in found]
                (c0, _), (p0, _) = before[kind]
                (c1, threads), (p1, parent_threads) = after
                child = children[kind]
                child.update(
                    idle_cpu_ms_per_s=(c1 - c0) / idle * 1000,
                    parent_idle_cpu_ms_per_s=(p1 - p0) / idle * 1000,
                    threads=threads,
                    parent_threads=parent_threads,
                )
                rows[kind].append(child)
            for kind in order:
                parents[kind].ask("release")
        cpu_use = meter.result()
        parent_rss = {kind: p.hello["rss"] for kind, p in parents.items()}

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind])

    lines = [
        f"# fork_cost: {rounds} rounds, {idle:g} s idle windows, seed {seed}"
        + (f", base {args.base}" if args.base else ""),
        run_context_line(load_start, cpu_use, quick=args.quick),
        "The machine may be shared: absolute times are noisy; medians over rounds.",
        "",
        f"{'parent':<10} {'fork->1st query ms':>19} {'min-max':>14} {'child RSS MiB':>14} {'child USS MiB':>14}"
        f" {'child idle CPU ms/s':>20} {'threads':>8} {'parent idle CPU ms/s':>21} {'parent RSS MiB':>15}",
    ]
    for kind in rows:
        times = [r["first_query_ms"] for r in rows[kind]]
        lines.append(
            f"{kind:<10} {statistics.median(times):>19.2f} {min(times):>6.2f}-{max(times):<7.2f}"
            f" {med(kind, 'rss') / 2**20:>14.1f} {med(kind, 'uss') / 2**20:>14.2f}"
            f" {med(kind, 'idle_cpu_ms_per_s'):>20.3f} {med(kind, 'threads'):>8.0f}"
            f" {med(kind, 'parent_idle_cpu_ms_per_s'):>21.3f} {parent_rss[kind] / 2**20:>15.1f}"
        )
    pool_over = [a["first_query_ms"] / b["first_query_ms"] for a, b in zip(rows["pool"], rows["scratch"], strict=True)]
    lines += [
        "",
        f"pool / scratch, fork to first query, paired by round: median {statistics.median(pool_over):.2f} "
        f"(min-max {min(pool_over):.2f}-{max(pool_over):.2f})",
        f"the pool's memory in a child (pool USS - scratch USS, medians): "
        f"{(med('pool', 'uss') - med('scratch', 'uss')) / 2**20:+.2f} MiB",
    ]
    if "pool@base" in rows:
        over = [a["first_query_ms"] / b["first_query_ms"] for a, b in zip(rows["pool"], rows["pool@base"], strict=True)]
        lines.append(
            f"pool (this tree) / pool@base, fork to first query, paired: median {statistics.median(over):.2f} "
            f"(min-max {min(over):.2f}-{max(over):.2f})"
        )
    save_text_result(args.out, "fork_cost", started_at, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
