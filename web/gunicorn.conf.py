"""Gunicorn settings for the suite's web tier: ``gunicorn -c web/gunicorn.conf.py``.

Sizes come from the environment (see README, Configuration). The hooks from
``shared.gunicorn_hooks`` keep exactly one pool per worker and none in the master.
"""

import sys

from shared.errors import ConfigError
from shared.gunicorn_hooks import on_exit, post_fork, pre_fork, when_ready, worker_exit  # noqa: F401
from web.server_settings import web_server_settings

try:
    _web = web_server_settings()
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")

wsgi_app = "web.wsgi:app"
bind = _web.bind
workers = _web.workers
threads = _web.threads
worker_class = "gthread" if _web.threads > 1 else "sync"
max_requests = _web.max_requests
max_requests_jitter = _web.max_requests_jitter
preload_app = _web.preload
timeout = _web.timeout
graceful_timeout = _web.graceful_timeout
accesslog = "-"
errorlog = "-"
proc_name = "forkpool-web"
