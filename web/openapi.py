"""The API's OpenAPI 3.1 description, served at ``GET /openapi.json``.

Request bodies come straight from the pydantic models the views validate with
(``ItemIn`` and the ``Job`` union), so the description cannot drift from what
the endpoints accept. Everything else (paths, parameters, responses) is written
down here; ``tests/test_fuzz.py`` checks that every route of the app is described
and that the request schemas accept what the endpoints accept.

Register it with ``app.register_blueprint(openapi_bp)``.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from flask import Blueprint, jsonify

from suite.jobs import JOB_ADAPTER, KEY_MAX, MAX_DEPTH, MAX_HOLD_SECONDS
from suite.schema import NAME_MAX, NAME_MIN

from .schemas import BIGINT_MAX, LIMIT_DEFAULT, LIMIT_MAX, ItemIn

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"
REF = "#/components/schemas/{model}"

openapi_bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move a pydantic schema's ``$defs`` into ``components/schemas`` (refs already point there)."""
    schema = copy.deepcopy(schema)
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    return schema


def request_schemas() -> dict[str, dict[str, Any]]:
    """The request-body schemas, by component name, built from the models the views validate with."""
    components: dict[str, Any] = {}
    item_in = _hoist(ItemIn.model_json_schema(ref_template=REF, mode="validation"), components)
    item_in.setdefault(
        "description",
        "A new item. Text anywhere in it (name, payload keys and strings) "
        "must not contain NUL characters or lone surrogates, numbers must be "
        f"finite, and the payload may nest at most {MAX_DEPTH} levels deep.",
    )
    job = _hoist(JOB_ADAPTER.json_schema(ref_template=REF, mode="validation"), components)
    job["title"] = "Job"
    job.setdefault(
        "description",
        "A job for the workers, by kind. Text in it must not contain NUL characters, "
        f"and `data` may nest at most {MAX_DEPTH} levels deep.",
    )
    components["ItemIn"] = item_in
    components["Job"] = job
    return components


def _error_schemas() -> dict[str, Any]:
    return {
        "ErrorDetail": {
            "type": "object",
            "properties": {"loc": {"type": "string"}, "msg": {"type": "string"}},
            "required": ["loc", "msg"],
        },
        "Error": {
            "type": "object",
            "description": "Every error is a JSON object: no HTML, no traceback, no SQL.",
            "properties": {
                "error": {
                    "type": "string",
                    "description": "a machine-readable code, e.g. invalid_request, not_found, pool_timeout",
                },
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": _ref("ErrorDetail"),
                    "description": "where and why a request body or parameter does not fit (400)",
                },
            },
            "required": ["error", "message"],
        },
    }


def _response_schemas() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {
        "Item": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
                "name": {"type": "string", "minLength": NAME_MIN, "maxLength": NAME_MAX},
                "payload": {"anyOf": [{"type": "object"}, {"type": "null"}]},
                "created_at": {"type": "string", "format": "date-time"},
            },
            "required": ["id", "name", "payload", "created_at"],
        },
        "ItemPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref("Item")},
                "next_after": {
                    "anyOf": [{"type": "integer"}, {"type": "null"}],
                    "description": "pass as `after` for the next page; null on the last page",
                },
            },
            "required": ["items", "next_after"],
        },
        "JobAccepted": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "kind": {"type": "string", "enum": ["record_event", "aggregate", "hold"]},
            },
            "required": ["id", "kind"],
        },
        "JobStatus": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "kind": {"type": "string"},
                "state": {"type": "string", "description": "Celery's state: PENDING, STARTED, SUCCESS, FAILURE, ..."},
                "result": {"description": "the task's result, once it succeeded"},
                "error": {"type": "string", "description": "the exception's type name, once it failed"},
            },
            "required": ["id", "kind", "state"],
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "pid": count},
            "required": ["status", "pid"],
        },
        "Readiness": {
            "type": "object",
            "properties": {
                "ready": {"type": "boolean"},
                "pid": count,
                "pools": {"type": "object", "additionalProperties": {"type": "object"}},
                "redis": {
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}, "error": {"type": ["string", "null"]}},
                },
            },
            "required": ["ready", "pid", "pools", "redis"],
        },
        "PoolInfo": {
            "type": "object",
            "properties": {
                "pid": count,
                "role": {"type": "string"},
                "suite_id": {"type": "string"},
                "pool": {"type": "object", "description": "this process's default pool: Pool.stats()"},
                "pools": {"type": "object"},
                "manager": {"type": "object"},
            },
            "required": ["pid", "role", "suite_id", "pool", "pools", "manager"],
        },
    }


_ERROR_DESCRIPTIONS = {
    "400": "Bad request: malformed JSON, a body that is not an object or does not fit the schema, or a bad parameter",
    "404": "Not found",
    "405": "Method not allowed",
    "413": "Request body too large (WEB_MAX_BODY_BYTES)",
    "415": "Unsupported media type: the body must be application/json",
    "503": "Service unavailable: the pool is busy, or the database or task queue is unreachable; "
    "retry after Retry-After seconds",
    "default": "Unexpected error (500), still a JSON error body",
}


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, description in _ERROR_DESCRIPTIONS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if status == "503":
            response["headers"] = {
                "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
            }
        responses[f"Error{status.capitalize()}"] = response
    return responses


