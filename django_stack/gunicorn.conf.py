"""Gunicorn settings for the django stack: ``gunicorn -c django_stack/gunicorn.conf.py``.

The suite's web settings (WEB_*, PORT: web/server_settings.py) with forkpool's
hooks, serving ``django_stack.wsgi``. Threads are checked against the stack's
pool (STACK_POOL_SIZE): each thread holds at most one connection at a time.
"""

import os
import sys

from forkpool.errors import ConfigError
from forkpool.gunicorn import (  # noqa: F401
    child_exit,
    on_exit,
    on_starting,
    post_fork,
    post_worker_init,
    pre_fork,
    when_ready,
    worker_exit,
)
from suite.stacks import pool_size
from web.server_settings import gunicorn_settings, web_server_settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_stack.settings")

try:
    # A copy of the environment: DB_POOL_SIZE set in os.environ would open forkpool's own pool beside Django's.
    _web = web_server_settings({**os.environ, "DB_POOL_SIZE": str(pool_size())})
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")

# Gunicorn reads this file's module-level names as its settings.
globals().update(gunicorn_settings(_web))
wsgi_app = "django_stack.wsgi:application"
preload_app = _web.preload
proc_name = "forkpool-django"
