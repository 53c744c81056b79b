"""Every error is a JSON body with a status: no HTML, no traceback, no SQL, no password."""

from __future__ import annotations

import logging

import psycopg2
import psycopg2.errors
import redis
from flask import Flask, jsonify
from kombu.exceptions import OperationalError as BrokerError
from werkzeug.exceptions import HTTPException

from forkpool import ConnectError, PoolTimeout, TooManyWaiting
from suite.stacks import stack_errors

from .api import DATABASE_RETRY_AFTER, POOL_RETRY_AFTER
from .schemas import ValidationFailed

__all__ = ["DATABASE_RETRY_AFTER", "POOL_RETRY_AFTER", "ValidationFailed", "error_response", "register_error_handlers"]

logger = logging.getLogger("forkpool.web")


def error_response(status: int, error: str, message: str, retry_after: str | None = None, **extra: object):
    response = jsonify({"error": error, "message": message, **extra})
    response.status_code = status
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ValidationFailed)
    def invalid(exc: ValidationFailed):
        return error_response(400, "invalid_request", str(exc), details=exc.details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        name = (exc.name or "error").lower().replace(" ", "_")
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]  # e.g. Allow on a 405
        return error_response(exc.code or 500, name, exc.description or exc.name), headers

    busy_errors, down_errors = stack_errors()

    @app.errorhandler(PoolTimeout)
    @app.errorhandler(TooManyWaiting)
    def pool_busy(exc: Exception):
        logger.warning("503: %s", exc)
        return error_response(
            503, "pool_timeout", "all database connections are busy; retry shortly", retry_after=POOL_RETRY_AFTER
        )

    @app.errorhandler(ConnectError)
    @app.errorhandler(psycopg2.OperationalError)
    # SQLSTATE 25006: the server turned read-only under a write (a failover; the suite never makes a
    # transaction read-only itself). Nothing was written, and the pool has dropped that connection
    # (docs/failover.md): the client's retry reaches the new primary, so it is a 503, not a 500.
    @app.errorhandler(psycopg2.errors.ReadOnlySqlTransaction)
    def database_down(exc: Exception):
        logger.warning("503: database unavailable: %s", type(exc).__name__)
        return error_response(
            503, "database_unavailable", "the database is unavailable; retry shortly", retry_after=DATABASE_RETRY_AFTER
        )

    for error in busy_errors:
        app.register_error_handler(error, pool_busy)
    for error in down_errors:
        app.register_error_handler(error, database_down)

    @app.errorhandler(BrokerError)
    @app.errorhandler(redis.RedisError)
    def broker_down(exc: Exception):
        logger.warning("503: broker unavailable: %s", type(exc).__name__)
        return error_response(
            503, "queue_unavailable", "the task queue is unavailable; retry shortly", retry_after=DATABASE_RETRY_AFTER
        )

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # The flask-sqlalchemy stack: SQLAlchemy wraps the driver's error (25006 arrives as its InternalError).
        if isinstance(getattr(exc, "orig", None), psycopg2.errors.ReadOnlySqlTransaction):
            return database_down(exc)
        logger.exception("500: unhandled error")  # noqa: LOG004 - Flask calls error handlers inside its except block
        return error_response(500, "internal_error", "internal server error")
