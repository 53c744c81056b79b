"""Failover under write load: a primary and a synchronous standby, writers through a pool, the switch, the figures.

Shared by `forkpool fault failover` and tests/test_failover.py. Writers insert
(writer, n) rows in a loop and record every acknowledged write with the port of
the server that committed it; the switch promotes the standby after making the
old primary read-only without dropping a connection ("read-only") or after
stopping it ("stopped"). Figures: seconds from the switch until a write is
acknowledged by the new primary, attempts that failed meanwhile, acknowledged
writes missing on the new primary, our sessions left on the old one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .model import Check
from .services import ReplicatedPostgres, query_server

WRITERS = 4
TABLE = "CREATE TABLE writes (writer int NOT NULL, n int NOT NULL, PRIMARY KEY (writer, n))"
INSERT = "INSERT INTO writes (writer, n) VALUES (%s, %s)"
WARM_UP_WRITES = 40  # acknowledged before the switch: the pool is full and busy when the primary changes
AFTER_WRITES = 5  # per writer, acknowledged by the new primary: every writer, not just one, got through
RECOVERY_BOUND = 60.0  # a bound on the wait, far above what it takes: no timing is asserted
RETRY_PAUSE = 0.005  # a client's pause before it retries: no spin on a 2-core machine
VARIANTS = ("read-only", "stopped")


@dataclass
class Load:
    """What the writers saw: acknowledged writes (writer, n, server port, when) and failed attempts (when, error)."""

    acked: list[tuple[int, int, int, float]] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, writer: int, n: int, port: int) -> None:
        with self.lock:
            self.acked.append((writer, n, port, time.monotonic()))

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.failed.append((time.monotonic(), type(exc).__name__))

    def acked_on(self, port: int) -> list[tuple[int, int, int, float]]:
        with self.lock:
            return [a for a in self.acked if a[2] == port]

    def every_writer_on(self, port: int, count: int) -> bool:
        done = self.acked_on(port)
        return all(sum(1 for a in done if a[0] == w) >= count for w in range(WRITERS))


class Writers:
    """WRITERS threads calling `write(writer, n) -> port` in a loop until stopped."""

    def __init__(self, write: Callable[[int, int], int], load: Load) -> None:
        self.write, self.load = write, load
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(WRITERS)]

    def start(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """True if every writer ended within `timeout`."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    def _run(self, writer: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                port = self.write(writer, n)
            except Exception as exc:  # noqa: BLE001 - every failed attempt is counted, whatever it raised
                self.load.fail(exc)
                self._stop.wait(RETRY_PAUSE)
            else:
                self.load.ack(writer, n, port)


def prepare(pair: ReplicatedPostgres) -> str:
    """The database and its table on the primary (replicated); the two-host DSN for it."""
    dsn = pair.create_database("failover")
    query_server(pair.primary, TABLE, dbname="failover")
    return dsn


def switch(pair: ReplicatedPostgres, variant: str) -> None:
    if variant == "read-only":
        pair.make_read_only()
        # Promote only once nothing can commit on the old primary any more: a commit there after the
        # promotion would wait for its synchronous standby for ever (a switchover tool waits the same way).
        pair.wait_caught_up()
    elif variant == "stopped":
        pair.stop_primary("immediate")  # a crash: no goodbye to its clients
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    pair.promote()


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def measure(pair: ReplicatedPostgres, variant: str, load: Load, label: str) -> dict[str, Any]:
    """The switch under the caller's running load, then the timing figures; "recovered" False if the
    writes never reached the new primary within RECOVERY_BOUND."""
    if not _poll(lambda: len(load.acked) >= WARM_UP_WRITES, 30):
        raise RuntimeError(f"{label}: no load before the switch: {load.failed[-5:]}")
    old_port, new_port = pair.primary.port, pair.standby.port
    switched_at = time.monotonic()
    switch(pair, variant)
    recovered = _poll(lambda: load.every_writer_on(new_port, AFTER_WRITES), RECOVERY_BOUND)
    failures = [f for f in load.failed if f[0] >= switched_at]
    on_new = load.acked_on(new_port)
    first = min(a[3] for a in on_new) if on_new else None
    return {
        "pool": label,
        "variant": variant,
        "recovered": recovered,
        "seconds_to_recovery": None if first is None else round(first - switched_at, 3),
        # The switch itself takes time (the read-only variant waits for the standby, then promotes):
        # what the pools add is the time after the promotion.
        "seconds_after_promotion": None if first is None else round(first - (pair.promoted_at or switched_at), 3),
        "failed_attempts": len(failures),
        "errors": sorted({name for _, name in failures}),
        "old_port": old_port,
        "new_port": new_port,
    }


