"""What the operating system says about sockets: read from /proc and netlink, never from the sockets.

Linux only. A process's open sockets are its ``/proc/PID/fd`` links to
``socket:[INODE]``; the inode is the socket's identity, so the same inode in
two processes is one socket shared by both (an inheritance across fork nobody
undid). TCP endpoints come from ``/proc/PID/net/tcp{,6}`` (the table of that
process's network namespace). For Unix sockets the kernel's ``sock_diag``
netlink interface gives each socket's peer (``ss -x`` uses it): a client's
socket has no path of its own, but its peer (the server's accepted socket)
carries the listening path, such as ``/run/postgresql/.s.PGSQL.5432``.

Nothing here writes to, reads from, or attaches to an examined process: every
fact comes from the kernel's tables, or, for this process's own sockets, from
getpeername() on a duplicate descriptor (``own_peer``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ._endpoints import Endpoints

TCP_ESTABLISHED = 0x01
TCP_CLOSE_WAIT = 0x08  # the peer closed; this end has not (yet)
TCP_LISTEN = 0x0A
_UNIX_LISTENING = 0x00010000  # __SO_ACCEPTCON in /proc/net/unix's Flags


@dataclass(frozen=True)
class TcpSocket:
    inode: int
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int


@dataclass(frozen=True)
class UnixSocket:
    inode: int
    path: str  # "" for an unnamed socket
    listening: bool
    peer: int = 0  # the peer's inode (sock_diag), 0 if unknown or none


_devnull_fd: int | None = None


def devnull_fd() -> int:
    """One descriptor on /dev/null for this process, to point unwanted inherited sockets at."""
    global _devnull_fd
    if _devnull_fd is None:
        _devnull_fd = os.open(os.devnull, os.O_RDWR)
    return _devnull_fd


def socket_inodes(pid: int | str) -> list[int]:
    """Inodes of the sockets `pid` has open; [] if it is gone or not ours to read."""
    return list(socket_fds(pid).values())


def socket_fds(pid: int | str) -> dict[int, int]:
    """`pid`'s open sockets: file descriptor -> socket inode ({} if it is gone or not ours to read)."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    found = {}
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found[int(name)] = int(target[8:-1])
    return found


def netns_of(pid: int) -> int | None:
    """The inode of `pid`'s network namespace: processes with the same one share TCP tables."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _tcp_lines(pid: int | str) -> Iterator[tuple[list[str], int]]:
    """The split lines of `pid`'s namespace's TCP tables, with their address family."""
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as stream:
                next(stream)
                for line in stream:
                    yield line.split(), family
        except (OSError, StopIteration):
            continue


def tcp_table(pid: int | str = "self", inodes: set[int] | None = None) -> dict[int, TcpSocket]:
    """Every TCP socket of `pid`'s network namespace held by a process, by inode; only `inodes` if given.

    The namespace's table holds every socket of the machine (or container),
    TIME_WAIT ones too: tens of thousands after a load test. Endpoints are
    decoded only for sockets a process holds (and among those, only `inodes`):
    that costs a third of decoding them all.
    """
    table: dict[int, TcpSocket] = {}
    for fields, family in _tcp_lines(pid):
        inode = int(fields[9])
        if not inode or (inodes is not None and inode not in inodes):
            continue  # no process holds it (TIME_WAIT, ...), or not one asked about
        table[inode] = TcpSocket(
            inode, _hex_endpoint(fields[1], family), _hex_endpoint(fields[2], family), int(fields[3], 16)
        )
    return table


def tcp_endpoints_in_use(pid: int | str = "self") -> set[tuple[str, int]]:
    """Local (address, port) of every established TCP socket in `pid`'s namespace, held or not."""
    return {
        _hex_endpoint(fields[1], family) for fields, family in _tcp_lines(pid) if int(fields[3], 16) == TCP_ESTABLISHED
    }


# Every socket table of a network namespace, with the column of each line that holds the inode.
_SOCKET_TABLES = (
    ("tcp", 9),
    ("tcp6", 9),
    ("udp", 9),
    ("udp6", 9),
    ("udplite", 9),
    ("udplite6", 9),
    ("raw", 9),
    ("raw6", 9),
    ("unix", 6),
    ("netlink", 9),
    ("packet", 8),
)


def listed_socket_inodes(pid: int | str = "self") -> set[int]:
    """Inodes of every socket that a socket table of `pid`'s network namespace lists.

    A process's socket that none lists is dead: a TCP socket the peer reset, or
    that finished closing, leaves every table, yet its descriptor stays open until
    the process closes it, and a pool would still hand it out. (A socket never
    bound nor connected is listed nowhere either; a server at rest holds none.)
    """
    listed: set[int] = set()
    for name, column in _SOCKET_TABLES:
        try:
            with open(f"/proc/{pid}/net/{name}") as stream:
                next(stream)
                for line in stream:
                    fields = line.split()
                    if len(fields) > column and fields[column].isdigit():
                        listed.add(int(fields[column]))
        except (OSError, StopIteration):
            continue
    return listed


