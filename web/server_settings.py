"""Gunicorn's settings from the environment, validated before anything starts.

Read by ``web/gunicorn.conf.py`` (Flask, WEB_*) and ``web/gunicorn_asgi.conf.py``
(the ASGI app, ASGI_*) in the master. A bad value stops Gunicorn with one line
naming the variable, instead of workers that fail later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forkpool.errors import ConfigError
from forkpool.settings import build_settings, env_bool, env_int, settings_from_env
from suite.logging_setup import logging_config

DEFAULT_PORT = 8000
DEFAULT_ASGI_PORT = 8001
# uvicorn_worker.UvicornWorker (uvicorn.workers is deprecated in favour of it) whose graceful stop drops no request
ASGI_WORKER_CLASS = "web.asgi_worker.DrainingUvicornWorker"


@dataclass(frozen=True)
class WebServerSettings:
    bind: str
    workers: int
    threads: int
    max_requests: int
    max_requests_jitter: int
    preload: bool
    timeout: int
    graceful_timeout: int


def web_server_settings(environ: Mapping[str, str] | None = None) -> WebServerSettings:
    env = os.environ if environ is None else environ
    port = env_int("PORT", DEFAULT_PORT, minimum=1, environ=env)
    max_requests = env_int("WEB_MAX_REQUESTS", 0, environ=env)
    settings = WebServerSettings(
        bind=env.get("WEB_BIND") or f"127.0.0.1:{port}",
        workers=env_int("WEB_CONCURRENCY", 2, minimum=1, environ=env),
        threads=env_int("WEB_THREADS", 1, minimum=1, environ=env),
        max_requests=max_requests,
        max_requests_jitter=env_int("WEB_MAX_REQUESTS_JITTER", max_requests // 10, environ=env),
        preload=env_bool("WEB_PRELOAD", False, environ=env),
        timeout=env_int("WEB_TIMEOUT", 30, minimum=1, environ=env),
        graceful_timeout=env_int("WEB_GRACEFUL_TIMEOUT", 30, minimum=1, environ=env),
    )
    check_pool_covers_threads(settings.threads, env)
    return settings


def check_pool_covers_threads(threads: int, environ: Mapping[str, str]) -> None:
    """Each thread may hold one connection at a time: a smaller pool makes threads queue for ever-busy slots."""
    pool = build_settings(**settings_from_env(environ))
    if pool.max_size < threads:
        raise ConfigError(
            f"WEB_THREADS={threads} needs a pool of at least {threads} connections per worker, "
            f"but the pool's max_size is {pool.max_size} (set DB_POOL_SIZE >= WEB_THREADS)"
        )


def gunicorn_settings(web: WebServerSettings) -> dict[str, Any]:
    """The Gunicorn settings both Flask configuration files share (the naive one differs in app and hooks)."""
    return {
        "bind": web.bind,
        "workers": web.workers,
        "threads": web.threads,
        "worker_class": "gthread" if web.threads > 1 else "sync",
        "max_requests": web.max_requests,
        "max_requests_jitter": web.max_requests_jitter,
        "timeout": web.timeout,
        "graceful_timeout": web.graceful_timeout,
        "accesslog": "-",
        "errorlog": "-",
        "logconfig_dict": logging_config(extra_loggers=("gunicorn.error", "gunicorn.access")),
    }


@dataclass(frozen=True)
class AsgiServerSettings:
    bind: str
    workers: int
    pool_size: int
    max_requests: int
    max_requests_jitter: int
    timeout: int
    graceful_timeout: int


def asgi_server_settings(environ: Mapping[str, str] | None = None) -> AsgiServerSettings:
    """The ASGI tier's own sizes (ASGI_*); timeouts are the web tier's (WEB_TIMEOUT, WEB_GRACEFUL_TIMEOUT)."""
    env = os.environ if environ is None else environ
    port = env_int("ASGI_PORT", DEFAULT_ASGI_PORT, minimum=1, environ=env)
    max_requests = env_int("ASGI_MAX_REQUESTS", 0, environ=env)
    default_pool = build_settings(**settings_from_env(env)).max_size  # validates DB_POOL_* too
    return AsgiServerSettings(
        bind=env.get("ASGI_BIND") or f"127.0.0.1:{port}",
        workers=env_int("ASGI_CONCURRENCY", 2, minimum=1, environ=env),
        pool_size=env_int("ASGI_POOL_SIZE", default_pool, minimum=1, environ=env),
        max_requests=max_requests,
        max_requests_jitter=env_int("ASGI_MAX_REQUESTS_JITTER", max_requests // 10, environ=env),
        timeout=env_int("WEB_TIMEOUT", 30, minimum=1, environ=env),
        graceful_timeout=env_int("WEB_GRACEFUL_TIMEOUT", 30, minimum=1, environ=env),
    )


def asgi_pool_env(asgi: AsgiServerSettings) -> dict[str, str]:
    """The ASGI server's processes size forkpool's default pool at ASGI_POOL_SIZE, min = max (fixed).

    Set in the master's environment by the configuration file, so its budget
    check and every worker it forks (which inherit the environment) agree.
    """
    size = str(asgi.pool_size)
    return {"DB_POOL_SIZE": size, "DB_POOL_MIN": size, "DB_POOL_MAX": size}


def asgi_gunicorn_settings(asgi: AsgiServerSettings) -> dict[str, Any]:
    return {
        "bind": asgi.bind,
        "workers": asgi.workers,
        "worker_class": ASGI_WORKER_CLASS,
        "max_requests": asgi.max_requests,  # the worker passes it on as uvicorn's limit_max_requests
        "max_requests_jitter": asgi.max_requests_jitter,
        "timeout": asgi.timeout,
        "graceful_timeout": asgi.graceful_timeout,
        "accesslog": "-",
        "errorlog": "-",
        # UvicornWorker hands uvicorn's loggers Gunicorn's handlers, which this configures.
        "logconfig_dict": logging_config(extra_loggers=("gunicorn.error", "gunicorn.access")),
    }
