"""`forkpool soak --faults`: the soak's load with faults that rotate for the whole run.

One fault a minute (PERIOD_S), in turn: PostgreSQL restarts (fast shutdown, 2 s down), Redis
restarts (2 s down; its append-only file keeps the queue), PostgreSQL's address goes silent
(every packet dropped, nothing closed) for up to 20 s, every reply comes 200 +/- 50 ms late for
up to 15 s, connections that carry data are reset by peer for up to 5 s. A run shorter than one
rotation of minutes still does each fault once, in slots of a fifth of the run (windows shrink to
fit). After each fault, in the quiet rest of its slot, the schedule measures recovery: the
server's counts exact again and a task enqueued then written by a worker (broker, worker and
PostgreSQL all back); one figure per occurrence.

The suite reaches PostgreSQL through a fault proxy (latency, reset); the silence drops the
packets of the proxy's port in the kernel, inside a private network namespace, so the suite's
own TCP timers must notice it (harness/netfault.py). The proxy's sockets carry the server's
keepalive settings, so it ends a silenced connection's session as the server would.

No failover here: it has its own scenario (`forkpool fault failover`, harness/failover.py).
In the soak it would need PostgreSQL rebuilt as a synchronous pair (ReplicatedPostgres, which
takes none of the server network settings the silence relies on), and the harness's sampler,
its own row checks and the restart fault all name one server for the whole run: each would
have to follow the promotion.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fault_proxy import FaultProxy
from .model import Check, Event, Sample
from .netfault import PacketDrop
from .services import EmbeddedPostgres, EmbeddedRedis

if TYPE_CHECKING:
    from rich.console import Console

    from .model import RunReport
    from .run import LoadOptions
    from .sampler import Sampler

EXACT_BOUND_S = 30.0  # per fault: counts exact again and a task through within this, or it did not recover
PERIOD_S = 60.0  # one fault a minute in a long run
KINDS = ("pg-restart", "redis-restart", "blackhole", "latency", "reset")
RESTART_DOWN_S = 2.0
# (longest window, share of a slot at most): a short run's slots are short, and each fault must
# leave the rest of its slot quiet for the recovery to be measured in.
WINDOWS = {"blackhole": (20.0, 0.4), "latency": (15.0, 0.4), "reset": (5.0, 0.3)}
LEAD = 0.2  # a fault starts this far into its slot
RESTART_WAIT_S = 30.0  # for the main thread to start a server again


@dataclass(frozen=True)
class Planned:
    offset: float  # seconds after the load starts
    kind: str
    window: float  # seconds the fault lasts (a restart: the server's time down)


@dataclass
class Occurrence:
    kind: str
    at: float  # on the run's clock
    window_s: float
    ended: float  # on the run's clock
    recovered_s: float | None = None  # counts exact again and a task through; None: not within EXACT_BOUND_S


def plan(duration: float) -> list[Planned]:
    """Every fault of a load of `duration` s: whole rotations of KINDS, one slot each, at least one rotation."""
    cycles = max(1, round(duration / (PERIOD_S * len(KINDS))))
    slot = duration / (cycles * len(KINDS))
    faults = []
    for i in range(cycles * len(KINDS)):
        kind = KINDS[i % len(KINDS)]
        longest, share = WINDOWS.get(kind, (RESTART_DOWN_S, 1.0))
        faults.append(Planned(round((i + LEAD) * slot, 2), kind, round(min(longest, share * slot), 2)))
    return faults


class FaultSchedule:
    def __init__(
        self,
        pg: EmbeddedPostgres,
        redis: EmbeddedRedis,
        proxy: FaultProxy,
        duration: float,
        clock: Callable[[], float],
        latest: Callable[[], Sample | None],
        exact: Callable[[Sample], bool],
        task_through: Callable[[float], bool],
    ) -> None:
        """`task_through(timeout)`: enqueue a task now; True once a worker has written its row."""
        self.pg, self.redis, self.proxy, self.duration, self.clock = pg, redis, proxy, duration, clock
        self.latest, self.exact, self.task_through = latest, exact, task_through
        self.events: list[Event] = []
        self.occurrences: list[Occurrence] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forkpool-fault-schedule", daemon=True)
        self._to_start: EmbeddedPostgres | EmbeddedRedis | None = None
        self._started = threading.Event()

    def start(self) -> FaultSchedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No new fault starts; one under way ends and its recovery is still measured (at most
        EXACT_BOUND_S). Called from the main thread, which goes on serving restarts meanwhile."""
        self._stop.set()
        deadline = time.monotonic() + RESTART_WAIT_S + 2 * EXACT_BOUND_S + 30
        while self._thread.is_alive() and time.monotonic() < deadline:
            self.service_restarts()
            self._thread.join(0.1)

    def service_restarts(self) -> None:
        """Called from the main thread while the load runs: a server must be (re)started from a
        long-lived thread (its parent-death signal follows the thread that forked it)."""
        server = self._to_start
        if server is not None:
            server.start_server()
            self._to_start = None
            self._started.set()

    def _restart(self, server: EmbeddedPostgres | EmbeddedRedis, down: float) -> None:
        server.stop("fast")
        time.sleep(down)  # not cut short by stop(): the server comes back whatever happens
        self._started.clear()
        self._to_start = server
        self._started.wait(RESTART_WAIT_S)

    def _run(self) -> None:
        began = time.monotonic()
        drop = PacketDrop(self.proxy.port)
        for fault in plan(self.duration):
            # Not before the previous fault has recovered: a late start delays the rest, never overlaps.
            if self._stop.wait(max(began + fault.offset - time.monotonic(), 0.0)):
                return
            at = self.clock()
            if fault.kind == "pg-restart":
                self._mark(fault.kind, f"PostgreSQL fast shutdown, {fault.window:g} s down")
                self._restart(self.pg, fault.window)
            elif fault.kind == "redis-restart":
                self._mark(fault.kind, f"Redis stopped, {fault.window:g} s down")
                self._restart(self.redis, fault.window)
            elif fault.kind == "blackhole":
                self._mark(fault.kind, f"packets to PostgreSQL dropped for {fault.window:g} s")
                drop.on()
                self._stop.wait(fault.window)
                drop.off()
            elif fault.kind == "latency":
                self._mark(fault.kind, f"replies 200 +/- 50 ms late for {fault.window:g} s")
                self.proxy.latency(200, 50)
                self._stop.wait(fault.window)
                self.proxy.clear()
            else:
                self._mark(fault.kind, f"connections carrying data reset by peer for {fault.window:g} s")
                self.proxy.reset_peer(True)
                self._stop.wait(fault.window)
                self.proxy.reset_peer(False)
            occurrence = Occurrence(fault.kind, round(at, 2), fault.window, round(self.clock(), 2))
            self.occurrences.append(occurrence)
            self._settle(occurrence)

    def _mark(self, kind: str, detail: str) -> None:
        self.events.append(Event(self.clock(), "fault", f"{kind}: {detail}"))

    def _settle(self, occurrence: Occurrence) -> None:
        # Not cut short by stop(): the last fault may end a moment before the load does, and its
        # recovery is still to be measured; the suite and the sampler run until this thread is joined.
        ended = occurrence.ended
        self.events.append(Event(ended, "phase", f"{occurrence.kind} over"))
        deadline = time.monotonic() + EXACT_BOUND_S
        while time.monotonic() < deadline:
            latest = self.latest()
            if latest is not None and latest.t > ended and self.exact(latest):
                break
            time.sleep(0.05)
        else:
            return
        if self.task_through(max(deadline - time.monotonic(), 0.0)):
            occurrence.recovered_s = round(self.clock() - ended, 2)

    def report(self) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.occurrences]

    def check(self, number: int) -> Check:
        """Each kind happened at least once, and every occurrence recovered within EXACT_BOUND_S."""
        parts, passed = [], True
        for kind in KINDS:
            times = [o.recovered_s for o in self.occurrences if o.kind == kind]
            failed = sum(1 for t in times if t is None)
            passed = passed and bool(times) and not failed
            if not times:
                parts.append(f"{kind}: never ran")
                continue
            done = [t for t in times if t is not None]
            worst = f"worst {max(done):g} s" if done else "none recovered"
            parts.append(f"{kind} x{len(times)}: {worst}" + (f", {failed} not recovered" if failed else ""))
        return Check(
            number,
            f"after each fault: counts exact again and a task through within {EXACT_BOUND_S:.0f} s",
            passed,
            "; ".join(parts),
        )


