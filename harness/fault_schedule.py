"""`forkpool soak --faults`: the soak's load with a schedule of faults on PostgreSQL's side.

At 20 % of the load PostgreSQL restarts (fast shutdown, 2 s down); at 45 % its address goes
silent (every packet dropped, nothing closed) for a quarter of the load, at most 20 s; at 75 %
every reply is 200 +/- 50 ms late for a fifth of the load, at most 15 s. After each, the
schedule waits for the server's counts to be exact again and records how long that took.

The suite reaches PostgreSQL through a fault proxy (for the latency); the silence drops the
packets of the proxy's port in the kernel, inside a private network namespace, so the suite's
own TCP timers must notice it (harness/netfault.py). The proxy's sockets carry the server's
keepalive settings, so it ends a silenced connection's session as the server would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .fault_proxy import FaultProxy
from .model import Check, Event, Sample
from .netfault import PacketDrop
from .services import EmbeddedPostgres

if TYPE_CHECKING:
    from rich.console import Console

    from .model import RunReport
    from .run import LoadOptions
    from .sampler import Sampler

EXACT_BOUND_S = 30.0


class FaultSchedule:
    def __init__(
        self,
        pg: EmbeddedPostgres,
        proxy: FaultProxy,
        duration: float,
        clock: Callable[[], float],
        latest: Callable[[], Sample | None],
        exact: Callable[[Sample], bool],
    ) -> None:
        self.pg, self.proxy, self.duration, self.clock = pg, proxy, duration, clock
        self.latest, self.exact = latest, exact
        self.events: list[Event] = []
        self.recovered: dict[str, float | None] = {}  # fault -> seconds until counts were exact again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-fault-schedule", daemon=True)
        self._restart_requested = threading.Event()
        self._restart_done = threading.Event()

    def start(self) -> FaultSchedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No new fault starts; the recovery of one that has ended is still measured (at most EXACT_BOUND_S)."""
        self._stop.set()
        self._thread.join(EXACT_BOUND_S + 30)

    def service_restarts(self) -> None:
        """Called from the main thread while the load runs: a server must be (re)started from a
        long-lived thread (its parent-death signal follows the thread that forked it)."""
        if self._restart_requested.is_set() and not self._restart_done.is_set():
            self.pg.start_server()
            self._restart_done.set()

    def _at(self, fraction: float) -> bool:
        """Sleep until `fraction` of the load; False if stopped first."""
        return not self._stop.wait(max(self._start + fraction * self.duration - time.monotonic(), 0.0))

    def _run(self) -> None:
        self._start = time.monotonic()
        if not self._at(0.20):
            return
        self._mark("restart", "PostgreSQL fast shutdown, 2 s down")
        self.pg.stop("fast")
        time.sleep(2)
        self._restart_requested.set()
        self._restart_done.wait(30)
        self._settle("restart")
        if not self._at(0.45):
            return
        silence = min(20.0, 0.25 * self.duration)
        drop = PacketDrop(self.proxy.port)
        self._mark("blackhole", f"packets to PostgreSQL dropped for {silence:.0f} s")
        drop.on()
        self._stop.wait(silence)
        drop.off()
        self._settle("blackhole")
        if not self._at(0.75):
            return
        spike = min(15.0, 0.2 * self.duration)
        self._mark("latency", f"replies 200 +/- 50 ms late for {spike:.0f} s")
        self.proxy.latency(200, 50)
        self._stop.wait(spike)
        self.proxy.clear()
        self._settle("latency")

    def _mark(self, kind: str, detail: str) -> None:
        self.events.append(Event(self.clock(), "fault", f"{kind}: {detail}"))

    def _settle(self, fault: str) -> None:
        # Not cut short by stop(): the last fault may end a moment before the load does (a 40 s
        # soak's latency spike ends at 38 s), and its recovery is still to be measured; the
        # suite and the sampler run until this thread is joined.
        ended = self.clock()
        self.events.append(Event(ended, "phase", f"{fault} over"))
        deadline = time.monotonic() + EXACT_BOUND_S
        while time.monotonic() < deadline:
            latest = self.latest()
            if latest is not None and latest.t > ended and self.exact(latest):
                self.recovered[fault] = round(latest.t - ended, 2)
                return
            time.sleep(0.05)
        self.recovered[fault] = None

    def check(self, number: int) -> Check:
        faults = ("restart", "blackhole", "latency")
        passed = all(self.recovered.get(f) is not None for f in faults)
        detail = ", ".join(f"{f}: {self.recovered.get(f)} s" for f in faults)
        return Check(
            number,
            f"after each fault: counts exact again within {EXACT_BOUND_S:.0f} s",
            passed,
            f"exact again after {detail}",
        )


def run_with_faults(options: LoadOptions, console: Console, log_dir: Path | None = None) -> RunReport:
    """The soak on embedded servers, PostgreSQL behind a fault proxy, with the schedule above.
    Runs inside a private network namespace (the CLI re-executes itself in one)."""
    from .faults import SERVER_NETWORK_SETTINGS
    from .run import run_on
    from .services import EmbeddedRedis

    # Its own servers, whatever DATABASE_URL / REDIS_URL say: it restarts one of them.
    with (
        EmbeddedPostgres(max(options.max_connections, 10), settings=SERVER_NETWORK_SETTINGS) as pg,
        EmbeddedRedis() as redis_server,
        FaultProxy(pg.host, pg.port, name="soak-pg-proxy", server_keepalives=True) as proxy,
    ):
        console.print(f"PostgreSQL behind a fault proxy on port {proxy.port}; faults: restart, blackhole, latency")

        def schedule(sampler: Sampler, exact: Callable[[Sample], bool]) -> FaultSchedule:
            return FaultSchedule(pg, proxy, options.duration, sampler.now, sampler.latest, exact)

        return run_on(
            proxy.url(pg.url), redis_server.url, options, console, log_dir, observe_url=pg.url, schedule=schedule
        )
