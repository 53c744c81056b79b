"""Reconnect storm: many processes lose the server together and get it back.

`processes` plain Python processes (no web framework: what matters is each one's pool and its
maintainer) each hold a fixed pool of `pool` connections through the fault proxy. The proxy goes
down (every connection reset, new ones refused) for `outage` seconds, then up. Measured: the
connection attempts per second the server sees (the proxy's accepts), the time until every pool
is full again (the server's own count), and whether the server ever refused for lack of slots.
Run twice: with the pool's jittered backoff, and with the jitter set to 0 in these processes
only (forkpool._base.BACKOFF_JITTER), to show what lockstep retries would do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from .fault_proxy import FaultProxy
from .faults import SERVER_NETWORK_SETTINGS, FaultResult
from .model import Check
from .sampler import Sampler
from .services import EmbeddedPostgres

ROLE = "storm"
SLOT_ERRORS = ("too many clients", "remaining connection slots")


def _peaks(times: list[float], start: float, end: float) -> dict[str, float]:
    """Attempts in the busiest 100 ms and the busiest 1 s between start and end, and the mean rate."""
    inside = sorted(t for t in times if start <= t < end)
    best_100ms = best_1s = 0
    j = k = 0
    for i, t in enumerate(inside):
        while inside[j] < t - 0.1:
            j += 1
        while inside[k] < t - 1.0:
            k += 1
        best_100ms, best_1s = max(best_100ms, i - j + 1), max(best_1s, i - k + 1)
    return {
        "attempts": len(inside),
        "busiest_100ms": best_100ms,
        "busiest_1s": best_1s,
        "mean_per_s": round(len(inside) / max(end - start, 1e-9), 1),
    }


def _one_run(pg: EmbeddedPostgres, proxy: FaultProxy, processes: int, pool: int, outage: float, jitter: float) -> dict:
    suite_id = f"storm{uuid.uuid4().hex[:6]}"
    expected = processes * pool
    sampler = Sampler(pg.url, suite_id).start()
    env = {
        **os.environ,
        "FORKPOOL_NAME": suite_id,
        "PROCESS_ROLE": ROLE,
        "STORM_DSN": proxy.url(pg.url),
        "STORM_POOL": str(pool),
        "STORM_JITTER": str(jitter),
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "harness.storm"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        _wait_total(sampler, expected, 30)
        log_offset = pg.log_path.stat().st_size
        down = time.monotonic()
        proxy.down()
        time.sleep(outage)
        proxy.up()
        up = time.monotonic()
        full = _wait_total(sampler, expected, 60, after=sampler.now())
        full_after = round(time.monotonic() - up, 2) if full else None
        stats = [_ask(child) for child in children]
    finally:
        for child in children:
            _quit(child)
        sampler.stop()
    server_log = pg.log_path.read_text(errors="replace")[log_offset:]
    refusals = sum(server_log.count(text) for text in SLOT_ERRORS)
    peak = max((s.total for s in sampler.samples), default=0)
    return {
        "backoff_jitter": jitter,
        "outage_s": round(up - down, 2),
        "all_pools_full_after_s": full_after,
        "after_return": _peaks(proxy.counters.accepted_at, up, up + (full_after or 30) + 1),
        "refused_attempts_while_down": sum(s["connect_errors"] for s in stats),
        "server_refusals_for_slots": refusals,
        "server_peak_sessions": peak,
        "ceiling": expected,
    }


def _wait_total(sampler: Sampler, expected: int, timeout: float, after: float = 0.0) -> bool | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = sampler.latest()
        if latest is not None and latest.t > after and latest.total == expected:
            return True
        time.sleep(0.02)
    return None


def _ask(child: subprocess.Popen) -> dict:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("stats\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def _quit(child: subprocess.Popen) -> None:
    try:
        if child.stdin is not None:
            child.stdin.write("exit\n")
            child.stdin.flush()
        child.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        child.kill()
        child.wait(5)


def reconnect_storm(processes: int = 16, pool: int = 4, outage: float = 8.0) -> FaultResult:
    """`processes` x `pool` connections lose the server together for `outage` s; with and without jitter."""
    result = FaultResult("reconnect-storm")
    # Room for every pool and the harness, nothing more: a lingering session would be refused for.
    with EmbeddedPostgres(max_connections=processes * pool + 8, settings=SERVER_NETWORK_SETTINGS) as pg:
        runs = []
        for jitter in (0.2, 0.0):
            with FaultProxy(pg.host, pg.port, name="storm-proxy") as proxy:
                runs.append(_one_run(pg, proxy, processes, pool, outage, jitter))
    result.figures = {"processes": processes, "pool": pool, "with_jitter": runs[0], "without_jitter": runs[1]}
    result.checks = [
        Check(
            1,
            "every pool full again after the server returns, both ways",
            all(r["all_pools_full_after_s"] is not None for r in runs),
            f"{[r['all_pools_full_after_s'] for r in runs]} s (with, without jitter)",
        ),
        Check(
            2,
            "the server never refused for lack of slots during recovery",
            all(r["server_refusals_for_slots"] == 0 for r in runs),
            f"{[r['server_refusals_for_slots'] for r in runs]} refusals (with, without jitter)",
        ),
        Check(
            3,
            "the server never saw more than the ceiling",
            all(r["server_peak_sessions"] <= r["ceiling"] for r in runs),
            f"peaks {[r['server_peak_sessions'] for r in runs]} of {processes * pool}",
        ),
    ]
    return result


def _child() -> int:
    """One storm process: a fixed pool; answers `stats` and `exit` on stdin."""
    from forkpool import Pool
    from forkpool import _base as maintenance
    from forkpool.settings import build_settings

    maintenance.BACKOFF_JITTER = float(os.environ["STORM_JITTER"])
    size = int(os.environ["STORM_POOL"])
    pool = Pool(build_settings(dsn=os.environ["STORM_DSN"], min_size=size, max_size=size, connect_timeout=2), "storm")
    pool.open(wait=True, timeout=30)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(pool.stats()), flush=True)
        else:
            break
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