def unix_table(pid: int | str = "self") -> dict[int, UnixSocket]:
    """Every Unix socket of `pid`'s namespace, by inode, with peers where the kernel says."""
    table: dict[int, UnixSocket] = {}
    try:
        with open(f"/proc/{pid}/net/unix") as stream:
            next(stream)
            for line in stream:
                fields = line.split()
                inode = int(fields[6])
                path = fields[7] if len(fields) > 7 else ""
                table[inode] = UnixSocket(inode, path, bool(int(fields[3], 16) & _UNIX_LISTENING))
    except (OSError, StopIteration):
        return table
    for inode, peer in unix_peers().items():
        if inode in table:
            old = table[inode]
            table[inode] = UnixSocket(old.inode, old.path, old.listening, peer)
    return table


# sock_diag (linux/sock_diag.h, linux/unix_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_UDIAG_SHOW_PEER = 0x4
_UNIX_DIAG_PEER = 2


def unix_peers() -> dict[int, int]:
    """Each connected Unix socket's peer inode, in this process's network namespace ({} if unavailable)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except OSError:
        return {}
    peers: dict[int, int] = {}
    with sock:
        request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_PEER, 0, 0)
        header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        sock.sendall(header + request)
        while True:
            data = sock.recv(65536)
            if not data:
                return peers
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                    return peers
                inode = struct.unpack_from("=I", data, offset + 20)[0]  # unix_diag_msg.udiag_ino
                attr = offset + 16 + 16
                end = offset + length
                while attr + 4 <= end:
                    attr_len, attr_type = struct.unpack_from("=HH", data, attr)
                    if attr_len < 4:
                        break
                    if attr_type == _UNIX_DIAG_PEER:
                        peers[inode] = struct.unpack_from("=I", data, attr + 4)[0]
                    attr += (attr_len + 3) & ~3
                offset += (length + 3) & ~3


def detach_connected_to(endpoints: Endpoints, *, only_shared_with_parent: bool = False) -> list[int]:
    """Point at /dev/null each of this process's sockets connected to `endpoints`; returns their descriptors.

    For a forked child only: its copies of the parent's connections go nowhere
    from now on, without a byte on the wire and without a lock (the parent's
    sockets are untouched: ``dup2`` replaces this process's reference only).
    Run it before the child opens anything of its own (the at-fork hook), or
    with `only_shared_with_parent`, which leaves alone every socket the parent
    does not hold too (one the child opened itself).
    """
    if not endpoints:
        return []
    theirs: set[int] | None = None
    if only_shared_with_parent:
        theirs = set(socket_inodes(os.getppid()))
        if not theirs:
            return []
    detached = []
    for fd, inode in socket_fds("self").items():
        if theirs is not None and inode not in theirs:
            continue
        if _leads_to(own_peer(fd), endpoints):
            os.dup2(devnull_fd(), fd)
            detached.append(fd)
    return detached


def own_peer(fd: int) -> tuple[str, int] | str | None:
    """Where this process's stream socket `fd` is connected: (address, port), a Unix path, or None.

    Asked with getpeername() on a duplicate descriptor: a question to the kernel
    about our own socket, with nothing sent or read, and closing the duplicate
    leaves the socket to the descriptor it came from. The kernel's tables would
    say the same but cost their whole size (the machine's every TCP socket,
    TIME_WAIT ones too: seconds on a busy host), where this costs a few syscalls
    per socket: a forked child must be up within Celery's 4 s.
    """
    # With a default timeout set (kombu sets one for a while), wrapping a descriptor makes it
    # non-blocking, a flag of the open socket itself: the parent's too. Wrap it without one.
    default = socket.getdefaulttimeout()
    if default is not None:
        socket.setdefaulttimeout(None)
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    finally:
        if default is not None:
            socket.setdefaulttimeout(default)
    try:
        if sock.type != socket.SOCK_STREAM:
            return None
        peer = sock.getpeername()
    except OSError:
        return None  # not connected (listening, or closed meanwhile)
    finally:
        sock.close()
    if sock.family == socket.AF_UNIX:
        # An abstract address comes as bytes; a path as str: the listener's socket file.
        return peer if isinstance(peer, str) else None
    ip = ipaddress.ip_address(str(peer[0]).split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(peer[1])


def _leads_to(peer: tuple[str, int] | str | None, endpoints: Endpoints) -> bool:
    if isinstance(peer, tuple):
        return peer in endpoints.tcp
    return peer is not None and peer in endpoints.unix


def _hex_endpoint(text: str, family: int) -> tuple[str, int]:
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    # The kernel prints each 32-bit word in host order (little-endian here).
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)
