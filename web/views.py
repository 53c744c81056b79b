"""The suite's HTTP API: health, items, jobs, and this process's pool."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import redis
from celery.result import AsyncResult
from flask import Blueprint, Response, abort, jsonify, request
from psycopg2.extras import Json

from forkpool import identity, metrics
from forkpool.flask import db
from forkpool.health import manager_stats, stats
from forkpool.redis import get_redis
from suite.jobs import JOB_ADAPTER, TASK_FOR_KIND
from suite.queue import get_celery

from .api import ITEM_COLUMNS, JOB_TTL_SECONDS, PUBLISH_RETRY, item_json, item_page
from .api import is_uuid as _is_uuid
from .api import job_key as _job_key
from .schemas import BIGINT_MAX, LIMIT_DEFAULT, LIMIT_MAX, ItemIn, ValidationFailed, int_param, validate_body

logger = logging.getLogger("forkpool.web")
api = Blueprint("api", __name__)


def json_body() -> Any:
    try:
        return request.get_json()  # 400 for malformed JSON, 415 when not application/json
    except RecursionError:
        raise ValidationFailed("the body is nested too deeply") from None


@api.get("/healthz")
def healthz():
    return {"status": "ok", "pid": os.getpid()}


@api.get("/readyz")
def readyz():
    pools = db().health(timeout=2.0)
    try:
        get_redis().ping()
        redis_state: dict[str, Any] = {"ok": True, "error": None}
    except redis.RedisError as exc:
        redis_state = {"ok": False, "error": type(exc).__name__}
    ready = bool(pools) and all(p["ok"] for p in pools.values()) and redis_state["ok"]
    body = {"ready": ready, "pid": os.getpid(), "pools": pools, "redis": redis_state}
    return jsonify(body), 200 if ready else 503


@api.get("/pool")
def pool_info():
    return {
        "pid": os.getpid(),
        "role": identity.process_role(),
        "suite_id": identity.name(),
        "pool": db().pool.stats(),
        "pools": stats(),
        "manager": manager_stats(),
    }


@api.get("/metrics")
def prometheus_metrics():
    """The whole suite's pool metrics (web and workers) when PROMETHEUS_MULTIPROC_DIR is shared."""
    metrics.export_process()
    return Response(metrics.render_metrics(), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})


@api.post("/items")
def create_item():
    item = validate_body(ItemIn, json_body())
    conn = db().connection()
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO items (name, payload) VALUES (%s, %s) RETURNING {ITEM_COLUMNS}",
            (item.name, None if item.payload is None else Json(item.payload)),
        )
        row = cur.fetchone()
    conn.commit()
    return jsonify(item_json(row)), 201, {"Location": f"/items/{row[0]}"}


@api.get("/items/<int:item_id>")
def get_item(item_id: int):
    if item_id > BIGINT_MAX:
        abort(404, description=f"no item {item_id}")
    with db().connection().cursor() as cur:
        cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s", (item_id,))
        row = cur.fetchone()
    if row is None:
        abort(404, description=f"no item {item_id}")
    return item_json(row)


@api.get("/items")
def list_items():
    limit = int_param(request.args, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    after = int_param(request.args, "after", 0, 0, BIGINT_MAX)
    with db().connection().cursor() as cur:
        cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
        rows = cur.fetchall()
    return item_page(rows, limit)


@api.post("/jobs")
def enqueue_job():
    job = validate_body(JOB_ADAPTER, json_body())
    job_id = str(uuid.uuid4())
    # Remember the id first, so GET /jobs/<id> knows it the moment a worker might
    # (a failed publish leaves the key to expire: web/api.py, PUBLISH_RETRY).
    get_redis().set(_job_key(job_id), job.kind, ex=JOB_TTL_SECONDS)
    get_celery().send_task(
        TASK_FOR_KIND[job.kind],
        kwargs=job.args.model_dump(),
        task_id=job_id,
        retry=True,
        retry_policy=PUBLISH_RETRY,
    )
    return jsonify({"id": job_id, "kind": job.kind}), 202, {"Location": f"/jobs/{job_id}"}


@api.get("/jobs/<job_id>")
def job_status(job_id: str):
    kind = get_redis().get(_job_key(job_id)) if _is_uuid(job_id) else None
    if kind is None:
        abort(404, description="no such job")
    result = AsyncResult(job_id, app=get_celery())
    body: dict[str, Any] = {"id": job_id, "kind": kind.decode(), "state": result.state}
    if result.successful():
        body["result"] = result.result
    elif result.failed():
        body["error"] = type(result.result).__name__
    return body
