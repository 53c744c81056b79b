"""ASGI entry point for Gunicorn's uvicorn workers: ``web.asgi:app`` (see web/gunicorn_asgi.conf.py)."""

from web import create_asgi_app

app = create_asgi_app()
