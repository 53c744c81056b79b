"""Gunicorn settings for the naive contrast run: ``preload_app`` on, no pool hooks. Never deploy it."""

import sys

from shared.errors import ConfigError
from web.server_settings import web_server_settings

try:
    _web = web_server_settings()
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")

wsgi_app = "web.naive:app"
preload_app = True  # the pool is created in the master and inherited: the point of the contrast
bind = _web.bind
workers = _web.workers
threads = _web.threads
worker_class = "gthread" if _web.threads > 1 else "sync"
max_requests = _web.max_requests
max_requests_jitter = _web.max_requests_jitter
timeout = _web.timeout
accesslog = "-"
errorlog = "-"
proc_name = "forkpool-web-naive"
