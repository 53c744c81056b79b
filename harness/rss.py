"""Resident memory, open files and connections of every suite process over a run, for the soak's flatness checks."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable

import psutil

from .model import Check, Sample
from .processes import RunningSuite

INTERVAL = 1.0
# Last third of the run against the first: allowed growth of each role's median RSS.
GROWTH_LIMIT = 0.25

# (t, role, pid, open file descriptors, TCP connections) of one process at one sampling round.
Handles = tuple[float, str, int, int, int]


def rss_kb(pid: int) -> int | None:
    """Resident memory of `pid` in KiB (the kernel's VmRSS), or None once it is gone (a zombie has none)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None  # psutil says 0: it would drag a role's median down
            return proc.memory_info().rss // 1024
    except psutil.Error:
        return None


def handle_counts(pid: int) -> tuple[int, int] | None:
    """Open file descriptors and TCP sockets (listening ones too) of `pid`, or None once it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None  # its descriptors are closed: 0 would drag a role's figure down
            return proc.num_fds(), len(proc.net_connections(kind="tcp"))
    except psutil.Error:
        return None


class RssSampler:
    """Every second: (t, role, pid, rss_kb) for the web and task processes (masters too), and the same
    processes' open file descriptors and TCP connections in `handles`."""

    def __init__(self, suite: RunningSuite | list[RunningSuite], clock: Callable[[], float]) -> None:
        self.hosts, self.clock = suite if isinstance(suite, list) else [suite], clock
        self.series: list[tuple[float, str, int, int]] = []
        self.handles: list[Handles] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, str, int, int]]:
        self._stop.set()
        self._thread.join(5)
        return self.series

    def _run(self) -> None:
        while not self._stop.is_set():
            t = self.clock()
            for suite in self.hosts:
                at = f"@{suite.plan.host}" if suite.plan.host else ""  # a fleet's roles carry the host
                groups = [
                    ("web-master", [suite.web.pid]),
                    ("web", suite.web.children()),
                    ("worker-main", [suite.worker.pid]),
                    ("worker", suite.worker.children()),
                ]
                if suite.asgi is not None:
                    groups += [("asgi-master", [suite.asgi.pid]), ("asgi", suite.asgi.children())]
                for role, pids in groups:
                    for pid in pids:
                        kb = rss_kb(pid)
                        if kb is not None:
                            self.series.append((round(t, 2), role + at, pid, kb))
                        counts = handle_counts(pid)
                        if counts is not None:
                            self.handles.append((round(t, 2), role + at, pid, *counts))
            self._stop.wait(INTERVAL)


def check_memory_flat(series: list[tuple[float, str, int, int]], number: int = 7) -> Check:
    """Each role's median RSS in the last third of the run is within GROWTH_LIMIT of the first third."""
    if not series:
        return Check(number, "memory (RSS) per process stays flat", False, "no RSS samples")
    start, end = series[0][0], series[-1][0]
    third = (end - start) / 3 or 1.0
    growth: dict[str, float] = {}
    for role in sorted({s[1] for s in series}):
        early = [kb for t, r, _, kb in series if r == role and t <= start + third]
        late = [kb for t, r, _, kb in series if r == role and t >= end - third]
        if early and late:
            growth[role] = statistics.median(late) / statistics.median(early) - 1
    worst = max(growth.values(), default=0.0)
    detail = ", ".join(f"{role} {g:+.1%}" for role, g in growth.items())
    return Check(
        number,
        f"memory (RSS) per process stays flat (< {GROWTH_LIMIT:.0%} growth)",
        bool(growth) and worst < GROWTH_LIMIT,
        f"median RSS, last third vs first: {detail}",
    )


# What "flat" allows, as (absolute, relative) growth of a median: the larger of the two.
# Per role, last third of the run against the first, of the role's mean per process per sampling round:
# recycled processes are new pids, so a role is judged, not a pid. A descriptor or socket leaked per
# request or per recycle in a process that lives on (a master) grows without bound over an hour.
# A process opens some clients lazily (Redis, Celery's producer: ~6 sockets, 8 fds, at its first
# requests), so a role's figure moves with how many of its processes are fresh: the absolute slack.
ROLE_SLACK = {"fds": (12.0, 0.25), "tcp": (6.0, 0.25), "sessions": (1.0, 0.10)}
# Per process, last third of its own life against its first, for processes sampled at least
# MIN_LIFE_SAMPLES times. Recycling hides a per-request leak from the role's figure (each
# replacement starts afresh: a saw-tooth with the same mean in every third), not from its life:
# 1 descriptor per request over a life of 100 requests is ~+67 here. The slack covers a
# process's lazily opened clients (above) and a fault's transient replacements (a pool of 4
# reconnecting); a life is judged from the moment its pool is open (start-up is not growth).
LIFE_SLACK = {"fds": (24.0, 0.5), "tcp": (12.0, 0.5)}
MIN_LIFE_SAMPLES = 9


def _within(early: float, late: float, slack: tuple[float, float]) -> bool:
    absolute, relative = slack
    return late - early <= max(absolute, relative * early)


def _n(value: float) -> str:
    return f"{round(value, 1):g}"


