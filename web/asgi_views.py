"""The suite's HTTP API on the asyncio pool: web/views.py's endpoints, for the ASGI app.

Same paths, bodies, statuses and headers as the Flask app (web/api.py holds
what both share). Queries go through ``await forkpool.get_async_pool()`` and
Redis through ``forkpool.redis.get_async_redis()``, on the event loop. Celery's
producer is not async (kombu publishes on blocking sockets and sleeps between
retries), so publishing and reading results run in the worker's thread pool
(``in_thread``), never on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery.result import AsyncResult
from psycopg.types.json import Jsonb
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import forkpool
import forkpool.health
import forkpool.identity
import forkpool.redis
from suite.jobs import JOB_ADAPTER, TASK_FOR_KIND
from suite.queue import get_celery

from .api import ITEM_COLUMNS, JOB_TTL_SECONDS, PUBLISH_RETRY, is_uuid, item_json, item_page, job_key
from .schemas import BIGINT_MAX, LIMIT_DEFAULT, LIMIT_MAX, ItemIn, ValidationFailed, int_param, validate_body

T = TypeVar("T")

READY_TIMEOUT = 2.0


async def in_thread(request: Request, call: Callable[[], T]) -> T:
    """Run blocking `call` in the app's thread pool (made at lifespan startup), off the event loop."""
    executor = getattr(request.app.state, "executor", None)  # None: the loop's default pool (no lifespan ran)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _is_json(content_type: str) -> bool:
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


async def json_body(request: Request) -> Any:
    """The request's JSON: 415 unless declared JSON, 413 past the size limit, 400 when it does not parse."""
    if not _is_json(request.headers.get("content-type", "")):
        raise HTTPException(415)
    limit: int = request.app.state.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413)
    raw = bytearray()
    async for chunk in request.stream():  # chunked bodies have no length: count while reading
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413)
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValidationFailed("the body is nested too deeply") from None
    except ValueError:  # malformed JSON, or bytes in no Unicode encoding
        raise HTTPException(400) from None


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def readyz(request: Request) -> Response:
    await forkpool.get_async_pool()  # the app's pool is checked even before its first query
    pools = await forkpool.health.async_health_check(timeout=READY_TIMEOUT)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await forkpool.redis.get_async_redis().ping()
        redis_state: dict[str, Any] = {"ok": True, "error": None}
    except (TimeoutError, redis.RedisError) as exc:
        redis_state = {"ok": False, "error": type(exc).__name__}
    ready = bool(pools) and all(p["ok"] for p in pools.values()) and redis_state["ok"]
    body = {"ready": ready, "pid": os.getpid(), "pools": pools, "redis": redis_state}
    return JSONResponse(body, status_code=200 if ready else 503)


async def pool_info(request: Request) -> Response:
    pool = await forkpool.get_async_pool()
    return JSONResponse(
        {
            "pid": os.getpid(),
            "role": forkpool.identity.process_role(),
            "suite_id": forkpool.identity.name(),
            "pool": pool.stats(),
            "pools": forkpool.health.async_stats(),
        }
    )


async def prometheus_metrics(request: Request) -> Response:
    """The whole suite's pool metrics when PROMETHEUS_MULTIPROC_DIR is shared (files read off the loop)."""
    from forkpool import metrics

    def render() -> bytes:
        metrics.export_process()
        return metrics.render_metrics()

    return Response(await in_thread(request, render), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})


async def items(request: Request) -> Response:
    return await (create_item(request) if request.method == "POST" else list_items(request))


async def create_item(request: Request) -> Response:
    item = validate_body(ItemIn, await json_body(request))
    pool = await forkpool.get_async_pool()
    async with pool.connection() as conn:  # committed when the block ends, before the answer
        cur = await conn.execute(
            f"INSERT INTO items (name, payload) VALUES (%s, %s) RETURNING {ITEM_COLUMNS}",
            (item.name, None if item.payload is None else Jsonb(item.payload)),
        )
        row = await cur.fetchone()
    return JSONResponse(item_json(row), status_code=201, headers={"Location": f"/items/{row[0]}"})


async def list_items(request: Request) -> Response:
    limit = int_param(request.query_params, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    after = int_param(request.query_params, "after", 0, 0, BIGINT_MAX)
    pool = await forkpool.get_async_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
        rows = await cur.fetchall()
    return JSONResponse(item_page(rows, limit))


async def get_item(request: Request) -> Response:
    item_id: int = request.path_params["item_id"]
    if item_id > BIGINT_MAX:
        raise HTTPException(404, f"no item {item_id}")
    pool = await forkpool.get_async_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,))
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no item {item_id}")
    return JSONResponse(item_json(row))


def _publish(kind: str, kwargs: dict[str, Any], job_id: str) -> None:
    # In a thread: kombu connects, publishes and retries on blocking sockets.
    get_celery().send_task(TASK_FOR_KIND[kind], kwargs=kwargs, task_id=job_id, retry=True, retry_policy=PUBLISH_RETRY)


async def enqueue_job(request: Request) -> Response:
    job = validate_body(JOB_ADAPTER, await json_body(request))
    job_id = str(uuid.uuid4())
    client = forkpool.redis.get_async_redis()
    # Remember the id first, so GET /jobs/<id> knows it the moment a worker might
    # (a failed publish leaves the key to expire: web/api.py, PUBLISH_RETRY).
    await client.set(job_key(job_id), job.kind, ex=JOB_TTL_SECONDS)
    await in_thread(request, functools.partial(_publish, job.kind, job.args.model_dump(), job_id))
    return JSONResponse({"id": job_id, "kind": job.kind}, status_code=202, headers={"Location": f"/jobs/{job_id}"})


def _result(job_id: str) -> dict[str, Any]:
    # In a thread: every property of AsyncResult may ask the result backend (blocking Redis).
    result = AsyncResult(job_id, app=get_celery())
    found: dict[str, Any] = {"state": result.state}
    if result.successful():
        found["result"] = result.result
    elif result.failed():
        found["error"] = type(result.result).__name__
    return found


async def job_status(request: Request) -> Response:
    job_id: str = request.path_params["job_id"]
    kind = await forkpool.redis.get_async_redis().get(job_key(job_id)) if is_uuid(job_id) else None
    if kind is None:
        raise HTTPException(404, "no such job")
    body = {"id": job_id, "kind": kind.decode(), **await in_thread(request, functools.partial(_result, job_id))}
    return JSONResponse(body)


def routes() -> list[Route]:
    # One Route per path, so a wrong method gets 405 with every allowed method in Allow.
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/pool", pool_info, methods=["GET"]),
        Route("/metrics", prometheus_metrics, methods=["GET"]),
        Route("/items", items, methods=["GET", "POST"]),
        Route("/items/{item_id:int}", get_item, methods=["GET"]),
        Route("/jobs", enqueue_job, methods=["POST"]),
        Route("/jobs/{job_id}", job_status, methods=["GET"]),
    ]
