"""Gunicorn settings for the suite's async tier: ``gunicorn -c web/gunicorn_asgi.conf.py``.

The ASGI app (Starlette, web/asgi_app.py) under ``uvicorn_worker.UvicornWorker``.
Sizes come from the environment (ASGI_*, see README, Configuration). The hooks
are forkpool's, with the async worker's two: ``asgi_on_starting`` (role
``asgi``, the budget check of this server's share) and ``asgi_post_fork``
(detach what was inherited, open nothing: each worker's lifespan startup opens
its pools in its own event loop, and its shutdown closes them).
"""

import os
import sys

from forkpool.errors import ConfigError
from forkpool.gunicorn import asgi_on_starting as on_starting  # noqa: F401
from forkpool.gunicorn import asgi_post_fork as post_fork  # noqa: F401
from forkpool.gunicorn import child_exit, on_exit, post_worker_init, pre_fork, when_ready, worker_exit  # noqa: F401
from web.server_settings import asgi_gunicorn_settings, asgi_pool_env, asgi_server_settings

try:
    _asgi = asgi_server_settings()
except ConfigError as exc:
    sys.exit(f"forkpool: invalid configuration: {exc}")

# This server's pool size is ASGI_POOL_SIZE: the master's budget check and the workers read it from here.
os.environ.update(asgi_pool_env(_asgi))

# Gunicorn reads this file's module-level names as its settings.
globals().update(asgi_gunicorn_settings(_asgi))
wsgi_app = "web.asgi:app"
preload_app = False  # nothing to share: the app opens nothing until each worker's lifespan
proc_name = "forkpool-asgi"
