"""What a `forkpool doctor` refresh costs on a deployment of 20 processes.

    .venv/bin/python -m benchmarks.doctor_cost [--refreshes 30]

Starts embedded PostgreSQL and Redis and the suite with 9 Gunicorn workers and
9 Celery pool processes (2 masters + 18 workers = 20 processes, pools of 2),
then times doctor's refresh (find the trees, the servers, every socket, the
sessions, the findings: what `--watch` repeats) in this process, and the whole
command (`forkpool doctor --json`, interpreter start included) as a user runs
it. Prints figures, and the machine's load average before and after (other
work on the machine slows every refresh); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

from forkpool.doctor.discovery import find_servers, find_trees
from forkpool.doctor.findings import Expectations, evaluate
from forkpool.doctor.survey import survey
from harness.processes import SuitePlan, start_suite
from harness.services import EmbeddedPostgres, EmbeddedRedis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=30)
    args = parser.parse_args()
    started_at, load_before = datetime.now(UTC), os.getloadavg()
    with EmbeddedPostgres(max_connections=100) as pg, EmbeddedRedis() as rd, tempfile.TemporaryDirectory() as tmp:
        plan = SuitePlan(
            database_url=pg.url,
            redis_url=rd.url,
            suite_id=f"cost{uuid.uuid4().hex[:6]}",
            web_workers=9,
            worker_concurrency=9,
            pool_size=2,
        )
        suite = start_suite(plan, Path(tmp) / "logs")
        try:
            masters = [suite.web.pid, suite.worker.pid]
            expect = Expectations({"*": 2})
            refresh_ms, cpu_ms, trees_ms, servers_ms, survey_ms = [], [], [], [], []
            findings: list = []
            processes: list = []
            for _ in range(args.refreshes):
                # CPU time beside wall time: on a busy machine the wall time is mostly waiting for a core.
                started, cpu_started = time.perf_counter(), time.process_time()
                processes = find_trees(masters)
                trees_ms.append((time.perf_counter() - started) * 1000)
                servers_started = time.perf_counter()
                servers = find_servers(pg.url, rd.url)
                servers_ms.append((time.perf_counter() - servers_started) * 1000)
                found = survey(processes, servers, pg.url, rd.url)
                findings = evaluate(found, expect)
                refresh_ms.append((time.perf_counter() - started) * 1000)
                cpu_ms.append((time.process_time() - cpu_started) * 1000)
                survey_ms.append(found.took_ms)
            host_processes = len(psutil.pids())
            command_ms = []
            for _ in range(5):
                started = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "forkpool",
                        "doctor",
                        "--json",
                        "--pid",
                        str(masters[0]),
                        "--pid",
                        str(masters[1]),
                        "--dsn",
                        pg.url,
                        "--redis-url",
                        rd.url,
                        "--pool-size",
                        "2",
                    ],
                    capture_output=True,
                    check=False,
                    timeout=60,
                )
                command_ms.append((time.perf_counter() - started) * 1000)
        finally:
            suite.stop()
    load_after = os.getloadavg()
    print(
        f"run at {started_at:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores; load average (1, 5, 15 min) "
        f"before {_load(load_before)}, after {_load(load_after)}"
    )
    print(f"processes examined: {len(processes)}; error findings: {sum(f.severity == 'error' for f in findings)}")
    print(
        f"refresh (trees + servers + sockets + sessions + findings): median {statistics.median(refresh_ms):.1f} ms, "
        f"max {max(refresh_ms):.1f} ms over {len(refresh_ms)}"
    )
    print(
        f"  of which: trees {statistics.median(trees_ms):.1f} ms, servers (every process on the host: "
        f"{host_processes}) {statistics.median(servers_ms):.1f} ms, sockets and sessions (survey) "
        f"{statistics.median(survey_ms):.1f} ms (medians)"
    )
    print(f"  doctor's own CPU time per refresh: median {statistics.median(cpu_ms):.1f} ms")
    print(
        f"whole command, interpreter start included: median {statistics.median(command_ms):.0f} ms over "
        f"{len(command_ms)}"
    )
    return 0


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


if __name__ == "__main__":
    sys.exit(main())
