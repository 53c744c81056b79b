"""Load for the forkpool suite's web API: a Locust file you can run and extend.

Run it against a running suite (``forkpool`` harness, ``honcho start``, Docker Compose)::

    locust -f harness/locustfile.py --host http://127.0.0.1:8000            # web UI on :8089
    locust -f harness/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 20 -r 20 -t 30s --csv out/locust                      # headless, CSV stats

The harness runs exactly this file in a subprocess (``harness.load.LocustRun``);
it never imports Locust itself, because Locust monkey-patches the interpreter
with gevent.

What one simulated user does (``SuiteUser``), by weight:

=========  ======================================  =========================
weight     request                                 stats name
=========  ======================================  =========================
4          ``GET /items?limit=20``                 ``/items?limit=20``
4          ``GET /items/<id>`` (an id it created,  ``/items/[id]``
           else one it listed)
3          ``POST /items`` (name + small payload)  ``/items``
2          ``POST /jobs`` ``record_event``         ``/jobs``
1          ``GET /jobs/<id>`` (a job it enqueued)  ``/jobs/[id]``
1          ``GET /pool`` (also once at start)      ``/pool``
=========  ======================================  =========================

``AsgiUser`` does the same against the async tier (the Starlette app under
Gunicorn's uvicorn workers) when ``FORKPOOL_ASGI_HOST`` is set, with its
stats names prefixed ``asgi `` (``asgi /items?limit=20``); otherwise it does
not run. Every ``record_event`` key is globally unique, ``f"{FORKPOOL_NAME}:{uuid4().hex}"``,
so a run's events can be found (and counted exactly once) in the ``events`` table.

How responses count (Locust's failure statistics):

- 2xx, and 404 when reading an item/job this user knew (someone else may have
  emptied the tables): success.
- 503 from a busy pool (body ``{"error": "pool_timeout"}``, with ``Retry-After``):
  a failure named ``503 pool timeout``; other 503s (``database_unavailable``,
  ``queue_unavailable``) are failures named ``503 <error>``. 503 is the
  designed answer under overload, so callers decide whether it is acceptable;
  the status counts below keep it apart from real errors.
- any other 5xx: a failure ``<status> server error``; any other 4xx: a failure
  ``<status> <error>`` (the load only sends valid requests).
- no response at all (refused, reset, timeout): a failure, status ``error``.

Environment:

``FORKPOOL_NAME``
    prefix of the ``record_event`` keys (default ``locust``).
``FORKPOOL_WAIT_MIN`` / ``FORKPOOL_WAIT_MAX``
    seconds each user waits between tasks (default 0.01 / 0.1).
``FORKPOOL_HOST``
    default ``--host`` (default ``http://127.0.0.1:8000``).
``FORKPOOL_ASGI_HOST``
    the async tier's URL (``forkpool loadtest --asgi-workers N`` sets it); unset
    or empty: ``AsgiUser`` does not run. A comma-separated list (a fleet's hosts):
    users take them in turn.
``FORKPOOL_WEB_HOSTS``
    a comma-separated list of web URLs (``forkpool loadtest --hosts N`` sets
    one per host): ``SuiteUser``s take them in turn instead of ``--host``.
``FORKPOOL_ASGI_USERS``
    how many of the ``-u`` users are ``AsgiUser`` (the rest are ``SuiteUser``);
    unset or 0: Locust splits them by weight, half each.
``FORKPOOL_LOAD_SUMMARY``
    if set, a path: when Locust quits (and after each test in the web UI) a
    JSON summary is written there, atomically::

        {"version": 1, "suite_id": ..., "pid": ..., "started_at": ..., "written_at": ...,
         "status_counts": {"200": n, "201": n, "202": n, "503": n, "error": n, ...},
         "status_by_second": {"<unix second>": {"200": n, "503": n, ...}, ...},  # the same, over time
         "dropped_by_tier": {"web": n, "asgi": n},  # requests with no response ("error"), per tier
         "jobs": [{"id": job_id, "key": record_event_key}, ...],   # every 202 from POST /jobs
         "items": [[name, unix time], ...],   # every 201 from POST /items: the writes acknowledged
         "pool_reports": {"<web or asgi pid>": <last GET /pool body from that pid>, ...},
         "stats": {"aggregated": {...}, "endpoints": [...], "failures": [...]}}

    ``stats`` holds the figures of ``--csv``'s ``_stats.csv`` and
    ``_failures.csv``, but taken after the last request (Locust rewrites the
    CSV files only once a second, so they can miss the run's final second).
    In a distributed run (``--processes``/``--worker``) each worker writes
    ``<path>.<pid>`` (its ``stats`` are then only what it has not yet sent to
    the master) and the master writes nothing.

Extending: add ``@task`` methods to ``SuiteUser`` or subclass it (Locust runs
every User class this module defines or imports; name the ones you want on the
command line to pick). Inside ``catch_response=True`` blocks call
``self.record(response)`` for the same success/failure rules; status counts
cover every request automatically.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from typing import Any

from locust import HttpUser, between, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsError

log = logging.getLogger("forkpool.locust")

FORKPOOL_NAME = os.environ.get("FORKPOOL_NAME") or "locust"
WAIT_MIN = float(os.environ.get("FORKPOOL_WAIT_MIN", "0.01"))
WAIT_MAX = max(WAIT_MIN, float(os.environ.get("FORKPOOL_WAIT_MAX", "0.1")))
SUMMARY_ENV = "FORKPOOL_LOAD_SUMMARY"
KNOWN_IDS_MAX = 200  # ids one user remembers (items, jobs)
POOL_TIMEOUT_FAILURE = "503 pool timeout"
ASGI_HOSTS = [url for url in os.environ.get("FORKPOOL_ASGI_HOST", "").split(",") if url]
ASGI_HOST = ASGI_HOSTS[0] if ASGI_HOSTS else ""
ASGI_USERS = int(os.environ.get("FORKPOOL_ASGI_USERS") or 0)
WEB_HOSTS = [url for url in os.environ.get("FORKPOOL_WEB_HOSTS", "").split(",") if url]
_spawned: dict[str, int] = {}  # users started per tier: the next one takes the next host


def _next_host(tier: str, hosts: list[str]) -> str:
    """A fleet's hosts, in turn: users spread evenly over them whatever their number."""
    n = _spawned.get(tier, 0)
    _spawned[tier] = n + 1
    return hosts[n % len(hosts)]


