"""forkpool.protect(redis client): what ``report()`` says of each kind of pool, and what ``warm`` opens in a worker.

eager=False (the default): a worker's client opens nothing at start, as
redis-py connects on first use; eager=True: one connection at start (a
process uses one at a time per thread); a ``single_connection_client``
holds its connection from construction, so a worker's gets a new one at
start. Real Redis; a forked child stands in for a worker (the at-fork hook
detaches, ``warm_all`` is what the server hooks call at worker start).
"""

from __future__ import annotations

import json
import time

import pytest

from forkpool import _protect as protection
from tests.protect_support import in_child

redis = pytest.importorskip("redis")
REDIS_MAJOR = int(redis.__version__.split(".")[0])


@pytest.fixture(autouse=True)
def forget_protected():
    yield
    protection.unprotect_all()


def report_of(client) -> dict:
    """The one report of `client`, the only object protected at the time."""
    [(name, report)] = protection.reports()
    assert name == "redis"
    return {"max": report.max_size, "source": report.source, "open": report.open, "in_use": report.in_use}


def test_report_of_each_pool_kind(redis_url):
    default = protection.protect(redis.Redis.from_url(redis_url))
    unset = report_of(default)
    expected_bound = 100 if REDIS_MAJOR >= 8 else None  # redis-py 8: max_connections defaults to 100
    assert (unset["max"], unset["open"], unset["in_use"]) == (expected_bound, 0, 0), unset
    default.ping()
    assert report_of(default)["open"] == 1 and report_of(default)["in_use"] == 0
    protection.unprotect_all()

    blocking = protection.protect(
        redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(redis_url, max_connections=5))
    )
    assert report_of(blocking) == {"max": 5, "source": "max_connections 5", "open": 0, "in_use": 0}
    held = blocking.connection_pool.get_connection()
    try:
        assert report_of(blocking) == {"max": 5, "source": "max_connections 5", "open": 1, "in_use": 1}
    finally:
        blocking.connection_pool.release(held)
    assert report_of(blocking)["in_use"] == 0
    protection.unprotect_all()

    single = protection.protect(redis.Redis.from_url(redis_url, single_connection_client=True))
    assert report_of(single)["max"] == 1 and report_of(single)["source"] == "one connection"
    single.close()


@pytest.mark.parametrize("kind", ["lazy", "eager", "single"])
def test_what_a_worker_opens_at_start(kind, redis_url):
    client = redis.Redis.from_url(redis_url, single_connection_client=kind == "single")
    protection.protect(client, eager=kind == "eager")
    parent_id = client.client_id()  # the parent uses it: the child inherits a connected pool

    def worker() -> str:
        opened = protection.warm_all(time.monotonic() + 5)
        at_start = report_of(client)["open"]
        first = client.client_id()
        return json.dumps({"warm": opened, "at_start": at_start, "id": first})

    report = json.loads(in_child(worker))
    assert report["warm"] is True and report["id"] != parent_id, report
    assert report["at_start"] == {"lazy": 0, "eager": 1, "single": 1}[kind], report
    assert client.client_id() == parent_id  # the parent's connection is untouched
    client.close()
