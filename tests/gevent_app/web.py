"""A WSGI app for Gunicorn's gevent worker: each path runs one check of probe.py in the worker."""

import json

import probe

ROUTES = {"/": probe.query, "/hold": probe.hold, "/exhaust": probe.exhaust, "/refill": probe.refill}


def app(environ, start_response):
    check = ROUTES.get(environ.get("PATH_INFO", "/"))
    if check is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such check\n"]
    answer = check()
    # The first field is the worker's pid: tests.protect_support.http_load reads it.
    body = f"{answer['pid']} {json.dumps(answer)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