def _errors(*statuses: str) -> dict[str, Any]:
    """References to the shared error responses; 405 and default apply to every operation."""
    wanted = dict.fromkeys((*statuses, "405", "default"))
    return {s: {"$ref": f"#/components/responses/Error{s.capitalize()}"} for s in sorted(wanted, key=_order)}


def _order(status: str) -> tuple[int, str]:
    return (1, status) if status == "default" else (0, status)


def _ok(
    status: str,
    description: str,
    schema: dict[str, Any],
    headers: dict[str, Any] | None = None,
    media: str = "application/json",
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {media: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return {status: response}


def _json_body(name: str, examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref(name),
                "examples": {key: {"value": value} for key, value in examples.items()},
            }
        },
    }


LOCATION = {"Location": {"description": "where to find what was created", "schema": {"type": "string"}}}

ITEM_EXAMPLES: dict[str, Any] = {
    "minimal": {"name": "widget"},
    "with_payload": {"name": "widget", "payload": {"colour": "blue", "sizes": [1, 2, 3], "meta": {"new": True}}},
    "null_payload": {"name": "w", "payload": None},
    "longest_name": {"name": "x" * NAME_MAX},
}
JOB_EXAMPLES: dict[str, Any] = {
    "record_event": {"kind": "record_event", "args": {"key": "signup:42", "data": {"plan": "pro"}}},
    "record_event_minimal": {"kind": "record_event", "args": {"key": "k" * KEY_MAX}},
    "aggregate": {"kind": "aggregate"},
    "aggregate_with_args": {"kind": "aggregate", "args": {}},
    "hold": {"kind": "hold", "args": {"seconds": 0.5}},
    "hold_longest": {"kind": "hold", "args": {"seconds": int(MAX_HOLD_SECONDS)}},
}


def _paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness (no I/O)",
                "tags": ["health"],
                "responses": {**_ok("200", "Alive", _ref("Health")), **_errors()},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: PostgreSQL and Redis reachable",
                "tags": ["health"],
                "responses": {
                    **_ok("200", "Ready", _ref("Readiness")),
                    "503": {
                        "description": "Not ready (the same body, ready: false)",
                        "content": {"application/json": {"schema": _ref("Readiness")}},
                    },
                    **_errors(),
                },
            }
        },
        "/pool": {
            "get": {
                "operationId": "poolInfo",
                "summary": "This worker's pid, role and pool statistics",
                "tags": ["health"],
                "responses": {**_ok("200", "Pool statistics", _ref("PoolInfo")), **_errors("503")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of the suite's pools",
                "tags": ["health"],
                "responses": {
                    **_ok("200", "Prometheus text exposition format", {"type": "string"}, media="text/plain"),
                    **_errors(),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "tags": ["meta"],
                "responses": {**_ok("200", "OpenAPI 3.1 document", {"type": "object"}), **_errors()},
            }
        },
        "/items": {
            "get": {
                "operationId": "listItems",
                "summary": "A page of items in id order (keyset pagination)",
                "tags": ["items"],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "page size",
                        "schema": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": LIMIT_DEFAULT},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "return items with an id greater than this (next_after of the previous page)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX, "default": 0},
                    },
                ],
                "responses": {**_ok("200", "A page of items", _ref("ItemPage")), **_errors("400", "503")},
            },
            "post": {
                "operationId": "createItem",
                "summary": "Create an item",
                "tags": ["items"],
                "requestBody": _json_body("ItemIn", ITEM_EXAMPLES),
                "responses": {**_ok("201", "Created", _ref("Item"), LOCATION), **_errors("400", "413", "415", "503")},
            },
        },
        "/items/{item_id}": {
            "parameters": [
                {"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
            ],
            "get": {
                "operationId": "getItem",
                "summary": "One item",
                "tags": ["items"],
                "responses": {**_ok("200", "The item", _ref("Item")), **_errors("404", "503")},
            },
        },
        "/jobs": {
            "post": {
                "operationId": "enqueueJob",
                "summary": "Enqueue a job for the Celery workers",
                "tags": ["jobs"],
                "requestBody": _json_body("Job", JOB_EXAMPLES),
                "responses": {
                    **_ok("202", "Accepted: poll GET /jobs/{id}", _ref("JobAccepted"), LOCATION),
                    **_errors("400", "413", "415", "503"),
                },
            }
        },
        "/jobs/{job_id}": {
            "parameters": [
                {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
            ],
            "get": {
                "operationId": "jobStatus",
                "summary": "A job's state, and its result once finished",
                "tags": ["jobs"],
                "responses": {**_ok("200", "The job", _ref("JobStatus")), **_errors("404", "503")},
            },
        },
    }


@lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    schemas = {**_error_schemas(), **_response_schemas(), **request_schemas()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "forkpool",
            "version": API_VERSION,
            "description": "The forkpool suite's HTTP API: health, items, jobs and this worker's pool. "
            "Every request and response body is JSON (but /metrics); every error is a JSON "
            "object with an `error` code and a `message`.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": name} for name in ("health", "items", "jobs", "meta")],
        "paths": _paths(),
        "components": {"schemas": schemas, "responses": _error_responses()},
    }


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_spec())


@openapi_bp.get("/openapi.json")
def openapi_json():
    return jsonify(_spec())
