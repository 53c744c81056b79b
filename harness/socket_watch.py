"""Check 6 from the outside: no socket held by two processes, no master holding a connection.

A thread surveys the suite's two process trees with `forkpool doctor`'s code
(the kernel's socket tables, nothing sent on any socket) once a second during
the load, and once more after it. A finding counts when two surveys in a row
see it: a child caught in the microseconds between its fork and its at-fork
hook holds its parent's sockets for that instant, which is the fork, not a leak. Unlike checks 1-5, which count sessions the
server sees by name, this sees the sockets themselves: an inherited connection
that nobody detached shows here even if no query ever went through it.
"""

from __future__ import annotations

import threading
import time

from forkpool.doctor.discovery import find_servers, find_trees
from forkpool.doctor.findings import MASTER_CONNECTION, SHARED_SOCKET, Expectations, evaluate
from forkpool.doctor.survey import survey

from .model import Check

INTERVAL = 1.0
_WATCHED = (SHARED_SOCKET, MASTER_CONNECTION)


class SocketWatch:
    def __init__(self, database_url: str, redis_url: str, master_pids: list[int]) -> None:
        self.master_pids = master_pids
        self.servers = find_servers(database_url, redis_url)
        self.surveys = 0
        self.took_ms: list[float] = []
        self.findings: dict[str, str] = {}  # message per (code, pids) seen in two surveys in a row
        self._last: dict[str, str] = {}  # what the previous survey saw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-socket-watch", daemon=True)

    def start(self) -> SocketWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def look(self) -> None:
        """One survey of both trees; remembers shared sockets and master connections seen twice in a row."""
        found = survey(find_trees(self.master_pids), self.servers, None, None)
        self.surveys += 1
        self.took_ms.append(found.took_ms)
        seen = {f"{f.code}:{f.pids}": f.message for f in evaluate(found, Expectations({})) if f.code in _WATCHED}
        for key in seen.keys() & self._last.keys():
            self.findings.setdefault(key, seen[key])
        self._last = seen

    def check(self) -> Check:
        name = "no socket held by two processes, no master holding a connection (seen from the outside)"
        median = sorted(self.took_ms)[len(self.took_ms) // 2] if self.took_ms else 0.0
        if not self.surveys:
            return Check(6, name, False, "no survey was made")
        if self.findings:
            first = next(iter(self.findings.values()))
            kinds = ", ".join(sorted({key.split(":", 1)[0] for key in self.findings}))
            return Check(
                6, name, False, f"{len(self.findings)} finding(s) ({kinds}) in {self.surveys} surveys; first: {first}"
            )
        return Check(
            6,
            name,
            True,
            f"{self.surveys} surveys of every process's sockets "
            f"(median {median:.0f} ms each): none shared, masters hold none",
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.look()
            except Exception:  # noqa: BLE001 - a process exiting mid-survey; the next one sees the rest
                pass
            took = time.monotonic() - started
            # At most half the time surveying: on a loaded machine, or a fleet of many processes, a survey
            # can take longer than INTERVAL, and back-to-back surveys would starve the run they watch.
            self._stop.wait(max(INTERVAL - took, took, 0.05))