def _thirds_by_time(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Median of the values in the first third of the span and in the last: (early, late)."""
    if not points:
        return None
    start, end = min(t for t, _ in points), max(t for t, _ in points)
    third = (end - start) / 3 or 1.0
    early = [v for t, v in points if t <= start + third]
    late = [v for t, v in points if t >= end - third]
    return (statistics.median(early), statistics.median(late)) if early and late else None


def _role_means(handles: list[Handles], column: int) -> dict[str, list[tuple[float, float]]]:
    """Per role: (t, mean of the column over the role's processes sampled in that round)."""
    rounds: dict[tuple[str, float], list[int]] = {}
    for row in handles:
        rounds.setdefault((row[1], row[0]), []).append(row[column])
    means: dict[str, list[tuple[float, float]]] = {}
    for (role, t), values in sorted(rounds.items()):
        means.setdefault(role, []).append((t, statistics.fmean(values)))
    return means


def _lives(handles: list[Handles], column: int, pool_open: dict[int, float]) -> dict[int, tuple[str, float, float]]:
    """Per process sampled at least MIN_LIFE_SAMPLES times once its pool was open (the server saw a session
    of it; a master, which holds none, from its first sample): (role, early median, late median).

    A replacement's first seconds, importing the app, hold a fraction of its sockets: they are start-up,
    not growth, and on a busy machine they can fill a short life's first third."""
    by_pid: dict[int, list[Handles]] = {}
    for row in handles:
        if row[0] >= pool_open.get(row[2], float("-inf")):
            by_pid.setdefault(row[2], []).append(row)
    lives = {}
    for pid, rows in by_pid.items():
        if len(rows) >= MIN_LIFE_SAMPLES:
            values = [r[column] for r in sorted(rows)]
            third = len(values) // 3
            lives[pid] = (rows[0][1], statistics.median(values[:third]), statistics.median(values[-third:]))
    return lives


def check_handles_flat(handles: list[Handles], samples: list[Sample], number: int = 8, since: float = 0.0) -> Check:
    """Open file descriptors and TCP connections per process (each role's mean, and each process's own
    life), and PostgreSQL sessions per role, do not grow from the first third of the run to the last.

    `since`: when the load started (the suite steady, every pool open). The start-up before it is filling,
    not growth: in a short run it would be most of the first third."""
    name = "open files and connections per role stay flat"
    handles = [row for row in handles if row[0] >= since]
    samples = [sample for sample in samples if sample.t >= since]
    if not handles or not samples:
        return Check(number, name, False, f"no samples ({len(handles)} of processes, {len(samples)} of the server)")
    parts, grown = [], []
    for label, key, series in (
        ("open fds per process", "fds", _role_means(handles, 3)),
        ("TCP connections per process", "tcp", _role_means(handles, 4)),
        ("PostgreSQL sessions per role", "sessions", _session_series(samples)),
    ):
        figures = []
        for role, points in sorted(series.items()):
            thirds = _thirds_by_time(points)
            if thirds is None:
                continue
            early, late = thirds
            ok = _within(early, late, ROLE_SLACK[key])
            figures.append(f"{role} {_n(early)}->{_n(late)}" + ("" if ok else " (grew)"))
            if not ok:
                grown.append(f"{label} of {role}")
        parts.append(f"{label} (median, first third -> last): {', '.join(figures) or 'none'}")
    pool_open: dict[int, float] = {}
    for sample in samples:
        for pid, count in sample.by_pid().items():
            if count:
                pool_open.setdefault(pid, sample.t)
    for label, key, column in (("fds", "fds", 3), ("TCP connections", "tcp", 4)):
        lives = _lives(handles, column, pool_open)
        worst_pid = max(lives, key=lambda pid: lives[pid][2] - lives[pid][1], default=None)
        if worst_pid is None:
            parts.append(f"{label} within a life: no process sampled {MIN_LIFE_SAMPLES} times")
            continue
        role, early, late = lives[worst_pid]
        parts.append(
            f"{label} within a life, from its pool open ({len(lives)} processes): most grown {role} pid {worst_pid} "
            f"{_n(early)}->{_n(late)}"
        )
        over: dict[str, list[int]] = {}
        for pid, (r, e, lt) in sorted(lives.items()):
            if not _within(e, lt, LIFE_SLACK[key]):
                over.setdefault(r, []).append(pid)
        grown += [
            f"{label} of {len(pids)} {r} processes in their life (pids {pids[:3]}...)" for r, pids in over.items()
        ]
    detail = "; ".join(parts) + (f"; GREW: {', '.join(grown)}" if grown else "")
    return Check(number, name, not grown, detail)


def _session_series(samples: list[Sample]) -> dict[str, list[tuple[float, float]]]:
    """Per role seen in the run: (t, the server's sessions of that role) at every sample, 0 where none."""
    roles = sorted({role for s in samples for role in s.by_role()})
    series: dict[str, list[tuple[float, float]]] = {role: [] for role in roles}
    for s in samples:
        counts = s.by_role()
        for role in roles:
            series[role].append((s.t, float(counts.get(role, 0))))
    return series


def write_memory_chart(series: list[tuple[float, str, int, int]], path) -> None:
    """RSS per process over time, one colour per role (a process that recycles starts a new line)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {
        "web": "tab:blue",
        "worker": "tab:orange",
        "asgi": "tab:green",
        "web-master": "tab:cyan",
        "worker-main": "tab:brown",
        "asgi-master": "tab:olive",
    }
    labelled: set[str] = set()
    for pid in sorted({s[2] for s in series}):
        points = [(t, kb / 1024) for t, _, p, kb in series if p == pid]
        role = next(r for _, r, p, _ in series if p == pid)
        ax.plot(
            *zip(*points, strict=False),
            color=colours.get(role, "grey"),
            linewidth=1,
            label=None if role in labelled else role,
        )
        labelled.add(role)
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("memory per process")
    if labelled:
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
