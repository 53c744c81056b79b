"""The ASGI app's errors: the Flask app's JSON bodies and statuses (web/errors.py), from Starlette's handlers.

Every error is ``{"error": code, "message": ...}`` with the Flask app's codes
(``invalid_request``, ``bad_request``, ``not_found``, ``method_not_allowed``,
``request_entity_too_large``, ``unsupported_media_type``, ``pool_timeout``,
``database_unavailable``, ``queue_unavailable``, ``internal_error``): no
HTML, no traceback, no SQL, no password.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import psycopg
import redis
from kombu.exceptions import OperationalError as BrokerError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from forkpool import ConnectError, PoolTimeout, TooManyWaiting

from .api import DATABASE_RETRY_AFTER, HTTP_ERRORS, POOL_RETRY_AFTER
from .schemas import ValidationFailed

logger = logging.getLogger("forkpool.web")

Handler = Callable[[Request, Any], Awaitable[Response]]


def error_response(
    status: int,
    error: str,
    message: str,
    retry_after: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    response = JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


async def invalid(request: Request, exc: ValidationFailed) -> Response:
    return error_response(400, "invalid_request", str(exc), details=exc.details)


async def http_error(request: Request, exc: HTTPException) -> Response:
    phrase = HTTPStatus(exc.status_code).phrase
    code, description = HTTP_ERRORS.get(exc.status_code, (phrase.lower().replace(" ", "_"), phrase))
    # Starlette's default detail is the bare phrase ("Not Found"): say what Werkzeug says instead.
    message = description if exc.detail == phrase else str(exc.detail)
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "content-type"}  # Allow on a 405
    return error_response(exc.status_code, code, message, headers=headers)


async def pool_busy(request: Request, exc: Exception) -> Response:
    logger.warning("503: %s", exc)
    return error_response(
        503, "pool_timeout", "all database connections are busy; retry shortly", retry_after=POOL_RETRY_AFTER
    )


async def database_down(request: Request, exc: Exception) -> Response:
    logger.warning("503: database unavailable: %s", type(exc).__name__)
    return error_response(
        503, "database_unavailable", "the database is unavailable; retry shortly", retry_after=DATABASE_RETRY_AFTER
    )


async def broker_down(request: Request, exc: Exception) -> Response:
    logger.warning("503: broker unavailable: %s", type(exc).__name__)
    return error_response(
        503, "queue_unavailable", "the task queue is unavailable; retry shortly", retry_after=DATABASE_RETRY_AFTER
    )


async def unexpected(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response, so the server logs the traceback once (not here).
    return error_response(500, "internal_error", "internal server error")


def exception_handlers() -> dict[Any, Handler]:
    """For ``Starlette(exception_handlers=...)``: looked up along the exception's class hierarchy."""
    return {
        ValidationFailed: invalid,
        HTTPException: http_error,
        PoolTimeout: pool_busy,
        TooManyWaiting: pool_busy,
        ConnectError: database_down,
        psycopg.OperationalError: database_down,  # a connection lost mid-query
        # A write refused by a server turned read-only (a failover): nothing written, the pool has dropped
        # the connection, a retry reaches the new primary (web/errors.py says the same).
        psycopg.errors.ReadOnlySqlTransaction: database_down,
        redis.RedisError: broker_down,
        BrokerError: broker_down,
        Exception: unexpected,
    }
