"""The Flask app's JSON errors (web/errors.py) from Django: a middleware for the views, handlers for the rest.

Every error is ``{"error": code, "message": ...}`` with the Flask app's codes and
statuses: ``invalid_request`` 400, ``bad_request`` 400, ``not_found`` 404,
``method_not_allowed`` 405 (with ``Allow``), ``request_entity_too_large`` 413,
``unsupported_media_type`` 415, ``pool_timeout`` 503 (``Retry-After: 1``),
``database_unavailable`` and ``queue_unavailable`` 503 (``Retry-After: 2``),
``internal_error`` 500: no HTML, no traceback, no SQL, no password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from kombu.exceptions import OperationalError as BrokerError
from psycopg_pool import PoolTimeout, TooManyRequests

from web.api import DATABASE_RETRY_AFTER, HTTP_ERRORS, POOL_RETRY_AFTER
from web.schemas import ValidationFailed

logger = logging.getLogger("forkpool.web")


class HttpError(Exception):
    """An HTTP error a view raises: Werkzeug's code and description for `status` unless `message` says more."""

    def __init__(self, status: int, message: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.error, description = HTTP_ERRORS[status]
        self.message = message or description
        self.headers = headers or {}
        super().__init__(self.message)


@dataclass(frozen=True)
class ErrorAnswer:
    """What an error is answered with; plain data, so the choice is tested without a configured Django."""

    status: int
    error: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


INTERNAL = ErrorAnswer(500, "internal_error", "internal server error")


def answer_for(exc: BaseException) -> ErrorAnswer | None:
    """The designed answer to `exc`, or None: an unexpected error (500, logged with its traceback)."""
    if isinstance(exc, ValidationFailed):
        return ErrorAnswer(400, "invalid_request", str(exc), extra={"details": exc.details})
    if isinstance(exc, HttpError):
        return ErrorAnswer(exc.status, exc.error, exc.message, dict(exc.headers))
    if isinstance(exc, (OperationalError, InterfaceError)):
        # Django wraps the driver's errors and keeps the original as __cause__: psycopg_pool's
        # PoolTimeout (no connection free within OPTIONS["pool"]["timeout"]) is a busy pool. A server
        # that is down shows as one too, after that timeout: psycopg_pool reconnects in the background
        # and callers wait for it, where forkpool's pool raises ConnectError at once.
        if isinstance(exc.__cause__, (PoolTimeout, TooManyRequests)):
            logger.warning("503: %s", exc.__cause__)
            return ErrorAnswer(
                503,
                "pool_timeout",
                "all database connections are busy; retry shortly",
                {"Retry-After": POOL_RETRY_AFTER},
            )
        logger.warning("503: database unavailable: %s", type(exc.__cause__ or exc).__name__)
        return ErrorAnswer(
            503,
            "database_unavailable",
            "the database is unavailable; retry shortly",
            {"Retry-After": DATABASE_RETRY_AFTER},
        )
    if isinstance(exc, (redis.RedisError, BrokerError)):
        logger.warning("503: broker unavailable: %s", type(exc).__name__)
        return ErrorAnswer(
            503,
            "queue_unavailable",
            "the task queue is unavailable; retry shortly",
            {"Retry-After": DATABASE_RETRY_AFTER},
        )
    return None


def error_response(answer: ErrorAnswer) -> JsonResponse:
    response = JsonResponse({"error": answer.error, "message": answer.message, **answer.extra}, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


class JsonErrors:
    """Middleware: whatever a view raises becomes one of the JSON errors above."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse:
        answer = answer_for(exc)
        if answer is None:
            logger.exception("500: unhandled error")  # noqa: LOG004 - called inside Django's except block: the traceback is logged
            answer = INTERNAL
        return error_response(answer)


# The URLconf's handlers: what Django raises outside a view (no route, a bad Host, a crash in middleware).
def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(ErrorAnswer(404, *HTTP_ERRORS[404]))


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(ErrorAnswer(400, *HTTP_ERRORS[400]))


def server_error(request: HttpRequest) -> HttpResponse:
    return error_response(INTERNAL)
