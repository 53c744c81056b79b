"""What the pool's upkeep costs, and whether forking a process that holds pools warns (Python 3.12+).

    python -m benchmarks.maintainer_cost                  # about half a minute per Python
    python -m benchmarks.maintainer_cost --python ~/.pyenv/versions/3.12.1/bin/python
    python -m benchmarks.maintainer_cost --library /tmp/old/shared --rounds 2   # against an older forkpool too

Starts an embedded PostgreSQL (or uses DATABASE_URL), then runs a probe in one process per
Python named (default: this one, plus any .venv-3.* next to the project): each probe opens
POOLS pools of 2 connections and prints

- forks that warned "multi-threaded, use of fork() may lead to deadlocks" (of FORKS forks);
- what os.fork() takes in the parent (at-fork hooks + fork), with the pools open, median;
- of which: ending forkpool's threads before the fork, and starting them again (fork_quiet), medians;
- checkout + return of one connection (getconn/putconn, 1 thread), best of 15 x 20,000;
- CPU the process spends while its pools sit idle for IDLE seconds (upkeep only);
- threads alive while the pools sit idle.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import timeit
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOLS = 3
FORKS = 20
IDLE = 5.0
REPEATS = 15  # timeit repeats of 20,000 checkout + return cycles


def probe(dsn: str) -> dict[str, float]:
    import forkpool
    from forkpool.settings import build_settings

    settings = build_settings(dsn=dsn, min_size=2, max_size=2)
    pools = [forkpool.Pool(settings, name=f"probe{i}") for i in range(POOLS)]
    for pool in pools:
        pool.open(wait=True, timeout=30)
    with pools[0].connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")

    warned = 0
    fork_times = []
    for _ in range(FORKS):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            fork_times.append(time.perf_counter() - started)  # the parent's side: hooks + fork()
            os.waitpid(pid, 0)
        warned += any("multi-threaded" in str(w.message) for w in caught)

    end_us, restart_us = _end_and_restart()

    pool = pools[0]
    cycle = timeit.Timer(lambda: pool.putconn(pool.getconn()))
    best = min(cycle.repeat(REPEATS, 20000)) / 20000

    threads = threading.active_count()
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(IDLE)  # the measurement: what the process spends doing nothing but upkeep
    after = resource.getrusage(resource.RUSAGE_SELF)
    idle_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for pool in pools:
        pool.close()
    return {
        "python": float(f"{sys.version_info.major}.{sys.version_info.minor:02d}"),
        "warned": warned,
        "forks": FORKS,
        "fork_us": sorted(fork_times)[len(fork_times) // 2] * 1e6,
        "cycle_us": best * 1e6,
        "idle_cpu_ms_per_s": idle_cpu / IDLE * 1000,
        "threads_idle": threads,
        "end_us": end_us,
        "restart_us": restart_us,
    }


def _end_and_restart() -> tuple[float, float]:
    """Median cost of ending forkpool's threads before a fork and starting them again (0, 0: an older forkpool)."""
    from forkpool import _pool as maintenance

    if not hasattr(maintenance.Maintainer, "pause_for_fork"):
        return 0.0, 0.0  # a forkpool from before fork_quiet
    from forkpool import _process as fork_quiet

    ends, restarts = [], []
    for _ in range(20):
        started = time.perf_counter()
        fork_quiet.end_threads()
        ended = time.perf_counter()
        fork_quiet.home().quiet_forking = False
        fork_quiet.resume_threads()
        ends.append(ended - started)
        restarts.append(time.perf_counter() - ended)
        time.sleep(0.02)  # let the restarted threads settle into their wait, as between real forks
    return sorted(ends)[10] * 1e6, sorted(restarts)[10] * 1e6


def pythons(chosen: list[str]) -> list[str]:
    if chosen:
        return chosen
    found = [sys.executable]
    found += [str(p / "bin" / "python") for p in sorted(ROOT.glob(".venv-3.*")) if (p / "bin" / "python").exists()]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", default=[], help="a Python to probe (repeatable)")
    parser.add_argument(
        "--library", metavar="DIR", help="also probe the forkpool package under DIR (e.g. an older checkout's shared/)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="probes per Python and library, interleaved")
    parser.add_argument("--quick", action="store_true", help="fewer forks, a shorter idle (a smoke run)")
    parser.add_argument("--probe", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("MAINTAINER_COST_QUICK"):
        os.environ["MAINTAINER_COST_QUICK"] = "1"  # the probes read it too
        globals().update(FORKS=4, IDLE=0.5, REPEATS=3)
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return 0

    from harness.services import services

    libraries = [("this", None)] + ([("other", args.library)] if args.library else [])
    with services(need_redis=False) as found:
        print(f"{POOLS} pools of 2, {FORKS} forks, {IDLE:.0f} s idle; 'other': {args.library}")
        print(
            f"{'python':>7} {'forkpool':>8} {'warned':>8} {'fork µs':>8} {'end µs':>7} {'restart µs':>10} "
            f"{'get+put µs':>11} {'idle CPU ms/s':>14} {'threads':>8}"
        )
        for python in pythons(args.python):
            for _ in range(args.rounds):
                for label, library in libraries:
                    path = f"{library}{os.pathsep}{ROOT}" if library else str(ROOT)
                    env = {**os.environ, "PYTHONPATH": path}
                    out = subprocess.run(
                        [python, "-m", "benchmarks.maintainer_cost", "--probe", found.database_url],
                        capture_output=True,
                        text=True,
                        env=env,
                        cwd=ROOT,
                        timeout=300,
                    )
                    if out.returncode:
                        print(f"{python}: probe failed: {out.stderr.strip().splitlines()[-1:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(
                        f"{r['python']:>7.2f} {label:>8} {int(r['warned']):>4}/{int(r['forks']):<3} {r['fork_us']:>8.0f} "
                        f"{r['end_us']:>7.0f} {r['restart_us']:>10.0f} "
                        f"{r['cycle_us']:>11.2f} {r['idle_cpu_ms_per_s']:>14.3f} {int(r['threads_idle']):>8}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
