"""The suite's HTTP API in Django: the Flask app's endpoints (web/views.py), statuses and JSON bodies.

Raw SQL on Django's ``connection`` (this thread's, checked out of the native
pool on first use and given back when the request ends), the suite's shapes
and validation (web/api.py, web/schemas.py, suite/jobs.py) and its Celery
producer (suite/queue.py): the same task names and job shapes the Flask app
enqueues, so the harness's load and checks apply unchanged.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery.result import AsyncResult
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from psycopg.types.json import Jsonb

from forkpool import identity
from forkpool.redis import get_redis
from suite.jobs import JOB_ADAPTER, TASK_FOR_KIND
from suite.queue import get_celery
from web.api import ITEM_COLUMNS, JOB_TTL_SECONDS, PUBLISH_RETRY, is_uuid, item_json, item_page, job_key
from web.schemas import BIGINT_MAX, LIMIT_DEFAULT, LIMIT_MAX, ItemIn, ValidationFailed, int_param, validate_body

from .database import health, pool_stats
from .errors import HttpError

View = Callable[..., HttpResponse]


def methods(**handlers: View) -> View:
    """One URL, a view per method (``GET=..., POST=...``); any other method gets the Flask app's JSON 405."""
    allowed = set(handlers) | {"OPTIONS"} | ({"HEAD"} if "GET" in handlers else set())
    allow = ", ".join(sorted(allowed))

    def dispatch(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method  # Gunicorn drops a HEAD response's body
        if method == "OPTIONS":
            response = HttpResponse(status=200)
            response["Allow"] = allow
            return response
        handler = handlers.get(method or "")
        if handler is None:
            raise HttpError(405, headers={"Allow": allow})
        return handler(request, **kwargs)

    return dispatch


def json_body(request: HttpRequest) -> Any:
    """The request's JSON, as Flask's ``request.get_json()`` reads it: 415, 413 and 400 alike."""
    mimetype = (request.content_type or "").lower()
    if not (mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))):
        raise HttpError(415)
    try:
        raw = request.body
    except RequestDataTooBig:  # Content-Length above DATA_UPLOAD_MAX_MEMORY_SIZE (WEB_MAX_BODY_BYTES)
        raise HttpError(413) from None
    try:
        return json.loads(raw)  # bytes: UTF-8/16/32 detected as Flask does
    except RecursionError:
        raise ValidationFailed("the body is nested too deeply") from None
    except ValueError:  # malformed JSON, or bytes that are no Unicode at all
        raise HttpError(400, "Failed to decode JSON object") from None


def item_row(row: tuple) -> tuple:
    # Django's psycopg 3 adapters load jsonb as text (its JSONField decodes it later): decode it here.
    item_id, name, payload, created_at = row
    return item_id, name, None if payload is None else json.loads(payload), created_at


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok", "pid": os.getpid()})


def readyz(request: HttpRequest) -> HttpResponse:
    pools = health()
    try:
        get_redis().ping()
        redis_state: dict[str, Any] = {"ok": True, "error": None}
    except redis.RedisError as exc:
        redis_state = {"ok": False, "error": type(exc).__name__}
    ready = all(p["ok"] for p in pools.values()) and redis_state["ok"]
    body = {"ready": ready, "pid": os.getpid(), "pools": pools, "redis": redis_state}
    return JsonResponse(body, status=200 if ready else 503)


def pool_info(request: HttpRequest) -> HttpResponse:
    return JsonResponse(
        {"pid": os.getpid(), "role": identity.process_role(), "suite_id": identity.name(), "pool": pool_stats()}
    )


def create_item(request: HttpRequest) -> HttpResponse:
    item = validate_body(ItemIn, json_body(request))
    with connection.cursor() as cur:  # autocommit: the INSERT is committed when it returns
        cur.execute(
            f"INSERT INTO items (name, payload) VALUES (%s, %s) RETURNING {ITEM_COLUMNS}",
            (item.name, None if item.payload is None else Jsonb(item.payload)),
        )
        row = item_row(cur.fetchone())
    response = JsonResponse(item_json(row), status=201)
    response["Location"] = f"/items/{row[0]}"
    return response


def get_item(request: HttpRequest, item_id: int) -> HttpResponse:
    if item_id > BIGINT_MAX:
        raise HttpError(404, f"no item {item_id}")
    with connection.cursor() as cur:
        cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,))
        row = cur.fetchone()
    if row is None:
        raise HttpError(404, f"no item {item_id}")
    return JsonResponse(item_json(item_row(row)))


def list_items(request: HttpRequest) -> HttpResponse:
    limit = int_param(request.GET, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    after = int_param(request.GET, "after", 0, 0, BIGINT_MAX)
    with connection.cursor() as cur:
        cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
        rows = [item_row(row) for row in cur.fetchall()]
    return JsonResponse(item_page(rows, limit))


def enqueue_job(request: HttpRequest) -> HttpResponse:
    job = validate_body(JOB_ADAPTER, json_body(request))
    job_id = str(uuid.uuid4())
    # Remember the id first, so GET /jobs/<id> knows it the moment a worker might
    # (a failed publish leaves the key to expire: web/api.py, PUBLISH_RETRY).
    get_redis().set(job_key(job_id), job.kind, ex=JOB_TTL_SECONDS)
    get_celery().send_task(
        TASK_FOR_KIND[job.kind], kwargs=job.args.model_dump(), task_id=job_id, retry=True, retry_policy=PUBLISH_RETRY
    )
    response = JsonResponse({"id": job_id, "kind": job.kind}, status=202)
    response["Location"] = f"/jobs/{job_id}"
    return response


def job_status(request: HttpRequest, job_id: str) -> HttpResponse:
    kind = get_redis().get(job_key(job_id)) if is_uuid(job_id) else None
    if kind is None:
        raise HttpError(404, "no such job")
    result = AsyncResult(job_id, app=get_celery())
    body: dict[str, Any] = {"id": job_id, "kind": kind.decode(), "state": result.state}
    if result.successful():
        body["result"] = result.result
    elif result.failed():
        body["error"] = type(result.result).__name__
    return JsonResponse(body)
