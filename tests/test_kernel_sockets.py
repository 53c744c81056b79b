"""What the kernel says about sockets, and the detach of a socket a child shares with its parent."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import redis

from forkpool import _endpoints as endpoints
from forkpool import _sockets as kernel_sockets


def test_a_process_sees_its_own_tcp_socket_by_inode_with_both_ends(redis_url):
    parts = urlsplit(redis_url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        inode = kernel_sockets.socket_fds("self")[sock.fileno()]
        entry = kernel_sockets.tcp_table()[inode]
        assert entry.state == kernel_sockets.TCP_ESTABLISHED
        assert entry.local == sock.getsockname()[:2] and entry.remote == (parts.hostname, parts.port)
        assert inode in kernel_sockets.socket_inodes(os.getpid())


def test_a_child_detaches_what_it_shares_with_its_parent_and_nothing_it_opened(redis_url):
    parts = urlsplit(redis_url)
    redis_endpoints = endpoints.url(redis_url, 6379)
    assert (parts.hostname, parts.port) in redis_endpoints.tcp
    client = redis.Redis.from_url(redis_url)
    client.ping()
    inherited = client.connection_pool._available_connections[0]._sock.fileno()  # the test's own
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            own = socket.create_connection((parts.hostname, parts.port))
            detached = kernel_sockets.detach_connected_to(redis_endpoints, only_shared_with_parent=True)
            mine = kernel_sockets.socket_fds("self")
            devnull = os.fstat(kernel_sockets.devnull_fd())
            now = os.fstat(inherited)
            # Every detached descriptor is now /dev/null; the child's own socket is not among them.
            ok = (
                inherited in detached
                and own.fileno() not in detached
                and own.fileno() in mine
                and (now.st_dev, now.st_ino) == (devnull.st_dev, devnull.st_ino)
            )
            os.write(write_fd, b"ok" if ok else f"{detached} {inherited}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    answer = os.read(read_fd, 200)
    os.waitpid(pid, 0)
    assert answer == b"ok", answer
    assert client.ping() is True  # the parent's connection is untouched
    assert inherited in kernel_sockets.socket_fds("self")
    client.close()


def test_own_peer_names_where_a_socket_of_ours_goes_without_reading_the_tables(redis_url, tmp_path):
    parts = urlsplit(redis_url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        assert kernel_sockets.own_peer(sock.fileno()) == (parts.hostname, parts.port)
        assert sock.getpeername() == (parts.hostname, parts.port)  # the duplicate's close left ours open
    path = str(tmp_path / "server.sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)
        assert kernel_sockets.own_peer(client.fileno()) == path  # a client's peer: the listener's socket file
        assert kernel_sockets.own_peer(server.fileno()) is None  # listening: connected to nothing
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        assert kernel_sockets.own_peer(datagram.fileno()) is None


def test_own_peer_leaves_a_blocking_socket_blocking_under_a_default_timeout(redis_url):
    parts = urlsplit(redis_url)
    previous = socket.getdefaulttimeout()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.settimeout(None)  # blocking: the file description has no O_NONBLOCK
        socket.setdefaulttimeout(3.0)  # as kombu does for a while
        try:
            assert kernel_sockets.own_peer(sock.fileno()) == (parts.hostname, parts.port)
            assert socket.getdefaulttimeout() == 3.0
        finally:
            socket.setdefaulttimeout(previous)
        assert os.get_blocking(sock.fileno())  # the socket, shared with a parent after fork, is still blocking
