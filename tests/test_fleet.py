"""Past one machine, without servers: the fleet's and PgBouncer's arithmetic, and the fleet's checks."""

from __future__ import annotations

import logging

import pytest

import forkpool
from forkpool.budget import Budget, DeploymentPlan, PoolerLimits, ServerLimits, startup_check

P = 4


def test_a_fleet_multiplies_the_ceiling_and_must_fit_the_server():
    plan = DeploymentPlan(3, 1, 2, P, other_clients=2, hosts=4)
    one_host = Budget(DeploymentPlan(3, 1, 2, P, other_clients=2), ServerLimits(30, 3, 0))
    fleet = Budget(plan, ServerLimits(30, 3, 0))
    assert one_host.fits and plan.ceiling == 20 and plan.fleet_ceiling == 80
    assert not fleet.fits and fleet.needed == 82
    lines = fleet.explain()
    assert "ceiling: 12 + 8 = 20 per host" in lines and "fleet:   4 hosts x ceiling 20 = 80" in lines
    assert lines[-1] == "verdict: 82 of 27 -> DOES NOT FIT (headroom -55)"


def test_behind_pgbouncer_clients_and_servers_are_two_tiers():
    plan = DeploymentPlan(3, 1, 2, P, other_clients=2, hosts=4)
    through = Budget(plan, ServerLimits(30, 3, 0), PoolerLimits(max_client_conn=200, pool_size=10, reserve=2))
    assert through.fits and through.needed == 14  # the server sees PgBouncer's pool, not the fleet
    assert "clients: fleet 80 of PgBouncer's max_client_conn 200 -> fits (headroom 120)" in through.explain()
    assert through.explain()[-1] == "verdict: clients 80 of 200, servers 14 of 27 -> fits (headroom 13)"
    few_clients = Budget(plan, ServerLimits(30, 3, 0), PoolerLimits(max_client_conn=60, pool_size=10))
    assert not few_clients.fits and "80 of PgBouncer's max_client_conn 60 -> DOES NOT FIT" in few_clients.explain()[4]
    big_pool = Budget(plan, ServerLimits(30, 3, 0), PoolerLimits(max_client_conn=200, pool_size=30))
    assert not big_pool.fits and "DOES NOT FIT" in big_pool.explain()[-1]


def test_startup_check_counts_every_host_in_one_line(monkeypatch, caplog):
    """DB_BUDGET_HOSTS: a host alone refuses what the fleet could not hold (the session server has 297 slots)."""
    monkeypatch.setenv("DB_POOL_SIZE", str(P))
    monkeypatch.setenv("DB_BUDGET_HOSTS", "3")
    with caplog.at_level(logging.INFO, logger="forkpool.budget"):
        lines = startup_check("web", processes=8, threads=1)
    assert lines == ["web: 3 hosts x 8 processes x pool 4 = 96 connections (+ 0 for other clients) "
                     "of 297 available (max_connections 300 - reserved 3)"]
    monkeypatch.setenv("DB_BUDGET_HOSTS", "10")
    with pytest.raises(forkpool.ConfigError) as refused:
        startup_check("web", processes=8, threads=1)
    assert str(refused.value) == ("web: 10 hosts x 8 processes x pool 4 = 320 connections (+ 0 for other clients) "
                                  "of 297 available (max_connections 300 - reserved 3): does not fit "
                                  "(DB_BUDGET_CHECK=warn or off to start anyway)")


def test_startup_check_behind_pgbouncer_counts_against_max_client_conn(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")  # never asked: offline
    monkeypatch.setenv("DB_POOL_SIZE", str(P))
    monkeypatch.setenv("DB_BUDGET_HOSTS", "4")
    monkeypatch.setenv("DB_BUDGET_MAX_CLIENT_CONN", "100")
    assert startup_check("worker", processes=5, threads=1) == [
        "worker: 4 hosts x 5 processes x pool 4 = 80 connections (+ 0 for other clients) "
        "of PgBouncer's max_client_conn 100 (DB_BUDGET_MAX_CLIENT_CONN)"]
    monkeypatch.setenv("DB_BUDGET_MAX_CLIENT_CONN", "60")
    with pytest.raises(forkpool.ConfigError, match="= 80 connections .* max_client_conn 60 .*: does not fit"):
        startup_check("worker", processes=5, threads=1)
