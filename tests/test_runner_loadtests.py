"""`forkpool loadtest` under the other runners: the web tier under uWSGI, the task tier under RQ; the six checks hold.

A quick run of each is in the default set; the fuller runs (the async tier beside,
recycling and kills on every role, 20 s of load) are marked slow: ``pytest -m slow``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_harness import forkpool

pytest.importorskip("rq", reason="--task-runner rq needs rq (the dev extra pins it)")

UWSGI = Path(sys.executable).with_name("uwsgi")
needs_uwsgi = pytest.mark.skipif(not UWSGI.exists(), reason=f"uWSGI is not installed ({UWSGI}): pip install uwsgi")
# A whole deployment booted, loaded, disturbed and stopped: past the suite's 120 s default on a busy 2-core machine.
QUICK_TIMEOUT_S, FULL_TIMEOUT_S = 300, 600


def loadtest(tmp_path: Path, *args: str) -> tuple[dict, Path]:
    report = tmp_path / "report"
    result = forkpool(
        "loadtest", *args, "--json", str(tmp_path / "run.json"), "--report", str(report), timeout=QUICK_TIMEOUT_S * 2
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    body = json.loads((tmp_path / "run.json").read_text())
    assert [c["number"] for c in body["checks"]] == [1, 2, 3, 4, 5, 6]
    assert all(c["passed"] for c in body["checks"]), body["checks"]
    return body, report


def rq_logs(report: Path) -> str:
    return "".join(log.read_text(errors="replace") for log in sorted((report / "logs").glob("rq-*.log")))


def web_log(report: Path) -> str:
    [log] = (report / "logs").glob("web-*.log")
    return log.read_text(errors="replace")


@needs_uwsgi
@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_loadtest_with_the_web_tier_under_uwsgi_holds_every_check(tmp_path):
    body, report = loadtest(
        tmp_path,
        "--web-server",
        "uwsgi",
        "--duration",
        "5",
        "--users",
        "4",
        "--task-rate",
        "4",
        "--kill-workers",
        "1",
        "--max-requests",
        "30",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "2",
    )
    log = web_log(report)
    assert "Starting uWSGI" in log and "gunicorn" not in log.lower()  # the web tier ran under uWSGI itself
    assert body["ceiling"] == 8 and "'web': 4" in body["checks"][0]["detail"]  # 2 workers x 2, the master none
    assert [e for e in body["events"] if e["detail"].startswith("SIGKILL web worker")]
    assert "Respawned uWSGI worker" in log  # uWSGI replaced the killed worker, which opened its own pool


@pytest.mark.slow
@pytest.mark.timeout(FULL_TIMEOUT_S)
@needs_uwsgi
def test_loadtest_under_uwsgi_with_an_asgi_tier_recycling_and_kills(tmp_path):
    body, report = loadtest(
        tmp_path,
        "--web-server",
        "uwsgi",
        "--duration",
        "20",
        "--kill-workers",
        "3",
        "--max-requests",
        "60",
        "--max-tasks-per-child",
        "10",
        "--web-workers",
        "2",
        "--asgi-workers",
        "2",
        "--pool-size",
        "3",
    )
    log = web_log(report)
    assert "The work of process" in log  # --max-requests recycled uWSGI workers during the run
    assert {r["role"]: r["expected"] for r in body["roles"]} == {"web": 6, "worker": 6, "asgi": 6}
    assert {e["detail"].split()[1] for e in body["events"] if e["kind"] == "kill"} == {"web", "task", "asgi"}


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_loadtest_with_the_task_tier_under_rq_holds_every_check(tmp_path):
    body, report = loadtest(
        tmp_path,
        "--task-runner",
        "rq",
        # A horse lives only while a job runs: 10 s of load at 8 jobs/s leaves the kill round (at 70 % of
        # the load, waiting up to 10 s for a candidate) jobs to find one in on a loaded machine.
        "--duration",
        "10",
        "--users",
        "4",
        "--task-rate",
        "8",
        "--kill-workers",
        "2",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--pool-size",
        "2",
    )
    logs = rq_logs(report)
    assert logs.count("Listening on") >= 2  # two rq workers, each forking a horse per job
    # The ceiling counts a pool per RQ worker (its horse); at rest the task tier holds none.
    assert body["ceiling"] == 8 and body["checks"][0]["detail"].startswith("expected {'web': 4}")
    assert "checked in the job that reported" in body["checks"][4]["detail"]  # check 5 heard from horses
    assert [e for e in body["events"] if e["detail"].startswith("SIGKILL task process")]  # a horse, mid-job or not
    assert body["load"]["tasks_completed"] == body["load"]["tasks_enqueued"] > 0


def test_rq_runner_refuses_celery_only_options():
    result = forkpool("loadtest", "--task-runner", "rq", "--max-tasks-per-child", "5", timeout=60)
    assert result.returncode == 2 and "an RQ work-horse lives for one job" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(FULL_TIMEOUT_S)
@needs_uwsgi
def test_loadtest_under_uwsgi_and_rq_with_an_asgi_tier_recycling_and_kills(tmp_path):
    """Both other runners at once, beside the async tier: every role recycled or killed, 20 s of load."""
    body, report = loadtest(
        tmp_path,
        "--web-server",
        "uwsgi",
        "--task-runner",
        "rq",
        "--duration",
        "20",
        "--kill-workers",
        "3",
        "--max-requests",
        "60",
        "--web-workers",
        "2",
        "--worker-concurrency",
        "2",
        "--asgi-workers",
        "2",
        "--pool-size",
        "3",
    )
    assert "The work of process" in web_log(report)  # uWSGI recycled its workers at --max-requests
    assert body["load"]["tasks_completed"] == body["load"]["tasks_enqueued"] > 0  # a killed horse's job ran again
    assert {e["detail"].split()[1] for e in body["events"] if e["kind"] == "kill"} == {"web", "task", "asgi"}
