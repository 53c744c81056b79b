"""This process's Redis clients: ``get_redis()``, ``await get_async_redis()``, ``await close_async_redis()``."""

from __future__ import annotations

from .aio_redis import close_async_redis, get_async_redis
from .redis_client import get_redis

__all__ = ["close_async_redis", "get_async_redis", "get_redis"]
