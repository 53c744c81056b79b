"""The asyncio Redis client: one per process and event loop, named, let go without I/O in a forked child."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis

import forkpool
import forkpool.redis
from tests.conftest import on_devnull


def named_clients(suite_id: str, redis_url: str) -> list[str]:
    observer = redis.Redis.from_url(redis_url)
    try:
        return sorted(c["name"] for c in observer.client_list() if c.get("name", "").startswith(f"{suite_id}:"))
    finally:
        observer.close()


def test_one_named_client_per_loop_closed_at_shutdown(suite_id, redis_url, monkeypatch):
    monkeypatch.setenv("PROCESS_ROLE", "asgi")

    async def main():
        client = forkpool.redis.get_async_redis()
        assert all(forkpool.redis.get_async_redis() is client for _ in range(5))
        assert await client.ping()
        assert named_clients(suite_id, redis_url) == [f"{suite_id}:asgi:{os.getpid()}"]
        await forkpool.redis.close_async_redis()
        assert forkpool.redis.get_async_redis() is not client  # a new one after closing
        await forkpool.redis.close_async_redis()
        return client

    first = asyncio.run(main())
    second = asyncio.run(main())
    assert first is not second  # another loop, another client
    assert named_clients(suite_id, redis_url) == []  # both closed: their connections ended


def test_outside_a_loop_it_refuses():
    with pytest.raises(RuntimeError):
        forkpool.redis.get_async_redis()


def test_a_forked_child_gets_its_own_client_and_the_parent_keeps_its_connection(suite_id, redis_url):
    loop = asyncio.new_event_loop()
    try:

        async def connect():
            client = forkpool.redis.get_async_redis()
            await client.set(f"{suite_id}:k", "parent")
            return client

        parent = loop.run_until_complete(connect())
        [conn] = parent.connection_pool._available_connections  # the socket the child inherits
        fd = conn._writer.transport.get_extra_info("socket").fileno()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                shared = not on_devnull(fd)

                async def child_main():
                    child = forkpool.redis.get_async_redis()
                    await child.set(f"{suite_id}:child", "1")
                    names = named_clients(suite_id, redis_url)
                    await forkpool.redis.close_async_redis()
                    return child is not parent, names

                fresh, names = asyncio.run(child_main())
                ok = fresh and not shared and f"{suite_id}:app:{os.getpid()}" in names
                os.write(write_fd, b"ok" if ok else repr((fresh, shared, names)).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        assert os.read(read_fd, 500) == b"ok"
        os.waitpid(pid, 0)

        async def after():
            assert forkpool.redis.get_async_redis() is parent
            assert await parent.get(f"{suite_id}:k") == b"parent"  # the same connection, still in sync
            assert await parent.get(f"{suite_id}:child") == b"1"
            assert len(parent.connection_pool._available_connections) == 1  # not reconnected
            await forkpool.redis.close_async_redis()

        loop.run_until_complete(after())
    finally:
        loop.close()
    assert named_clients(suite_id, redis_url) == []
