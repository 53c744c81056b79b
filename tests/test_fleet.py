"""Past one machine, without servers: the fleet's and PgBouncer's arithmetic, and the fleet's checks."""

from __future__ import annotations

import pytest

import forkpool
from forkpool.budget import Budget, DeploymentPlan, PoolerLimits, ServerLimits, server_of, startup_check
from harness import checks
from harness.fleet import check_fleet_ceiling, host_labels, on_host
from harness.model import Sample
from harness.processes import SuitePlan, WebServer

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


def test_startup_check_counts_every_host_in_one_line(monkeypatch, database_url, capsys):
    """DB_BUDGET_HOSTS: a host alone refuses what the fleet could not hold (the session server has 297 slots).

    The line names the server, the pool and where its size comes from, and says its verdict on stderr.
    """
    monkeypatch.setenv("DB_POOL_SIZE", str(P))
    monkeypatch.setenv("DB_BUDGET_HOSTS", "3")
    server = server_of(database_url)
    lines = startup_check("web", processes=8, threads=1)
    assert lines == [
        "web: 3 hosts x 8 processes x pool 4 = 96 connections (+ 0 for other clients) "
        f"of 297 available (max_connections 300 - reserved 3) on {server} "
        "[pool 4: forkpool pool 'default' 4 (DB_POOL_SIZE=4)]: fits"
    ]
    assert capsys.readouterr().err == f"forkpool: {lines[0]}\n"
    monkeypatch.setenv("DB_BUDGET_HOSTS", "10")
    with pytest.raises(forkpool.ConfigError) as refused:
        startup_check("web", processes=8, threads=1)
    assert str(refused.value) == (
        "web: 10 hosts x 8 processes x pool 4 = 320 connections (+ 0 for other clients) "
        f"of 297 available (max_connections 300 - reserved 3) on {server} "
        "[pool 4: forkpool pool 'default' 4 (DB_POOL_SIZE=4)]: does not fit "
        "(DB_BUDGET_CHECK=warn or off to start anyway)"
    )


def test_startup_check_behind_pgbouncer_counts_against_max_client_conn(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")  # never asked: offline
    monkeypatch.setenv("DB_POOL_SIZE", str(P))
    monkeypatch.setenv("DB_BUDGET_HOSTS", "4")
    monkeypatch.setenv("DB_BUDGET_MAX_CLIENT_CONN", "100")
    assert startup_check("worker", processes=5, threads=1) == [
        "worker: 4 hosts x 5 processes x pool 4 = 80 connections (+ 0 for other clients) "
        "of PgBouncer's max_client_conn 100 (DB_BUDGET_MAX_CLIENT_CONN) "
        "[pool 4: forkpool pool 'default' 4 (DB_POOL_SIZE=4)]: fits"
    ]
    monkeypatch.setenv("DB_BUDGET_MAX_CLIENT_CONN", "60")
    with pytest.raises(forkpool.ConfigError, match=r"= 80 connections .* max_client_conn 60 .*: does not fit"):
        startup_check("worker", processes=5, threads=1)


def test_a_host_refuses_to_start_when_the_fleet_would_not_fit(database_url, redis_url, tmp_path):
    """Real Gunicorn: 20 hosts x 2 workers x pool 8 = 320 of the session server's 297, refused in one log line."""
    plan = SuitePlan(
        database_url=database_url,
        redis_url=redis_url,
        suite_id="fleettoobig",
        web_workers=2,
        pool_size=8,
        host="h1",
        extra_env={"DB_BUDGET_HOSTS": "20"},
    )
    web = WebServer(plan, tmp_path).start()
    assert web.proc.wait(60) != 0
    refusals = [line for line in web.log_text().splitlines() if "does not fit" in line]
    assert (
        len(refusals) == 1
        and (
            "web: 20 hosts x 2 processes x pool 8 = 320 connections (+ 0 for other clients) "
            "of 297 available (max_connections 300 - reserved 3) on "
            f"{server_of(database_url)} [pool 8: forkpool pool 'default' 8 (DB_POOL_SIZE=8)]"
            ": does not fit"
        )
        in refusals[0]
    ), web.log_text()[-2000:]


def fleet_sample(t: float, h1: int = 2, h2: int = 2) -> Sample:
    return Sample(t, {("web@h1", 11): h1, ("worker@h1", 12): 2, ("web@h2", 21): h2, ("worker@h2", 22): 2})


def test_the_fleet_ceiling_holds_per_host_and_for_the_fleet():
    labels = host_labels(2)
    assert labels == ["h1", "h2"] and host_labels(1) == [""]
    assert on_host(fleet_sample(0), "h2").total == 4
    clean = [fleet_sample(t / 10) for t in range(50)]
    assert check_fleet_ceiling(clean, labels, host_ceiling=4, pool_size=2)[0].passed
    # One host over by a pool for a moment (a recycle overlapping its replacement): tolerated.
    brief = clean[:10] + [fleet_sample(1.0 + t / 10, h1=4) for t in range(5)] + clean[15:]
    assert check_fleet_ceiling(brief, labels, 4, 2)[0].passed
    # One host over for longer than the bound: fails, and says which host, even if the fleet total were fine.
    long = clean[:10] + [fleet_sample(1.0 + t, h1=4) for t in range(8)]
    check, _ = check_fleet_ceiling(long, labels, 4, 2)
    assert not check.passed and "h1: peak 6 of ceiling 4" in check.detail
    # One host over by more than a pool, even briefly: fails.
    much = clean[:10] + [fleet_sample(1.0, h1=5)] + clean[11:]
    assert not check_fleet_ceiling(much, labels, 4, 2)[0].passed


def test_checks_name_hosts_and_writers():
    agree = checks.check_reports_agree(
        {"web@h1": {11: {"size": 2}}, "worker@h1": {12: {"size": 2}}, "web@h2": {21: {"size": 2}}, "worker@h2": {}},
        {11: 2, 12: 2, 21: 2},
        lambda pid: True,
    )
    assert not agree.passed and "no live report from worker@h2" in agree.detail and "1 task@h1" in agree.detail
    keys, rows = ["a", "b"], {"a": 1, "b": 1}
    by_hosts = checks.check_work_done(keys, rows, {"200": 5}, writers={"worker@h1": 1, "worker@h2": 1})
    assert by_hosts.passed and by_hosts.detail.endswith("written by worker@h1 1, worker@h2 1")
    # Behind a pooler that dropped the client's application_name, rows name something else: caught.
    lost = checks.check_work_done(keys, rows, {"200": 5}, writers={"worker": 1, "pgbouncer": 1})
    assert not lost.passed and "not a task process: {'pgbouncer': 1}" in lost.detail
    servers = [Sample(t, {("web", 1): 4}, servers=n) for t, n in enumerate([1, 3, 5, 2])]
    assert checks.check_server_pool(servers, pool_size=4, reserve=1).passed
    over = checks.check_server_pool(servers + [Sample(9, {("web", 1): 4}, servers=6)], pool_size=4, reserve=1)
    assert not over.passed and "peaked at 6 of PgBouncer's pool 4 + reserve 1 = 5" in over.detail