# Module-level tallies. Locust runs users as gevent greenlets in one thread and
# greenlets switch only at I/O, so plain dicts and lists need no locks.
STATUS_COUNTS: dict[str, int] = {}
STATUS_BY_SECOND: dict[int, dict[str, int]] = {}  # wall-clock second the request ended -> status -> n
DROPPED_BY_TIER: dict[str, int] = {}  # "web" / "asgi" (stats name "asgi ...") -> requests that got no response
JOBS: list[dict[str, str]] = []  # {"id": job id, "key": record_event key}, one per 202
# [item name, when acknowledged], one per 201: a failover must lose none of them (names are unique: a uuid part)
ITEMS: list[list[Any]] = []
POOL_REPORTS: dict[str, dict[str, Any]] = {}  # web or asgi pid -> last GET /pool body
_environment: Any = None
_started_at = time.time()


def _status_key(response: Any) -> str:
    code = getattr(response, "status_code", 0) or 0
    return str(code) if code else "error"


@events.request.add_listener
def _count_status(request_type, name, response_time, response_length, response=None, exception=None, **_: Any) -> None:
    """Every request, from every user class (also ones you add): tally its status."""
    key = _status_key(response)
    STATUS_COUNTS[key] = STATUS_COUNTS.get(key, 0) + 1
    second = STATUS_BY_SECOND.setdefault(int(time.time()), {})
    second[key] = second.get(key, 0) + 1
    if key == "error":
        tier = "asgi" if str(name).startswith("asgi ") else "web"
        DROPPED_BY_TIER[tier] = DROPPED_BY_TIER.get(tier, 0) + 1


