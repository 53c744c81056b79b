"""forkpool's web app: Flask, served by Gunicorn, one pool per worker process."""

from .app import create_app

__all__ = ["create_app"]
