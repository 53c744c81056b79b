"""The failover under the whole suite's load (`forkpool fault failover --suite`), and the counting it stands on."""

from __future__ import annotations

import json

import psycopg2
import pytest

from harness import suite_failover
from harness.sampler import ServersSampler
from harness.services import ReplicatedPostgres


def test_the_sampler_sums_both_servers_and_counts_a_stopped_one_as_none(pg_pair: ReplicatedPostgres, suite_id):
    """Through a failover the suite's sessions move from one server to the other: the ceiling and the exact
    counts are taken on both, summed; a server that is down holds none (and does not stop the sampling)."""
    conns = [
        psycopg2.connect(server.url, application_name=f"{suite_id}:web:{pid}", connect_timeout=5)
        for server, pid in ((pg_pair.primary, 11), (pg_pair.primary, 12), (pg_pair.standby, 12))
    ]
    sampler = ServersSampler([pg_pair.standby.socket_url, pg_pair.primary.socket_url], suite_id)
    try:
        assert sampler.sample_now().sessions == {("web", 11): 1, ("web", 12): 2}
        pg_pair.stop_primary("immediate")
        assert sampler.sample_now().sessions == {("web", 12): 1}
    finally:
        for conn in conns:
            conn.close()


def test_the_whole_suite_follows_the_primary():
    """The read-only variant (the old primary stays up: the harder one) with a short load: every tier writes on
    the new primary again, no acknowledged item is lost, no task is missing or done twice, none of the suite's
    sessions stays on the old primary, and run_on's checks (the ceiling summed over both servers) pass.
    About 20 s on an idle 2-core machine; the seconds are printed, never asserted."""
    figures, report = suite_failover.suite_run("read-only", duration=10.0)
    print("\nfailover --suite", json.dumps(figures, default=str))
    assert figures["schedule_error"] is None, figures
    assert figures["recovered"], figures
    assert figures["items_acknowledged_before_switch"] > 0, figures  # the switch met a loaded suite
    assert figures["acknowledged_items_lost"] == 0, figures["lost_sample"]
    assert figures["tasks"] > 0 and figures["tasks_missing"] == 0 and figures["tasks_done_twice"] == 0, figures
    assert figures["left_on_old_primary"] == 0, figures
    assert figures["other_non_2xx_during_switch"] == {}, figures  # 503 with Retry-After, never a 500
    failed = [f"{c.number}. {c.name}: {c.detail}" for c in report.checks if not c.behaviour_held]
    assert {c.number for c in report.checks} >= {1, 2, 3, 4, 5, 6, 9}, report.checks  # 9: the switch
    assert not failed, failed
    late = [f"{c.number}. {c.name}: {c.detail}" for c in report.checks if c.behaviour_held and not c.passed]
    if late:
        print("time bounds missed (machine load):", late)


@pytest.mark.parametrize("variant", ["sideways", ""])
def test_a_variant_is_one_of_the_two(variant):
    with pytest.raises(ValueError, match="read-only"):
        suite_failover.SwitchSchedule(None, variant, 1.0, "x:", float, lambda: None, bool)  # type: ignore[arg-type]
