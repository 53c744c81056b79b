"""Resident memory of every suite process over a run, for the soak's "memory stays flat" check."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable

import psutil

from .model import Check
from .processes import RunningSuite

INTERVAL = 1.0
# Last third of the run against the first: allowed growth of each role's median RSS.
GROWTH_LIMIT = 0.25


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


class RssSampler:
    """Every second: (t, role, pid, rss_kb) for the web and task processes (masters too)."""

    def __init__(self, suite: RunningSuite | list[RunningSuite], clock: Callable[[], float]) -> None:
        self.hosts, self.clock = suite if isinstance(suite, list) else [suite], clock
        self.series: list[tuple[float, str, int, int]] = []
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
