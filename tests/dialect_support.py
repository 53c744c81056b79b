"""What the SQLAlchemy dialect tests see from outside: MariaDB's sessions, sockets and SQLite file handles per process.

Doctor knows PostgreSQL and Redis; for MariaDB and SQLite these read the same
kernel facts themselves: which process holds a socket to a server (its socket
descriptors and the namespace's TCP table, by forkpool.kernel_sockets), which
descriptors are open on a database file (psutil), and whether two processes
hold one open file description of a database file (``kcmp(2)``, the question
"are these two descriptors the same open file", asked of the kernel).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable, Iterable

import psutil

from forkpool._sockets import socket_fds, tcp_table

_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_KCMP_FILE = 0


def mariadb_sessions(
    mariadb, suite_id: str, by: str = "program_name", role: str = "app"
) -> Callable[[], list[tuple[str, int]]]:
    """A lister of the app's MariaDB sessions as (``suite:role:pid``, connection id), like PostgreSQL's `sessions`.

    `by` "program_name": the identity forkpool gave the connection (PyMySQL).
    `by` "_pid": the client pid libmariadb sends by itself (mysqlclient has no
    place for a program name), named here with `role`; our own root session is
    not counted.
    """

    def listing() -> list[tuple[str, int]]:
        if by == "program_name":
            rows = mariadb.execute_as_root(
                "SELECT ATTR_VALUE, PROCESSLIST_ID FROM performance_schema.session_connect_attrs "
                f"WHERE ATTR_NAME = 'program_name' AND ATTR_VALUE LIKE '{suite_id}:%' ORDER BY PROCESSLIST_ID"
            )
            return [(str(name), int(session)) for name, session in rows]
        rows = mariadb.execute_as_root(
            "SELECT a.ATTR_VALUE, a.PROCESSLIST_ID FROM performance_schema.session_connect_attrs a "
            "JOIN information_schema.processlist p ON p.ID = a.PROCESSLIST_ID "
            "WHERE a.ATTR_NAME = '_pid' AND p.USER = 'forkpool' AND a.PROCESSLIST_ID <> CONNECTION_ID() "
            "ORDER BY a.PROCESSLIST_ID"
        )
        return [(f"{suite_id}:{role}:{pid}", int(session)) for pid, session in rows]

    return listing


def sockets_to(pids: Iterable[int], server: tuple[str, int]) -> dict[int, set[int]]:
    """{socket inode: the pids holding it} for every TCP socket of `pids` connected to `server`."""
    holders: dict[int, set[int]] = {}
    for pid in pids:
        for inode in socket_fds(pid).values():
            holders.setdefault(inode, set()).add(pid)
    table = tcp_table("self", set(holders))
    return {inode: pids for inode, pids in holders.items() if inode in table and table[inode].remote == server}


def file_handles(pid: int, path: str) -> list[int]:
    """`pid`'s descriptors open on `path` ([] if it is gone)."""
    try:
        return [handle.fd for handle in psutil.Process(pid).open_files() if handle.path == path]
    except psutil.NoSuchProcess:
        return []


def same_open_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Whether two descriptors are one open file description (an inheritance across fork): kcmp(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_KCMP, pid1, pid2, _KCMP_FILE, fd1, fd2) == 0


def kcmp_available() -> bool:
    if _KCMP is None:
        return False
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        return same_open_file(os.getpid(), fd, os.getpid(), fd)
    finally:
        os.close(fd)


def shared_file_handles(pids: Iterable[int], path: str) -> list[set[int]]:
    """Open file descriptions of `path` held by more than one of `pids`: each as the set of its holders."""
    handles = [(pid, fd) for pid in pids for fd in file_handles(pid, path)]
    groups: list[list[tuple[int, int]]] = []
    for pid, fd in handles:
        for group in groups:
            if same_open_file(group[0][0], group[0][1], pid, fd):
                group.append((pid, fd))
                break
        else:
            groups.append([(pid, fd)])
    return [holders for group in groups if len(holders := {pid for pid, _ in group}) > 1]


def mariadb_client_ports(mariadb) -> set[int]:
    """The client ports of the app's MariaDB sessions (user ``forkpool`` over TCP), from the processlist."""
    rows = mariadb.execute_as_root(
        "SELECT HOST FROM information_schema.processlist WHERE USER = 'forkpool' AND HOST LIKE '%:%'"
    )
    return {int(str(host).rsplit(":", 1)[1]) for (host,) in rows}


def local_ports(pids: Iterable[int], server: tuple[str, int]) -> dict[int, set[int]]:
    """{local port: its holders} of the TCP sockets of `pids` connected to `server`: the server's client ports."""
    inodes = sockets_to(pids, server)
    table = tcp_table("self", set(inodes))
    # A socket closed between the two reads is in no table any more: it holds no port (callers poll).
    return {table[inode].local[1]: holders for inode, holders in inodes.items() if inode in table}
