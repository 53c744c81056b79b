"""The WSGI entry Gunicorn loads (preload_app: in the master, before forking)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "probe_site.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()

from django.db import connections  # noqa: E402

for alias in connections:  # work at import (a start-up check): in the master, under preload_app
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM probe_hit")
