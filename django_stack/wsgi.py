"""WSGI entry point for Gunicorn: ``django_stack.wsgi:application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_stack.settings")

application = get_wsgi_application()