def _json(response: Any) -> Any:
    try:
        return response.json()
    except Exception:  # noqa: BLE001 - not JSON (proxy error page, truncated body)
        return None


def classify(response: Any, *, allow_404: bool = False) -> str | None:
    """None if the response counts as a success, else the failure's name."""
    code = getattr(response, "status_code", 0) or 0
    if code == 0:
        error = getattr(response, "error", None)
        return f"connection error: {type(error).__name__ if error else 'no response'}"
    if 200 <= code < 300 or (allow_404 and code == 404):
        return None
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    if code == 503:
        return POOL_TIMEOUT_FAILURE if error in (None, "pool_timeout") else f"503 {error}"
    if code >= 500:
        return f"{code} server error"
    return f"{code} {error or 'unexpected'}"


class SuiteUser(HttpUser):
    """A client of the suite: reads and writes items, enqueues jobs, asks for /pool."""

    host = os.environ.get("FORKPOOL_HOST", "http://127.0.0.1:8000")
    wait_time = between(WAIT_MIN, WAIT_MAX)
    tier = ""  # prefix of this class's stats names: "" for the web tier

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if WEB_HOSTS and not self.tier:
            self.host = _next_host(self.tier, WEB_HOSTS)  # a fleet: this user's host, over --host
        super().__init__(*args, **kwargs)

    def named(self, name: str) -> str:
        return f"{self.tier}{name}"

    def on_start(self) -> None:
        self.item_ids: list[int] = []
        self.job_ids: list[str] = []
        self.pool()  # every user reports once, so each web worker is likely seen early

    # -- helpers ---------------------------------------------------------------

    def record(self, response: Any, *, allow_404: bool = False) -> bool:
        """Mark a catch_response response success/failure by the rules above; True if success."""
        failure = classify(response, allow_404=allow_404)
        if failure is None:
            response.success()
            return True
        response.failure(failure)
        return False

    @staticmethod
    def _remember(known: list, value: Any) -> None:
        known.append(value)
        if len(known) > KNOWN_IDS_MAX:
            del known[: len(known) - KNOWN_IDS_MAX]

    # -- tasks -----------------------------------------------------------------

    @task(4)
    def list_items(self) -> None:
        name = self.named("/items?limit=20")
        with self.client.get("/items?limit=20", name=name, catch_response=True) as response:
            if self.record(response):
                body = _json(response)
                items = body.get("items") if isinstance(body, dict) else None
                if not self.item_ids and items:
                    for item in items:
                        self._remember(self.item_ids, item["id"])

    @task(4)
    def read_item(self) -> None:
        if not self.item_ids:
            self.list_items()
            if not self.item_ids:
                return
        item_id = random.choice(self.item_ids)
        name = self.named("/items/[id]")
        with self.client.get(f"/items/{item_id}", name=name, catch_response=True) as response:
            self.record(response, allow_404=True)

    @task(3)
    def create_item(self) -> None:
        body = {
            "name": f"locust-{self.tier.strip() or 'web'}-{uuid.uuid4().hex[:12]}",  # the tier that wrote it
            "payload": {"suite": FORKPOOL_NAME, "n": random.randint(0, 1_000_000), "tags": ["load"]},
        }
        with self.client.post("/items", json=body, name=self.named("/items"), catch_response=True) as response:
            if self.record(response):
                if response.status_code == 201:
                    ITEMS.append([body["name"], time.time()])
                created = _json(response)
                if isinstance(created, dict) and "id" in created:
                    self._remember(self.item_ids, created["id"])

    @task(2)
    def enqueue_job(self) -> None:
        key = f"{FORKPOOL_NAME}:{uuid.uuid4().hex}"
        body = {"kind": "record_event", "args": {"key": key, "data": {"by": "locust"}}}
        with self.client.post("/jobs", json=body, name=self.named("/jobs"), catch_response=True) as response:
            if self.record(response) and response.status_code == 202:
                answer = _json(response)
                job_id = answer.get("id") if isinstance(answer, dict) else None
                if job_id:
                    JOBS.append({"id": job_id, "key": key})
                    self._remember(self.job_ids, job_id)
                else:
                    response.failure("202 without a job id")

    @task(1)
    def job_status(self) -> None:
        if not self.job_ids:
            return
        job_id = random.choice(self.job_ids)
        with self.client.get(f"/jobs/{job_id}", name=self.named("/jobs/[id]"), catch_response=True) as response:
            self.record(response, allow_404=True)

    @task(1)
    def pool(self) -> None:
        with self.client.get("/pool", name=self.named("/pool"), catch_response=True) as response:
            if self.record(response):
                body = _json(response)
                if isinstance(body, dict) and "pid" in body:
                    POOL_REPORTS[str(body["pid"])] = body


