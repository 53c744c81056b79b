"""Helpers for tests that run the real suite: HTTP calls and server-side session counts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from harness._procs import pid_alive  # noqa: F401 - re-exported for the suite tests


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request; error statuses are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, method=method, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        return exc.code, json.loads(payload) if payload else {}, dict(exc.headers)


def sessions_by_role(admin: Callable[..., list[tuple]], suite_id: str) -> dict[str, dict[int, int]]:
    """{role: {pid: connections}} for one suite, as pg_stat_activity sees it."""
    rows = admin(
        "SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name LIKE %s GROUP BY 1",
        f"{suite_id}:%",
    )
    found: dict[str, dict[int, int]] = {}
    for name, count in rows:
        _, role, pid = name.rsplit(":", 2)
        found.setdefault(role, {})[int(pid)] = count
    return found
