"""forkpool's web tier: a Flask app under Gunicorn (sync or gthread workers) and an ASGI app (Starlette)
under Gunicorn's uvicorn workers; one pool per worker process either way.

``create_app`` (Flask) and ``create_asgi_app`` (Starlette) are imported on first
use, so an ASGI worker never imports Flask, and a Flask worker never Starlette.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "create_asgi_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "create_asgi_app":
        from .asgi_app import create_asgi_app

        return create_asgi_app
    raise AttributeError(f"module 'web' has no attribute {name!r}")
