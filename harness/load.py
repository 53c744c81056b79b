"""HTTP load through Gunicorn: Locust, headless, in a subprocess, read back as a LoadResult.

Locust monkey-patches the interpreter with gevent on import, so the harness
never imports it: it runs ``python -m locust -f harness/locustfile.py
--headless ...`` in its own session (dying with the harness) and reads what
that process leaves in ``workdir``:

- ``load-summary.json``: written by the locustfile when Locust quits: status
  counts, the jobs answered 202 with their ``record_event`` keys, the items
  answered 201 (name, when), the last
  ``GET /pool`` body per web pid, and Locust's final stats and failures;
- ``locust_stats.csv`` / ``locust_failures.csv`` (``--csv``): Locust rewrites
  these once a second, so they can miss the last second; they are the
  fallback when the summary is missing (a SIGKILLed Locust), and a missing
  stats file means Locust never ran its test;
- ``locust.log``: Locust's stdout and stderr (the end-of-run tables, warnings).

Counting: every request is in ``requests``; ``failures`` is Locust's failure
count, which *includes* 503s (the pool's designed answer under overload),
so look at ``status_counts`` to tell them apart: ``"503"`` for pool timeouts,
``"500"`` (and other 5xx) for real server errors, ``"error"`` for requests
that got no response at all. Locust exiting with 1 because some request failed
is a normal end; a crash, a missing stats file or a run that overstays its
deadline raises ``RuntimeError`` (``LoadError``) with the end of Locust's output.

Use ``run_locust(...)`` to run load to completion, or ``LocustRun`` to run it
in the background while the harness samples or kills workers::

    run = LocustRun(url, users=20, duration=30, suite_id=sid, workdir=out).start()
    ...                                  # sample pg_stat_activity, recycle workers
    result = run.wait()                  # LoadResult once Locust ends by itself
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._procs import spawn
from .model import LoadResult
from .processes import package_dir

log = logging.getLogger("forkpool.harness")

SUMMARY_NAME = "load-summary.json"
CSV_PREFIX = "locust"
LOG_NAME = "locust.log"
DEADLINE_GRACE = 60.0  # seconds past `duration` before a run counts as hung
STOP_TIMEOUT = 5  # Locust's --stop-timeout: how long users may finish their task
MAX_ERRORS = 20
ERROR_CHARS = 200


class LoadError(RuntimeError):
    """Locust crashed, hung, or left no statistics to read."""


def locustfile_path() -> Path:
    """harness/locustfile.py, found without importing the harness's siblings' code."""
    return package_dir("harness") / "locustfile.py"


class LocustRun:
    """One headless Locust process against `host`.

    ``start()`` launches it and returns at once; ``wait()`` blocks until it ends
    and returns its ``LoadResult``; ``stop()`` ends it early (SIGTERM: Locust
    stops its users, writes its statistics and exits; SIGKILL to the whole
    process group if it has not after ``grace`` seconds). After ``stop()``,
    ``wait()`` returns the partial result of what ran (``stopped`` is True), or
    raises ``LoadError`` if Locust was killed before it wrote anything usable.
    If Locust is still running ``duration + stop_timeout + 60`` s after it
    started (or after ``wait(timeout)``'s timeout), ``wait()`` stops it and
    raises ``LoadError``: a run that overstays is a bug, not load. Poll with
    ``is_running()`` instead of short waits.

    Start it from a thread that outlives the run (the main thread, usually):
    like the suite's servers, Locust gets SIGTERM when the thread that started
    it exits (PDEATHSIG), so that it never outlives the harness.
    """

    def __init__(
        self,
        host: str,
        *,
        users: int,
        duration: float,
        suite_id: str,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        spawn_rate: float | None = None,
        locustfile: Path | None = None,
        stop_timeout: int = STOP_TIMEOUT,
        deadline_grace: float = DEADLINE_GRACE,
    ) -> None:
        if users < 1:
            raise ValueError("users must be at least 1")
        if duration <= 0:
            raise ValueError("duration must be positive")
        self.host, self.users, self.duration = host.rstrip("/"), users, duration
        self.suite_id, self.workdir = suite_id, Path(workdir)
        self.spawn_rate = spawn_rate or users
        self.locustfile = Path(locustfile) if locustfile else locustfile_path()
        self.stop_timeout, self.deadline_grace = stop_timeout, deadline_grace
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None  # time.monotonic()
        self.ended_at: float | None = None
        self.stopped = False  # stop() was called before Locust ended by itself
        self._group_reaped = False
        self._result: LoadResult | None = None

    # -- files ----------------------------------------------------------------

    @property
    def summary_path(self) -> Path:
        return self.workdir / SUMMARY_NAME

    @property
    def stats_path(self) -> Path:
        return self.workdir / f"{CSV_PREFIX}_stats.csv"

    @property
    def failures_path(self) -> Path:
        return self.workdir / f"{CSV_PREFIX}_failures.csv"

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(self.locustfile),
            "--headless",
            "-u",
            str(self.users),
            "-r",
            f"{self.spawn_rate:g}",
            "-t",
            f"{max(1, round(self.duration))}s",
            "--host",
            self.host,
            "--csv",
            str(self.workdir / CSV_PREFIX),
            "--only-summary",
            "--stop-timeout",
            str(self.stop_timeout),
            "--loglevel",
            "WARNING",
        ]

    def environment(self) -> dict[str, str]:
        # Inherited LOCUST_* settings (LOCUST_PROCESSES, LOCUST_RUN_TIME...) would change the
        # run behind the harness's back; pass them in `env` to mean them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        env.update(self.extra_env)
        env["FORKPOOL_NAME"] = self.suite_id
        env["FORKPOOL_LOAD_SUMMARY"] = str(self.summary_path)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # -- life cycle -----------------------------------------------------------

    def start(self) -> LocustRun:
        if self.proc is not None:
            raise RuntimeError("this LocustRun was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stale in (self.summary_path, self.log_path, *self.workdir.glob(f"{CSV_PREFIX}_*.csv")):
            stale.unlink(missing_ok=True)
        # cwd=workdir: Locust also reads ./locust.conf and ./pyproject.toml; none of the project's.
        self.proc = spawn(
            self.argv(),
            log_path=self.log_path,
            cwd=self.workdir,
            user=None,
            death_signal=signal.SIGTERM,
            env=self.environment(),
        )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def deadline(self) -> float:
        """time.monotonic() by which Locust should have ended by itself."""
        assert self.started_at is not None, "not started"
        return self.started_at + self.duration + self.stop_timeout + self.deadline_grace

    def stop(self, grace: float | None = None) -> int | None:
        """End the run now: SIGTERM (Locust writes its stats), then SIGKILL the group.

        Returns Locust's exit code (negative for a signal), None if never started.
        """
        if self.proc is None:
            return None
        grace = self.stop_timeout + 10.0 if grace is None else grace
        if self.proc.poll() is None:
            self.stopped = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("locust %d ignored SIGTERM for %.0f s; killing its group", self.proc.pid, grace)
        self._reap_group()
        code = self.proc.wait()
        self._ended()
        return code

    def _reap_group(self) -> None:
        """SIGKILL Locust's session group (itself if still there, anything it forked), once:
        right after it ended, before its pid could name someone else's group."""
        if self._group_reaped:
            return
        self._group_reaped = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Block until Locust ends (at most `timeout` s, default: until its deadline); its result.

        Raises LoadError if it is still running then (after stopping it), crashed, or left no stats.
        """
        if self.proc is None:
            raise RuntimeError("not started")
        if self._result is not None:
            return self._result
        limit = max(0.0, self.deadline - time.monotonic()) if timeout is None else timeout
        try:
            self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LoadError(
                f"locust still running {time.monotonic() - self.started_at:.0f} s after it started "
                f"(duration {self.duration:g} s); stopped it. {self.output_tail()}"
            ) from None
        self._reap_group()
        self._ended()
        self._result = self.collect()
        return self._result

    def _ended(self) -> None:
        if self.ended_at is None:
            self.ended_at = time.monotonic()

    def __enter__(self) -> LocustRun:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results --------------------------------------------------------------

    def output_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        tail = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
        return "locust output:\n" + "\n".join(tail) if tail else "(no output)"

    def collect(self) -> LoadResult:
        """Read the files Locust left into a LoadResult (the process must have ended)."""
        assert self.proc is not None and self.proc.returncode is not None, "locust has not ended"
        code = self.proc.returncode
        if code not in (0, 1) and not self.stopped:
            # 0: no failures; 1: some request failed (normal under load); 2: an unhandled
            # exception in a greenlet; negative: killed by a signal we did not send.
            raise LoadError(f"locust exited with code {code}. {self.output_tail()}")
        if not self.stats_path.exists():
            what = "was stopped before it wrote" if self.stopped else "wrote no"
            raise LoadError(f"locust {what} statistics ({self.stats_path.name}). {self.output_tail()}")
        summary = _read_summary(self.summary_path)
        if summary is None and not self.stopped and self.locustfile == locustfile_path():
            raise LoadError(
                f"locust ended (code {code}) without writing {self.summary_path.name}. {self.output_tail()}"
            )
        summary = summary or {}
        stats = summary.get("stats") or {}
        aggregated = stats.get("aggregated")
        endpoints = stats.get("endpoints")
        if aggregated is None:
            aggregated, endpoints = _read_stats_csv(self.stats_path)
            if aggregated is None:
                raise LoadError(f"locust left no aggregated statistics in {self.stats_path.name}. {self.output_tail()}")
        failures = stats.get("failures")
        if failures is None:
            failures = _read_failures_csv(self.failures_path)
        jobs = [job for job in summary.get("jobs", []) if job.get("id")]
        return LoadResult(
            requests=int(aggregated["requests"]),
            failures=int(aggregated["failures"]),
            requests_per_s=round(float(aggregated["rps"]), 2),
            latency_ms={k: float(aggregated[k]) for k in ("p50", "p95", "p99", "max")},
            status_counts={str(k): int(v) for k, v in summary.get("status_counts", {}).items()},
            endpoints=[_endpoint(e) for e in endpoints or []],
            job_ids=[str(job["id"]) for job in jobs],
            event_keys=[str(job.get("key", "")) for job in jobs],
            items_created=[(str(name), float(at)) for name, at in summary.get("items") or []],
            pool_reports={str(pid): body for pid, body in summary.get("pool_reports", {}).items()},
            errors=_error_lines(failures),
            status_by_second=[
                (int(s), {str(k): int(v) for k, v in c.items()})
                for s, c in sorted((summary.get("status_by_second") or {}).items())
            ],
            dropped_by_tier={str(k): int(v) for k, v in (summary.get("dropped_by_tier") or {}).items()},
        )


def run_locust(
    host: str,
    *,
    users: int,
    duration: float,
    suite_id: str,
    workdir: Path,
    env: dict | None = None,
    spawn_rate: float | None = None,
) -> LoadResult:
    """Run Locust headless against `host` for `duration` seconds; what it did and saw.

    Raises LoadError (a RuntimeError) if Locust crashed, hung past duration + 60 s
    (then its process group is killed), or left no statistics.
    """
    run = LocustRun(
        host, users=users, duration=duration, suite_id=suite_id, workdir=workdir, env=env, spawn_rate=spawn_rate
    )
    run.start()
    try:
        return run.wait()
    finally:
        run.stop()  # no-op once it ended; kills it if wait() was interrupted


# -- parsing ------------------------------------------------------------------


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0  # "N/A" percentiles of an endpoint without requests


def _read_stats_csv(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the "Aggregated" row, the per-endpoint rows) of Locust's _stats.csv, as the summary names them."""
    aggregated, endpoints = None, []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = {
                "name": row.get("Name", ""),
                "method": row.get("Type", ""),
                "requests": int(_number(row.get("Request Count"))),
                "failures": int(_number(row.get("Failure Count"))),
                "p50": _number(row.get("50%")),
                "p95": _number(row.get("95%")),
                "p99": _number(row.get("99%")),
                "max": _number(row.get("Max Response Time")),
                "rps": _number(row.get("Requests/s")),
            }
            if entry["name"] == "Aggregated":
                aggregated = entry
            else:
                endpoints.append(entry)
    return aggregated, endpoints


def _read_failures_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    return [
        {
            "method": r.get("Method", ""),
            "name": r.get("Name", ""),
            "error": r.get("Error", ""),
            "occurrences": int(_number(r.get("Occurrences"))),
        }
        for r in rows
    ]


def _endpoint(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": entry.get("name", ""),
        "method": entry.get("method", ""),
        "requests": int(entry.get("requests", 0)),
        "failures": int(entry.get("failures", 0)),
        "p50": _number(entry.get("p50")),
        "p95": _number(entry.get("p95")),
        "p99": _number(entry.get("p99")),
        "max": _number(entry.get("max")),
        "rps": round(_number(entry.get("rps")), 2),
    }


def _error_lines(failures: list[dict[str, Any]]) -> list[str]:
    """Distinct failures, most frequent first: "37x POST /items: 503 pool timeout"."""
    lines: list[str] = []
    for failure in sorted(failures, key=lambda f: -int(f.get("occurrences", 0))):
        error = _unwrap(str(failure.get("error", "")))
        line = f"{failure.get('occurrences', 0)}x {failure.get('method', '')} {failure.get('name', '')}: {error}"
        line = line[:ERROR_CHARS]
        if line not in lines:
            lines.append(line)
        if len(lines) >= MAX_ERRORS:
            break
    return lines


def _unwrap(error: str) -> str:
    """CatchResponseError('503 pool timeout') -> 503 pool timeout (Locust's repr of a response.failure)."""
    for wrapper in ("CatchResponseError(", "ResponseError("):
        if error.startswith(wrapper) and error.endswith(")"):
            inner = error[len(wrapper) : -1]
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                return inner[1:-1]
    return error