def outcome(pair: ReplicatedPostgres, figures: dict[str, Any], load: Load, identity_prefix: str) -> dict[str, Any]:
    """Acknowledged writes missing on the new primary; our sessions (application_name under
    `identity_prefix`) still on the old one, once the closes the pools sent have landed."""
    rows = set(pair.standby_query("SELECT writer, n FROM writes", dbname="failover"))
    with load.lock:
        acked = {(w, n) for w, n, _, _ in load.acked}
    figures["acknowledged"] = len(acked)
    figures["rows_lost"] = len(acked - rows)
    figures["lost_sample"] = sorted(acked - rows)[:10]
    if figures["variant"] == "read-only":

        def ours_on_old() -> int:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
            return int(query_server(pair.primary, query, f"{identity_prefix}%")[0][0])

        _poll(lambda: ours_on_old() == 0, 30)  # a closed session ends asynchronously on the server
        figures["left_on_old_primary"] = ours_on_old()
        if figures["left_on_old_primary"]:
            query = (
                "SELECT application_name, state, extract(epoch FROM now() - backend_start)::int, "
                "extract(epoch FROM now() - state_change)::int, left(query, 60) "
                "FROM pg_stat_activity WHERE application_name LIKE %s"
            )
            figures["left_sessions"] = query_server(pair.primary, query, f"{identity_prefix}%")
    else:
        figures["left_on_old_primary"] = 0  # the old primary is down: nothing can be left on it
    return figures


def checks_for(figures: dict[str, Any], first: int) -> list[Check]:
    where = f"{figures['pool']}, {figures['variant']}"
    return [
        Check(
            first,
            f"writes succeed again on the new primary ({where})",
            bool(figures["recovered"]),
            f"{figures['seconds_to_recovery']} s after the switch, {figures['failed_attempts']} failed attempts",
        ),
        Check(
            first + 1,
            f"no acknowledged write lost ({where})",
            figures["rows_lost"] == 0,
            f"{figures['acknowledged']} acknowledged, {figures['rows_lost']} missing {figures['lost_sample']}",
        ),
        Check(
            first + 2,
            f"no session left on the old primary ({where})",
            figures["left_on_old_primary"] == 0,
            f"{figures['left_on_old_primary']} left",
        ),
    ]


def own_pool_run(variant: str) -> dict[str, Any]:
    """One variant on fresh servers: forkpool's own pool (the installed driver), WRITERS threads writing."""
    import forkpool
    import forkpool.identity

    with ReplicatedPostgres(max_connections=60) as pair:
        dsn = prepare(pair)
        pool = forkpool.Pool(forkpool.PoolSettings(dsn=dsn, min_size=WRITERS, max_size=WRITERS, timeout=5))
        pool.open()

        def write(w: int, n: int) -> int:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute(INSERT, (w, n))
                return int(conn.info.port)

        load = Load()
        writers = Writers(write, load).start()
        try:
            figures = measure(pair, variant, load, f"forkpool.Pool[{pool.driver.name}]")
        finally:
            writers.stop()
        pool.close()
        return outcome(pair, figures, load, forkpool.identity.application_name())


def failover(suite: bool = False) -> Any:
    """`forkpool fault failover`: both variants, each on fresh servers; `suite`: under the whole suite's
    load (harness/suite_failover.py) instead of WRITERS threads."""
    from .faults import FaultResult

    if suite:
        from .suite_failover import failover_suite

        return failover_suite()

    result = FaultResult("failover")
    for variant in VARIANTS:
        figures = own_pool_run(variant)
        result.checks += checks_for(figures, len(result.checks) + 1)
        for key in ("lost_sample", "old_port", "new_port", "variant"):
            figures.pop(key)
        result.figures[variant] = figures
    return result
