"""Stats stay consistent under concurrent load, whatever the load (hypothesis)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkpool
from forkpool import _base as keys

pytestmark = pytest.mark.usefixtures("driver")  # once per driver


def invariants_hold(snapshot: dict) -> bool:
    return (
        snapshot[keys.SIZE] == snapshot[keys.IDLE] + snapshot[keys.IN_USE]
        and snapshot[keys.CONNECTIONS_OPENED] - snapshot[keys.CONNECTIONS_CLOSED] == snapshot[keys.SIZE]
        and snapshot[keys.SIZE] <= snapshot[keys.MAX_SIZE]
        and snapshot[keys.WAITING] >= 0
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_size=st.integers(1, 4),
    threads=st.integers(1, 12),
    rounds=st.integers(1, 15),
    hold_ms=st.integers(0, 3),
    break_some=st.booleans(),
)
def test_stats_are_consistent_under_concurrent_load(database_url, max_size, threads, rounds, hold_ms, break_some):
    pool = forkpool.Pool(forkpool.configure("prop", min_size=1, max_size=max_size, timeout=10), "prop")
    pool.open()
    snapshots: list[dict] = []
    done: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            snapshots.append(pool.stats())

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            conn = pool.getconn()
            if break_some and rng.random() < 0.1:
                conn.close()  # the pool must discard it on return
            time.sleep(hold_ms / 1000)
            pool.putconn(conn)
            done.append(1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    sampler.join()
    final = pool.stats()
    pool.close()
    assert len(done) == threads * rounds
    assert final[keys.CHECKOUTS] == threads * rounds  # every successful checkout counted once
    assert final[keys.IN_USE] == 0 and final[keys.WAITING] == 0
    assert final[keys.CONNECTIONS_CLOSED] >= final[keys.CONNECTIONS_DISCARDED]
    bad = [s for s in snapshots + [final] if not invariants_hold(s)]
    assert bad == []