class AsgiUser(SuiteUser):
    """The same client against the async tier; runs only when FORKPOOL_ASGI_HOST names it."""

    abstract = not ASGI_HOST
    fixed_count = ASGI_USERS
    tier = "asgi "

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # --host names the web tier and Locust gives it to every class at spawn: this one serves elsewhere.
        self.host = _next_host(self.tier, ASGI_HOSTS)
        super().__init__(*args, **kwargs)


# -- the summary -----------------------------------------------------------------


def _entry_json(entry: Any) -> dict[str, Any]:
    def pct(p: float) -> float:
        return float(entry.get_response_time_percentile(p) or 0) if entry.num_requests else 0.0

    return {
        "name": entry.name,
        "method": entry.method or "",
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "p50": pct(0.5),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": float(entry.max_response_time or 0),
        "rps": round(float(entry.total_rps or 0.0), 3),
    }


def final_stats(environment: Any) -> dict[str, Any] | None:
    stats = getattr(environment, "stats", None)
    if stats is None:
        return None
    entries = sorted(stats.entries.values(), key=lambda e: (e.name, e.method or ""))
    failures = sorted(stats.errors.values(), key=lambda e: -e.occurrences)
    return {
        "aggregated": _entry_json(stats.total),
        "endpoints": [_entry_json(e) for e in entries],
        "failures": [
            {
                "method": f.method or "",
                "name": f.name,
                "error": StatsError.parse_error(f.error),
                "occurrences": f.occurrences,
            }
            for f in failures
        ],
    }


def summary() -> dict[str, Any]:
    return {
        "version": 1,
        "suite_id": FORKPOOL_NAME,
        "pid": os.getpid(),
        "started_at": _started_at,
        "written_at": time.time(),
        "status_counts": dict(sorted(STATUS_COUNTS.items())),
        "status_by_second": {str(s): dict(c) for s, c in sorted(STATUS_BY_SECOND.items())},
        "dropped_by_tier": dict(sorted(DROPPED_BY_TIER.items())),
        "jobs": list(JOBS),
        "items": list(ITEMS),
        "pool_reports": dict(POOL_REPORTS),
        "stats": final_stats(_environment),
    }


def write_summary(path: str | None = None) -> str | None:
    """Write the summary to FORKPOOL_LOAD_SUMMARY (or `path`) atomically; return the path used."""
    path = path or os.environ.get(SUMMARY_ENV)
    runner = getattr(_environment, "runner", None)
    if not path or isinstance(runner, MasterRunner):
        return None
    if isinstance(runner, WorkerRunner):
        path = f"{path}.{os.getpid()}"
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(summary(), out, default=str)
        os.replace(tmp, path)
    except OSError as exc:
        log.error("could not write the load summary to %s: %s", path, exc)
        return None
    return path


@events.init.add_listener
def _keep_environment(environment: Any, **_: Any) -> None:
    global _environment
    _environment = environment


@events.test_stop.add_listener
def _after_test(environment: Any, **_: Any) -> None:
    write_summary()  # the web UI may run several tests in one process


@events.quit.add_listener
def _at_exit(exit_code: int, **_: Any) -> None:
    write_summary()  # after the users stopped: the final numbers
