"""A WSGI app with a redis.Redis made at import time; PROTECT=1 hands it to forkpool.protect."""

import os

import redis

import forkpool

client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
if os.environ.get("PROTECT") == "1":
    forkpool.protect(client, eager=True)  # the test counts whole pools per process

client.ping()  # work at import: in the master, under preload_app


def app(environ, start_response):
    try:
        status, body = "200 OK", f"{os.getpid()} {client.client_id()}"
    except Exception as exc:  # noqa: BLE001 - the test counts what users would see
        status, body = "500 Internal Server Error", f"{os.getpid()} error {type(exc).__name__}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