def run_with_faults(options: LoadOptions, console: Console, log_dir: Path | None = None) -> RunReport:
    """The soak on embedded servers, PostgreSQL behind a fault proxy, with the schedule above.
    Runs inside a private network namespace (the CLI re-executes itself in one)."""
    from dataclasses import replace

    from .faults import SERVER_NETWORK_SETTINGS
    from .run import run_on

    # A task taken but not acknowledged when Redis went away comes back after the visibility
    # timeout: 10 s instead of the default hour, so the run's drain sees every task done. A task
    # run twice meanwhile writes its row once (record_event is idempotent).
    options = replace(options, extra_env={**options.extra_env, "CELERY_VISIBILITY_TIMEOUT": "10"})
    # Its own servers, whatever DATABASE_URL / REDIS_URL say: it restarts them. Redis keeps the
    # queue across its restarts in an fsync'd append-only file.
    with (
        EmbeddedPostgres(max(options.max_connections, 10), settings=SERVER_NETWORK_SETTINGS) as pg,
        EmbeddedRedis(persistent=True) as redis_server,
        FaultProxy(pg.host, pg.port, name="soak-pg-proxy", server_keepalives=True) as proxy,
    ):
        faults = plan(options.duration)
        console.print(
            f"PostgreSQL behind a fault proxy on port {proxy.port}; {len(faults)} faults, "
            f"one every {options.duration / len(faults):.0f} s: {', '.join(KINDS)} in turn"
        )

        def schedule(
            sampler: Sampler, exact: Callable[[Sample], bool], task_through: Callable[[float], bool]
        ) -> FaultSchedule:
            return FaultSchedule(
                pg, redis_server, proxy, options.duration, sampler.now, sampler.latest, exact, task_through
            )

        return run_on(
            proxy.url(pg.url), redis_server.url, options, console, log_dir, observe_url=pg.url, schedule=schedule
        )
