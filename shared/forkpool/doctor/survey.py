"""One look at a deployment: each examined process's connections, and the servers' sessions matched to them.

A connection here is a socket (by inode) whose far end is a known PostgreSQL or
Redis endpoint. The same inode in several processes is one socket they share.
Server sessions come from ``pg_stat_activity`` (and Redis ``CLIENT LIST``) and
are matched to client processes by the client's address and port (TCP), or,
for a server on this host reached over a Unix socket, by the peer of the
backend's own socket.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .. import _sockets as procfs
from .discovery import POSTGRESQL, REDIS, Examined, Servers


@dataclass
class Connection:
    inode: int
    kind: str  # postgresql | redis
    transport: str  # tcp | unix
    client: str  # "ip:port" of the client end, or "unix"
    server: str  # "ip:port" or the socket path
    pids: list[int] = field(default_factory=list)  # examined processes holding it
    closed_by_server: bool = False  # the server closed it (TCP CLOSE_WAIT); its holder has not noticed


@dataclass
class Session:
    kind: str
    server_id: str  # backend pid (PostgreSQL) or client id (Redis)
    name: str  # application_name / client name
    client: str  # "ip:port", or "unix"
    state: str
    idle_in_transaction_s: float | None
    client_pid: int | None = None  # the process holding the client end, when found on this host
    where: str = "unknown"  # "tree" | "outside" | "gone" | "remote" | "unknown"


@dataclass
class Survey:
    processes: list[Examined]
    connections: dict[int, Connection]  # by inode
    sessions: list[Session]
    servers: list[str]
    took_ms: float
    # pid -> inodes of its sockets that no kernel table lists any more (kernel_sockets.listed_socket_inodes)
    dead_sockets: dict[int, list[int]] = field(default_factory=dict)


def survey(processes: list[Examined], servers: Servers, database_url: str | None, redis_url: str | None) -> Survey:
    started = time.perf_counter()
    connections = connections_of(processes, servers)
    dead = dead_sockets_of(processes)
    sessions: list[Session] = []
    if database_url:
        sessions += match(postgres_sessions(database_url), connections, processes, servers.local_ips)
    if redis_url:
        sessions += match(redis_clients(redis_url), connections, processes, servers.local_ips)
    return Survey(processes, connections, sessions, servers.describe(), (time.perf_counter() - started) * 1000, dead)


def connections_of(processes: list[Examined], servers: Servers) -> dict[int, Connection]:
    """Every socket of an examined process whose far end is a known server, with who holds it."""
    found: dict[int, Connection] = {}
    tables: dict[int | None, tuple[dict[int, procfs.TcpSocket], dict[int, procfs.UnixSocket]]] = {}
    for proc in processes:
        ns = procfs.netns_of(proc.pid)
        if ns not in tables:
            tables[ns] = (procfs.tcp_table(proc.pid), procfs.unix_table(proc.pid))
        tcp, unix = tables[ns]
        for inode in procfs.socket_inodes(proc.pid):
            conn = found.get(inode) or _classify(inode, tcp, unix, servers)
            if conn is None:
                continue
            found[inode] = conn
            if proc.pid not in conn.pids:
                conn.pids.append(proc.pid)
    return found


def dead_sockets_of(processes: list[Examined]) -> dict[int, list[int]]:
    """Each examined process's socket descriptors whose socket no kernel table lists: connections that are gone."""
    listed: dict[int | None, set[int]] = {}
    found: dict[int, list[int]] = {}
    for proc in processes:
        ns = procfs.netns_of(proc.pid)
        if ns not in listed:
            listed[ns] = procfs.listed_socket_inodes(proc.pid)
        unlisted = [inode for inode in procfs.socket_inodes(proc.pid) if inode not in listed[ns]]
        if unlisted:
            # Once more, read after the descriptors: a socket opened since the tables
            # were read is listed now, and is not taken for a dead one.
            listed[ns] = procfs.listed_socket_inodes(proc.pid)
            dead = sorted(inode for inode in unlisted if inode not in listed[ns])
            if dead:
                found[proc.pid] = dead
    return found


