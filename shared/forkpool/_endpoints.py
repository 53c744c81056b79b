"""Where a client's connections go, resolved to what the kernel's socket tables show.

A protected object's endpoints are resolved once, in the process that protects
it, never in a forked child (no DNS lookup in an at-fork hook): the child only
compares its sockets' far ends with these.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# libpq's usual compiled-in socket directories, for a DSN that names no host.
_DEFAULT_SOCKET_DIRS = ("/var/run/postgresql", "/tmp")
# MySQL / MariaDB client libraries' usual default socket paths (Debian's, the upstream builds').
_MYSQL_DEFAULT_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
MYSQL_PORT = 3306


@dataclass(frozen=True)
class Endpoints:
    tcp: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    unix: frozenset[str] = field(default_factory=frozenset)

    def __or__(self, other: Endpoints) -> Endpoints:
        return Endpoints(self.tcp | other.tcp, self.unix | other.unix)

    def __bool__(self) -> bool:
        return bool(self.tcp or self.unix)


def postgres(dsn: str) -> Endpoints:
    """A PostgreSQL DSN's servers (URL or key=value; several hosts allowed)."""
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(dsn)
    ports = (params.get("port") or "5432").split(",")
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    tcp: set[tuple[str, int]] = set()
    unix: set[str] = set()
    for number, host in enumerate(hosts):
        port = int(ports[min(number, len(ports) - 1)] or 5432)
        if not host:
            unix.update(f"{d}/.s.PGSQL.{port}" for d in _DEFAULT_SOCKET_DIRS)
        elif host.startswith("/"):
            unix.add(f"{host}/.s.PGSQL.{port}")
        else:
            tcp |= resolve(host, port)
    return Endpoints(frozenset(tcp), frozenset(unix))


def mysql(host: str | None, port: int | None = None, unix_socket: str | None = None) -> Endpoints:
    """A MySQL / MariaDB server's endpoints, from a connection's host, port and unix_socket.

    ``localhost`` (and no host) is the default Unix socket to libmysqlclient and
    libmariadb (mysqlclient), TCP to PyMySQL: both are listed.
    """
    if unix_socket:
        return Endpoints(unix=frozenset({unix_socket}))
    port = port or MYSQL_PORT
    if not host or host == "localhost":
        return Endpoints(frozenset(resolve("localhost", port)), frozenset(_MYSQL_DEFAULT_SOCKETS))
    return Endpoints(tcp=frozenset(resolve(host, port)))


def url(url: str, default_port: int) -> Endpoints:
    """A server URL's endpoints (redis://, rediss://, unix://, amqp://, postgresql://...)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return Endpoints(unix=frozenset({parts.path}))
    try:
        port = parts.port or default_port
    except ValueError:
        return Endpoints()
    return Endpoints(tcp=frozenset(resolve(parts.hostname, port))) if parts.hostname else Endpoints()


def resolve(host: str, port: int) -> set[tuple[str, int]]:
    """The (address, port) pairs `host` resolves to, IPv4-mapped addresses as IPv4."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    found = set()
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found.add((str(ip), port))
    return found
