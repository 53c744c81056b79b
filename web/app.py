"""The app factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from forkpool.flask import ForkPool
from forkpool.settings import env_int
from suite.stacks import FLASK_SQLALCHEMY, stack

from .api import DEFAULT_MAX_BODY_BYTES
from .errors import register_error_handlers
from .openapi import openapi_bp
from .views import api


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. No connection is opened here: each worker opens its own pool after fork."""
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=env_int("WEB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1),
        DEBUG=False,
        PROPAGATE_EXCEPTIONS=False,
    )
    if config:
        app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if stack() == FLASK_SQLALCHEMY:
        from .sqlalchemy_binding import SQLAlchemyBinding

        SQLAlchemyBinding(app)
    else:
        ForkPool(app)
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(openapi_bp)
    return app
