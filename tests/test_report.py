"""harness.report on synthetic runs: terminal tables, JSON, chart; no servers involved."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

from rich.console import Console

from harness.model import Check, Event, LoadResult, Overlap, RoleSummary, RunReport, Sample
from harness.report import render_terminal, write_chart, write_json, write_reports

PASSWORD = "hunter2"
CEILING = 12  # web 2 x 4 + worker 2 x 2


def _samples(spike: bool = True) -> list[Sample]:
    """0 -> ceiling -> ceiling + 4 for a moment (a recycle's overlap, if `spike`) -> ceiling."""

    def at(t: float, web: list[int], worker: list[int]) -> Sample:
        sessions = {("web", 100 + i): n for i, n in enumerate(web)}
        sessions.update({("worker", 200 + i): n for i, n in enumerate(worker)})
        return Sample(t, {k: v for k, v in sessions.items() if v})

    out = [at(0.0, [], []), at(0.5, [2], [1]), at(1.0, [4, 4], [2, 2])]
    out += [at(1.0 + 0.1 * i, [4, 4], [2, 2]) for i in range(1, 40)]
    if spike:  # the replacement connected before the process it replaces had left
        out.append(at(5.0, [4, 4, 4], [2, 2]))
    out.append(at(5.3, [4, 4], [2, 2]))
    out += [at(5.3 + 0.1 * i, [4, 4], [2, 2]) for i in range(1, 30)]
    return out


def make_report(*, failed: bool = True, naive: bool = False, samples: bool = True) -> RunReport:
    checks = [
        Check(1, "steady total equals processes x pool size", True, "12 == 12"),
        Check(2, "never above the ceiling", not failed, "peak 16 > 12 for 0.30 s" if failed else "peak 12"),
        Check(3, "every job recorded once", True, "40/40 [ok]"),
    ]
    return RunReport(
        suite_id="s0123abcd",
        plan={"database_url": f"postgresql://u:{PASSWORD}@h/db", "web": {"workers": 2, "pool": 4}},
        naive=naive,
        started_at="2024-01-01T00:00:00+00:00",
        duration_s=8.2,
        ceiling=CEILING,
        samples=_samples(spike=failed) if samples else [],
        events=[
            Event(0.0, "phase", "start"),
            Event(4.9, "kill", "SIGKILL web pid 101"),
            Event(6.0, "recycle", "max_requests worker 200"),
        ],
        checks=checks,
        roles=[
            RoleSummary("web", 2, 4, 8, 8, 12 if failed else 8, not failed),
            RoleSummary("worker", 2, 2, 4, 4, 4, True),
        ],
        overlaps=[Overlap(5.0, 0.3, 4)] if failed else [],
        load=LoadResult(
            requests=993,
            failures=3,
            requests_per_s=99.3,
            latency_ms={"p50": 4.2, "p95": 11.0, "p99": 25.5, "max": 80.0},
            status_counts={"503": 3, "200": 950, "201": 40},
            endpoints=[{"name": "GET /items", "requests": 950, "failures": 0, "p50": 4.0, "p99": 20.0, "rps": 95.0}],
            tasks_enqueued=40,
            tasks_completed=40,
            tasks_per_s=5.0,
            errors=[f"connection to postgresql://u:{PASSWORD}@h/db refused"],
        ),
    )


def render(report: RunReport) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    render_terminal(report, console)
    return console.export_text()


def row_cells(text: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃| ").split("│")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_terminal_shows_roles_checks_and_failure() -> None:
    text = render(make_report())
    assert row_cells(text, "web") == ["web", "2", "4", "8", "8", "12", "FAIL"]
    assert row_cells(text, "worker") == ["worker", "2", "2", "4", "4", "4", "PASS"]
    assert row_cells(text, "total") == ["total", "4", "", "12 (ceiling)", "12", "16", "FAIL"]
    assert "never above the ceiling" in text  # the failed check's name
    assert row_cells(text, "2")[2] == "FAIL"
    assert "40/40 [ok]" in text  # details are text, not rich markup
    assert "over the ceiling by 4 for 0.30 s at t=5.00 s" in text
    assert "200: 950, 201: 40, 503: 3" in text
    assert "GET /items" in text
    assert text.rstrip().splitlines()[-1] == "FAIL: 1 check(s) failed"


def test_terminal_passing_run_says_pass() -> None:
    text = render(make_report(failed=False))
    assert "FAIL" not in text
    assert text.rstrip().splitlines()[-1] == "PASS: every ceiling held"
    assert "never above the ceiling" in text


def test_naive_runs_are_judged_as_contrast() -> None:
    assert "as expected" in render(make_report(naive=True)).rstrip().splitlines()[-1]
    last = render(make_report(naive=True, failed=False)).rstrip().splitlines()[-1]
    assert last == "naive run passed every check: the failure it demonstrates did not show this time"


def test_json_is_complete_and_redacted(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "report.json"
    write_json(make_report(), path)
    raw = path.read_text()
    body = json.loads(raw)
    assert body["passed"] is False
    assert len(body["samples"]) == len(_samples())
    assert [c["passed"] for c in body["checks"]] == [True, False, True]
    assert body["plan"]["database_url"] == "postgresql://u:***@h/db"
    assert PASSWORD not in raw


def test_write_reports_writes_all_three(tmp_path: Path) -> None:
    paths = write_reports(make_report(), tmp_path / "out")
    assert set(paths) == {"json", "chart", "text"}
    assert all(p.exists() for p in paths.values())
    text = paths["text"].read_text()
    assert "Connections by role" in text and "FAIL: 1 check(s) failed" in text
    assert PASSWORD not in text and PASSWORD not in paths["json"].read_text()
    png = paths["chart"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5 * 1024


def test_extra_roles_are_charted(tmp_path: Path) -> None:
    report = make_report()
    report.samples.append(Sample(8.0, {("web", 100): 4, ("beat", 300): 1}))
    write_chart(report, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 5 * 1024


def test_zero_samples_render_and_chart(tmp_path: Path) -> None:
    report = dataclasses.replace(make_report(failed=False, samples=False), events=[], load=LoadResult())
    text = render(report)
    assert row_cells(text, "total")[-1] == "PASS"
    paths = write_reports(report, tmp_path)
    assert paths["chart"].read_bytes().startswith(b"\x89PNG")
    empty = RunReport("s0", {}, False, "2024-01-01T00:00:00+00:00", 0.0, 0)
    assert render(empty).rstrip().splitlines()[-1] == "FAIL: no checks ran"
    write_chart(empty, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes().startswith(b"\x89PNG")


def test_failed_responses_go_on_the_runs_clock_and_under_the_connections(tmp_path: Path) -> None:
    from PIL import Image

    from harness.run import failed_per_second

    by_second = [(1000, {"200": 90, "503": 3}), (1001, {"200": 95}), (1002, {"error": 1, "500": 2, "201": 4})]
    timeline = failed_per_second(by_second, wall_at_zero=995.5)
    assert timeline == [(4.5, "503", 3), (6.5, "500", 2), (6.5, "error", 1)]  # 2xx left out, seconds shifted
    plain, with_errors = make_report(failed=False), make_report(failed=False)
    with_errors.status_timeline = timeline
    write_chart(plain, tmp_path / "plain.png")
    write_chart(with_errors, tmp_path / "errors.png")
    # The failed responses get a panel of their own below the connections: a taller picture.
    assert Image.open(tmp_path / "errors.png").height > Image.open(tmp_path / "plain.png").height
    body = json.loads(json.dumps(with_errors.to_json(), default=str))
    assert body["status_timeline"] == [list(row) for row in timeline]
