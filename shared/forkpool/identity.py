"""Who this process is, as the servers see it: ``<suite-id>:<role>:<pid>``.

Every PostgreSQL connection carries it as ``application_name`` and every Redis
client as ``client_name``, so a harness can count exactly the sessions of one
run, by role and by process. It is read at connect time, so after a fork the
child's connections carry the child's pid.
"""

from __future__ import annotations

import os
import re

SUITE_ID_ENV = "SUITE_ID"
ROLE_ENV = "PROCESS_ROLE"
DEFAULT_SUITE_ID = "forkpool"
DEFAULT_ROLE = "app"

# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
APPLICATION_NAME_MAX = 63

# Redis client names may not contain spaces; keep both identities to one safe alphabet.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")

_suite_id: str | None = None
_role: str | None = None


def _clean(value: str) -> str:
    return _UNSAFE.sub("_", value)


def set_identity(*, suite_id: str | None = None, role: str | None = None) -> None:
    """Set this process's suite id and/or role in code (overrides the environment)."""
    global _suite_id, _role
    if suite_id is not None:
        _suite_id = _clean(suite_id)
    if role is not None:
        _role = _clean(role)


def set_process_role(role: str) -> None:
    """Name this process's role (``web``, ``worker``, ...); used by the server hooks."""
    set_identity(role=role)


def suite_id() -> str:
    return _suite_id or _clean(os.environ.get(SUITE_ID_ENV) or DEFAULT_SUITE_ID)


def process_role() -> str:
    return _role or _clean(os.environ.get(ROLE_ENV) or DEFAULT_ROLE)


def application_name(pid: int | None = None) -> str:
    """``<suite-id>:<role>:<pid>``, at most 63 characters, never losing the pid.

    When too long, the suite id and role are shortened (suite id first), since
    the pid is what tells one process's sessions from another's.
    """
    tail = f":{pid if pid is not None else os.getpid()}"
    sid, role = suite_id(), process_role()
    room = APPLICATION_NAME_MAX - len(tail) - 1  # 1 for the ':' between suite id and role
    if len(sid) + len(role) > room:
        role = role[: max(room // 2, room - len(sid))]
        sid = sid[: room - len(role)]
    return f"{sid}:{role}{tail}"