def _classify(
    inode: int, tcp: dict[int, procfs.TcpSocket], unix: dict[int, procfs.UnixSocket], servers: Servers
) -> Connection | None:
    entry = tcp.get(inode)
    if entry is not None:
        if entry.state not in (procfs.TCP_ESTABLISHED, procfs.TCP_CLOSE_WAIT):
            return None
        kind = servers.tcp_kind(entry.remote)
        if kind is None:
            return None
        return Connection(
            inode,
            kind,
            "tcp",
            _ep(entry.local),
            _ep(entry.remote),
            closed_by_server=entry.state == procfs.TCP_CLOSE_WAIT,
        )
    sock = unix.get(inode)
    if sock is None or sock.listening or not sock.peer:
        return None
    peer = unix.get(sock.peer)
    # An accepted Unix socket carries its listener's path: that is how a client's
    # unnamed socket is known to lead to PostgreSQL.
    if peer is None:
        return None
    kind = servers.unix_kind(peer.path)
    if kind is None:
        return None
    return Connection(inode, kind, "unix", "unix", peer.path)


def postgres_sessions(database_url: str) -> list[Session]:
    import psycopg2

    conn = psycopg2.connect(database_url, application_name="forkpool-doctor", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid, coalesce(application_name, ''), host(client_addr), client_port, coalesce(state, ''),"
                " CASE WHEN state LIKE 'idle in transaction%%'"
                "  THEN extract(epoch FROM now() - state_change) END"
                " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    return [
        Session(
            POSTGRESQL,
            str(pid),
            name,
            f"{addr}:{port}" if addr else "unix",
            state,
            float(idle) if idle is not None else None,
        )
        for pid, name, addr, port, state, idle in rows
    ]


def redis_clients(redis_url: str) -> list[Session]:
    from ..errors import import_extra

    redis = import_extra("redis", "redis", "forkpool doctor --redis-url")
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5, client_name="forkpool-doctor")
    try:
        me = client.client_id()
        rows = client.client_list()
    finally:
        client.close()
    sessions = []
    for row in rows:
        if str(row.get("id")) == str(me):
            continue
        addr = row.get("addr", "")
        client_end = "unix" if addr.startswith("/") or (row.get("fd") == "-1" and not addr) else addr
        sessions.append(Session(REDIS, str(row.get("id")), row.get("name", ""), client_end, row.get("cmd", ""), None))
    return sessions


def match(
    sessions: list[Session], connections: dict[int, Connection], processes: list[Examined], local_ips: set[str]
) -> list[Session]:
    """Find each session's client process: in an examined tree, elsewhere on this host, or gone."""
    by_client = {(c.kind, c.client): c for c in connections.values() if c.transport == "tcp"}
    examined = {p.pid for p in processes}
    in_use: set[tuple[str, int]] | None = None
    owners: dict[int, int] | None = None
    tcp_here: dict[int, procfs.TcpSocket] | None = None
    for session in sessions:
        if session.client == "unix":
            session.where, session.client_pid = _match_unix(session, connections, examined)
            continue
        conn = by_client.get((session.kind, session.client))
        if conn is not None:
            session.client_pid, session.where = conn.pids[0], "tree"
            continue
        ip, _, port = session.client.rpartition(":")
        if in_use is None:
            in_use, tcp_here = procfs.tcp_endpoints_in_use(), procfs.tcp_table()
        if (ip, int(port)) not in in_use:
            # No socket of this host's namespace has that address: the client is on
            # another host (or in another namespace), unless the address is ours.
            session.where = "gone" if ip in local_ips or _is_loopback(ip) else "remote"
            continue
        if owners is None:
            owners = inode_owners()
        inode = next((i for i, s in (tcp_here or {}).items() if s.local == (ip, int(port))), 0)
        session.client_pid = owners.get(inode)
        session.where = "outside" if session.client_pid else "gone"
    return sessions


def _match_unix(session: Session, connections: dict[int, Connection], examined: set[int]) -> tuple[str, int | None]:
    if session.kind != POSTGRESQL:
        return "unknown", None
    peers = procfs.unix_peers()
    for inode in procfs.socket_inodes(int(session.server_id)):  # the backend's own sockets
        client_inode = peers.get(inode)
        if not client_inode:
            continue
        conn = connections.get(client_inode)
        if conn is not None and conn.pids:
            return "tree", conn.pids[0]
        owner = inode_owners().get(client_inode)
        return ("outside", owner) if owner else ("gone", None)
    return "unknown", None  # a server on another host, or not ours to read


def inode_owners() -> dict[int, int]:
    """Socket inode -> a pid holding it, over every process this user can read (the slow path)."""
    owners: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for inode in procfs.socket_inodes(int(entry)):
                owners.setdefault(inode, int(entry))
    return owners


def _ep(endpoint: tuple[str, int]) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"
