"""WSGI entry point for Gunicorn: ``web.wsgi:app``."""

from web import create_app

app = create_app()
