"""Gunicorn settings for the naive contrast run: ``preload_app`` on, no pool hooks. Never deploy it."""

import sys

from forkpool.errors import ConfigError
from web.server_settings import gunicorn_settings, web_server_settings

try:
    _web = web_server_settings()
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")

globals().update(gunicorn_settings(_web))
wsgi_app = "web.naive:app"
preload_app = True  # the pool is created in the master and inherited: the point of the contrast
proc_name = "forkpool-web-naive"
# A worker wedged on a protocol stream it shares with its siblings never finishes a graceful
# stop: the contrast has nothing to drain, so it stops in 3 s instead of waiting out 30.
graceful_timeout = 3
