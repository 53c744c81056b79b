"""Pools keyed by configuration; per-process limits with LRU eviction of idle pools and idle closing."""

from __future__ import annotations

import time

import pytest

import forkpool
import forkpool.health
from tests.conftest import wait_for


def with_password(url: str, password: str) -> str:
    return url.replace("postgres@", f"postgres:{password}@", 1)


def test_same_configuration_same_pool_other_configuration_other_pool(database_url):
    a = forkpool.pool_for(database_url, min_size=1, max_size=2)
    assert forkpool.pool_for(database_url, min_size=1, max_size=2) is a
    assert forkpool.pool_for(database_url, min_size=1, max_size=3) is not a
    other_secret = forkpool.pool_for(with_password(database_url, "other-secret"), min_size=1, max_size=2)
    assert other_secret is not a  # same server and user, another password: never share
    assert "other-secret" not in other_secret.name and other_secret.name.startswith(a.identity + "#")
    with a.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert forkpool.health.manager_stats()["pools"] == 3


def test_max_pools_evicts_the_least_recently_used_idle_pool(database_url, monkeypatch):
    monkeypatch.setenv("DB_MAX_POOLS", "2")
    first = forkpool.pool_for(database_url, min_size=0, max_size=1, timeout=1)
    second = forkpool.pool_for(database_url, min_size=0, max_size=2, timeout=1)
    with first.connection():
        pass
    time.sleep(0.01)
    with second.connection():
        pass  # second is now the more recently used
    third = forkpool.pool_for(database_url, min_size=0, max_size=3, timeout=1)
    assert first.closed and not second.closed and not third.closed
    assert forkpool.health.manager_stats()["evicted"] == 1


def test_max_pools_never_evicts_a_pool_in_use(database_url, monkeypatch):
    monkeypatch.setenv("DB_MAX_POOLS", "1")
    busy = forkpool.pool_for(database_url, min_size=0, max_size=1, timeout=1)
    conn = busy.getconn()
    try:
        with pytest.raises(forkpool.PoolError, match="none is idle"):
            forkpool.pool_for(database_url, min_size=0, max_size=2)
        assert not busy.closed
    finally:
        busy.putconn(conn)
    assert forkpool.pool_for(database_url, min_size=0, max_size=2) is not busy
    assert busy.closed


def test_idle_pools_are_closed_after_the_idle_time(database_url, monkeypatch, count_settles):
    monkeypatch.setenv("DB_POOL_IDLE_CLOSE", "0.5")
    idle = forkpool.pool_for(database_url, min_size=1, max_size=1)
    busy = forkpool.pool_for(database_url, min_size=1, max_size=2)
    assert idle.wait(10) and busy.wait(10)
    held = busy.getconn()
    try:
        assert wait_for(lambda: idle.closed, 10)
        assert not busy.closed  # a connection is in use: never closed under the caller
    finally:
        busy.putconn(held)
    assert forkpool.health.manager_stats()["closed_idle"] >= 1
    assert wait_for(lambda: busy.closed, 10)
    assert count_settles(0) == 0
