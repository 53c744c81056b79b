"""What each endpoint means, whichever app serves it: the Flask app (web/views.py), the ASGI app (web/asgi_views.py)
or the django stack's (django_stack/views.py).

Framework-free, so the ASGI workers and the django stack import no Flask: columns,
JSON shapes, job keys in Redis, the publish retry, the Retry-After of each 503,
and the names of HTTP errors.
"""

from __future__ import annotations

import uuid
from typing import Any

from forkpool import identity

ITEM_COLUMNS = "id, name, payload, created_at"
JOB_TTL_SECONDS = 24 * 3600
# kombu's publish retry: the publish waits its socket timeout (5 s), then kombu reconnects
# max_retries + 1 times, each connect up to 3 s (forkpool.redis's network options):
# at most 5 + 2 x 3 = 11 s on a silent broker (9.0 s measured), within the web's Redis bound (11.4 s,
# harness/net_scenarios.py); two retries measured 11.2 s, and the delete that followed a failed
# publish waited on until the network came back (a CI run: 14.6 s). A broker that refuses (a
# restart) fails each attempt at once.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# On a failed publish the job's key is left to expire: its id was never handed to a client,
# so nothing can ask for it, and deleting it would be a second call to a Redis that just failed,
# doubling the request's wait on a silent network.

DEFAULT_MAX_BODY_BYTES = 64 * 1024  # WEB_MAX_BODY_BYTES: larger request bodies get 413

POOL_RETRY_AFTER = "1"  # a busy pool frees a connection within a request's time
DATABASE_RETRY_AFTER = "2"  # a server (PostgreSQL, Redis) coming back takes longer

# Werkzeug's names and descriptions: the ASGI app and the django stack answer a bad request as the Flask app does.
HTTP_ERRORS = {
    400: ("bad_request", "The browser (or proxy) sent a request that this server could not understand."),
    404: (
        "not_found",
        "The requested URL was not found on the server. If you entered the URL manually please "
        "check your spelling and try again.",
    ),
    405: ("method_not_allowed", "The method is not allowed for the requested URL."),
    413: ("request_entity_too_large", "The data value transmitted exceeds the capacity limit."),
    415: (
        "unsupported_media_type",
        "Did not attempt to load JSON data because the request Content-Type was not 'application/json'.",
    ),
}


def item_json(row: tuple) -> dict[str, Any]:
    item_id, name, payload, created_at = row
    return {"id": item_id, "name": name, "payload": payload, "created_at": created_at.isoformat()}


def item_page(rows: list[tuple], limit: int) -> dict[str, Any]:
    """A keyset page: `next_after` is the last id when the page is full, else None (the last page)."""
    items = [item_json(row) for row in rows]
    return {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}


def job_key(job_id: str) -> str:
    """Where a job's kind is remembered in Redis, so GET /jobs/<id> knows the ids this suite handed out."""
    return f"{identity.name()}:job:{job_id}"


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
