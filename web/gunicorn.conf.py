"""Gunicorn settings for the suite's web tier: ``gunicorn -c web/gunicorn.conf.py``.

Sizes come from the environment (see README, Configuration). The hooks from
``forkpool.gunicorn`` keep exactly one pool per worker and none in the master.
"""

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
from web.server_settings import gunicorn_settings, web_server_settings

try:
    _web = web_server_settings()
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")

# Gunicorn reads this file's module-level names as its settings.
globals().update(gunicorn_settings(_web))
wsgi_app = "web.wsgi:app"
preload_app = _web.preload
proc_name = "forkpool-web"
