"""The per-process Redis client: one per process, named, fork-aware."""

from __future__ import annotations

import os

import redis

import forkpool
import forkpool.redis


def named_clients(suite_id: str, redis_url: str) -> list[str]:
    observer = redis.Redis.from_url(redis_url)
    try:
        return [c["name"] for c in observer.client_list() if c.get("name", "").startswith(f"{suite_id}:")]
    finally:
        observer.close()


def test_one_named_client_per_process(suite_id, redis_url, monkeypatch):
    monkeypatch.setenv("PROCESS_ROLE", "worker")
    client = forkpool.redis.get_redis()
    assert forkpool.redis.get_redis() is client
    client.ping()
    assert named_clients(suite_id, redis_url) == [f"{suite_id}:worker:{os.getpid()}"]


def test_child_gets_its_own_client_and_parent_keeps_working(suite_id, redis_url):
    parent = forkpool.redis.get_redis()
    parent.set(f"{suite_id}:k", "parent")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        child = forkpool.redis.get_redis()
        child.set(f"{suite_id}:child", "1")
        names = named_clients(suite_id, redis_url)
        ok = child is not parent and f"{suite_id}:app:{os.getpid()}" in names
        os.write(write_fd, b"ok" if ok else repr(names).encode())
        forkpool.close_all()
        os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 500) == b"ok"
    os.waitpid(pid, 0)
    assert parent.get(f"{suite_id}:k") == b"parent"
    assert parent.get(f"{suite_id}:child") == b"1"


def test_redis_client_and_celery_are_bounded_on_a_silent_network():
    """No RST on a dead link: a reply is awaited 5 s, one retry, kernel keepalives and tcp_user_timeout on."""
    import socket

    from forkpool.redis import network_options

    kwargs = forkpool.redis.get_redis().connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 5 and kwargs["socket_connect_timeout"] == 3 and kwargs["socket_keepalive"]
    assert kwargs["socket_keepalive_options"][socket.TCP_USER_TIMEOUT] == 10000
    assert forkpool.redis.get_redis().get_retry().get_retries() == 1
    from workers import celeryconfig

    assert celeryconfig.broker_transport_options["socket_timeout"] == 5
    assert celeryconfig.broker_transport_options["health_check_interval"] == 5
    assert celeryconfig.redis_socket_timeout == network_options()["socket_timeout"]
