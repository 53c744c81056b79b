"""Which processes to examine, and where the database and Redis servers listen.

Process trees: the masters given with ``--pid``, or every Gunicorn arbiter and
Celery main process on this host, each with all its descendants. A master is
the root of its tree; every other process in it is a worker. A root with no
children (a plain process given with ``--pid``) is "single": no master rules.

Servers: a PostgreSQL or Redis endpoint is known from a DSN / Redis URL (also
remote ones), and from the listening sockets of local ``postgres`` and
``redis-server`` processes, so connections of any driver are recognised
without any configuration of the examined application.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .. import _sockets as procfs
from ..errors import import_extra

POSTGRESQL, REDIS = "postgresql", "redis"
_SERVER_PROCESSES = {"postgres": POSTGRESQL, "postmaster": POSTGRESQL, "redis-server": REDIS}


@dataclass
class Examined:
    """One process of an examined tree."""

    pid: int
    ppid: int
    tree: int  # the master's pid
    role: str  # "master" (a tree's root with workers), "worker", or "single" (a root without children)
    server: str  # "gunicorn", "celery" or "process" (a --pid tree of something else)
    name: str
    cmdline: str


@dataclass
class Servers:
    """Where PostgreSQL and Redis listen: exact TCP endpoints, wildcard ports, Unix socket paths."""

    tcp: dict[tuple[str, int], str] = field(default_factory=dict)
    any_local_ip: dict[int, str] = field(default_factory=dict)  # port -> kind, for 0.0.0.0 / :: listeners
    unix: dict[str, str] = field(default_factory=dict)
    local_ips: set[str] = field(default_factory=set)

    def tcp_kind(self, remote: tuple[str, int]) -> str | None:
        kind = self.tcp.get(remote)
        if kind is None and remote[1] in self.any_local_ip and remote[0] in self.local_ips:
            kind = self.any_local_ip[remote[1]]
        return kind

    def unix_kind(self, path: str) -> str | None:
        return self.unix.get(path)

    def describe(self) -> list[str]:
        return sorted(
            {f"{kind} {ip}:{port}" for (ip, port), kind in self.tcp.items()}
            | {f"{kind} *:{port}" for port, kind in self.any_local_ip.items()}
            | {f"{kind} {path}" for path, kind in self.unix.items()}
        )


def psutil_module() -> Any:
    return import_extra("psutil", "doctor", "forkpool doctor")


def find_trees(master_pids: Iterable[int] | None = None) -> list[Examined]:
    """The processes to examine: given masters' trees, or every Gunicorn and Celery tree found."""
    psutil = psutil_module()
    masters = list(master_pids or [])
    if not masters:
        masters = [p.pid for p in psutil.process_iter(["pid"]) if _is_master(p)]
    found: list[Examined] = []
    seen: set[int] = set()
    for pid in masters:
        try:
            master = psutil.Process(pid)
            kind = server_kind(master) or "process"
            members = [master] + master.children(recursive=True)
        except psutil.Error:
            continue
        for proc in members:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                role = "worker" if proc.pid != pid else "master" if len(members) > 1 else "single"
                found.append(
                    Examined(proc.pid, proc.ppid(), pid, role, kind, proc.name(), " ".join(proc.cmdline())[:200])
                )
            except psutil.Error:
                continue  # exited while we looked
    return found


def server_kind(proc: Any) -> str | None:
    """ "gunicorn" or "celery" when `proc` runs one (by its command line), else None."""
    try:
        argv = proc.cmdline()
    except Exception:  # noqa: BLE001 - psutil.Error, or the process is gone
        return None
    title = " ".join(argv[:2])
    words = [os.path.basename(a) for a in argv[:4]]
    if "gunicorn" in words or title.startswith("gunicorn:"):
        return "gunicorn"
    if ("celery" in words and "worker" in argv) or title.startswith("[celeryd"):
        return "celery"
    return None


def _is_master(proc: Any) -> bool:
    kind = server_kind(proc)
    if kind is None:
        return False
    try:
        parent = proc.parent()
    except Exception:  # noqa: BLE001
        return True
    return parent is None or server_kind(parent) != kind


def find_servers(database_url: str | None, redis_url: str | None) -> Servers:
    """Endpoints from the URLs given, and from local postgres / redis-server listeners."""
    psutil = psutil_module()
    servers = Servers(local_ips=_local_ips(psutil))
    if database_url:
        _add_database_url(servers, database_url)
    if redis_url:
        _add_redis_url(servers, redis_url)
    tcp_tables: dict[int | None, dict[int, procfs.TcpSocket]] = {}
    unix_tables: dict[int | None, dict[int, procfs.UnixSocket]] = {}
    for proc in psutil.process_iter(["pid", "name"]):
        kind = _SERVER_PROCESSES.get(proc.info["name"] or "")
        if kind is None:
            continue
        ns = procfs.netns_of(proc.pid)
        if ns not in tcp_tables:
            tcp_tables[ns] = procfs.tcp_table(proc.pid)
            unix_tables[ns] = procfs.unix_table(proc.pid)
        for inode in procfs.socket_inodes(proc.pid):
            tcp = tcp_tables[ns].get(inode)
            if tcp is not None and tcp.state == procfs.TCP_LISTEN:
                ip, port = tcp.local
                if ip in ("0.0.0.0", "::"):
                    servers.any_local_ip[port] = kind
                else:
                    servers.tcp[(ip, port)] = kind
            unix = unix_tables[ns].get(inode)
            if unix is not None and unix.listening and unix.path:
                servers.unix[unix.path] = kind
    return servers


def _local_ips(psutil: Any) -> set[str]:
    ips = {"127.0.0.1", "::1"}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                ips.add(address.address.split("%")[0])
    return ips


def _add_database_url(servers: Servers, url: str) -> None:
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(url)
    hosts = (params.get("host") or "/var/run/postgresql").split(",")
    ports = (params.get("port") or "5432").split(",")
    for number, host in enumerate(hosts):
        port = int(ports[min(number, len(ports) - 1)])
        if host.startswith("/"):
            servers.unix[f"{host}/.s.PGSQL.{port}"] = POSTGRESQL
        else:
            for ip in _resolve(host, port):
                servers.tcp[(ip, port)] = POSTGRESQL


def _add_redis_url(servers: Servers, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        servers.unix[parts.path] = REDIS
        return
    port = parts.port or 6379
    for ip in _resolve(parts.hostname or "localhost", port):
        servers.tcp[(ip, port)] = REDIS


def _resolve(host: str, port: int) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return set()
