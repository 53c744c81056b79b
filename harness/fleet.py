"""A fleet: N copies of the suite on this machine, standing for N hosts.

Each host is what one machine of a real deployment runs: its own Gunicorn
master (and its uvicorn tier), its own Celery main process, its own metrics
directory, all with ``HOST_LABEL=h<i>``, so every connection says which host it
belongs to: ``<suite-id>:<role>@h2:<pid>``. The host label sits inside the role
so that everything which splits ``suite:role:pid`` keeps working, and grouping
by role groups by role and host. All hosts share one PostgreSQL (or one
PgBouncer), one Redis and one task queue, which the task processes of every host
consume, as a real fleet's would; each host also consumes a queue of its own,
used only by the harness to ask that host's task processes for their stats.

A single host (``--hosts 1``, the default) has no label: its names, queue and
logs are those of every run before fleets existed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from . import checks
from .model import Check, Overlap, Sample
from .processes import RQ, RunningSuite, SuitePlan, SuiteProcess, prepare_suite


def host_labels(hosts: int) -> list[str]:
    """h1, h2, ... for a fleet; one unlabelled host otherwise."""
    return [""] if hosts <= 1 else [f"h{i}" for i in range(1, hosts + 1)]


def qualified(role: str, host: str) -> str:
    """The role as connections carry it: ``web@h1`` on a fleet, ``web`` on one host."""
    return f"{role}@{host}" if host else role


def host_of(role: str) -> str:
    return role.partition("@")[2]


@dataclass
class Fleet:
    hosts: list[RunningSuite]

    @property
    def labels(self) -> list[str]:
        return [suite.plan.host for suite in self.hosts]

    @property
    def servers(self) -> list[SuiteProcess]:
        return [server for suite in self.hosts for server in suite.servers]

    @property
    def master_pids(self) -> list[int]:
        return [pid for suite in self.hosts for pid in suite.master_pids]

    @property
    def ceiling(self) -> int:
        return sum(suite.plan.ceiling for suite in self.hosts)

    def expected(self) -> dict[str, int]:
        """processes x pool size per role, on every host, at rest.

        Under RQ the task tier holds nothing at rest: a work-horse opens its pool
        for its job and closes it after (the ceiling still counts one pool per
        worker, the most its horses can hold at once).
        """
        found: dict[str, int] = {}
        for suite in self.hosts:
            p = suite.plan
            for role, n in checks.expected_by_role(
                p.web_workers, p.worker_concurrency, p.pool_size, p.asgi_workers
            ).items():
                if not (role == checks.WORKER and p.task_runner == RQ):
                    found[qualified(role, p.host)] = n
        return found

    def processes(self) -> dict[str, int]:
        """Processes per (qualified) role holding a pool at rest, for the per-role summaries."""
        found: dict[str, int] = {}
        for suite in self.hosts:
            p = suite.plan
            workers = 0 if p.task_runner == RQ else p.worker_concurrency
            counts = {checks.WEB: p.web_workers, checks.WORKER: workers, checks.ASGI: p.asgi_workers}
            found.update({qualified(role, p.host): n for role, n in counts.items() if n})
        return found

    def stop(self) -> None:
        """Every host at once, as a fleet is stopped: one slow Gunicorn does not hold the others up."""
        stoppers = [
            threading.Thread(target=server.stop, name=f"forkpool-stop-{server.name}") for server in self.servers
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(60)


def start_fleet(plans: list[SuitePlan], log_dir: Path, timeout: float = 90.0) -> Fleet:
    """Start every host's servers side by side, then wait until all of them serve."""
    fleet = Fleet([prepare_suite(plan, log_dir) for plan in plans])
    try:
        for server in fleet.servers:
            server.start()
        for server in fleet.servers:
            server.wait_ready(timeout)
    except BaseException:
        fleet.stop()
        raise
    return fleet


def on_host(sample: Sample, host: str) -> Sample:
    """The part of a sample that one host's processes hold."""
    return Sample(sample.t, {key: n for key, n in sample.sessions.items() if host_of(key[0]) == host}, sample.servers)


def check_fleet_ceiling(
    samples: list[Sample], labels: list[str], host_ceiling: int, pool_size: int
) -> tuple[Check, list[Overlap]]:
    """2 on a fleet: each host never above its own ceiling, and the fleet never above N x ceiling.

    The same tolerance as on one host, host by host: a recycled process and its
    replacement may overlap by one pool for a moment. Hosts recycle on their own,
    so the fleet may be over by one pool per host at once, for as long.
    """
    fleet_check, overlaps = checks.check_ceiling(samples, host_ceiling * len(labels), pool_size * len(labels))
    hosts = {
        host: checks.check_ceiling([on_host(s, host) for s in samples], host_ceiling, pool_size)[0] for host in labels
    }
    peaks = ", ".join(f"{host} {max((on_host(s, host).total for s in samples), default=0)}" for host in labels)
    failed = [host for host, check in hosts.items() if not check.passed]
    detail = (
        f"fleet of {len(labels)} hosts: {fleet_check.detail} (one pool per host); "
        f"peak per host of ceiling {host_ceiling}: {peaks}"
    )
    if failed:
        detail += "; " + "; ".join(f"{host}: {hosts[host].detail}" for host in failed)
    return Check(
        2,
        "under load: no host above its ceiling, the fleet never above N x ceiling (overlaps bounded)",
        fleet_check.passed and not failed,
        detail,
    ), overlaps
