"""The WSGI entry Gunicorn loads (preload_app: in the master, before forking)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "probe_site.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection  # noqa: E402

application = get_wsgi_application()

with connection.cursor() as cursor:  # work at import (a start-up check): in the master, under preload_app
    cursor.execute("SELECT count(*) FROM probe_hit")
