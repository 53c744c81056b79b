"""Who this process is, as the servers see it: ``<suite-id>:<role>:<pid>``.

Every PostgreSQL connection carries it as ``application_name`` and every Redis
client as ``client_name``, so a harness can count exactly the sessions of one
run, by role and by process. It is read at connect time, so after a fork the
child's connections carry the child's pid.

On more than one host, ``HOST_LABEL`` names the host and joins the role:
``<suite-id>:<role>@<host>:<pid>`` (``web@h1``). Pids repeat across hosts, so
without it two hosts' processes could carry one name; inside the role, every
parser that splits ``suite:role:pid`` keeps working, and grouping by role
groups by role and host. ``HOST_LABEL=auto`` takes the machine's host name
(a container's id under Docker).
"""

from __future__ import annotations

import os
import re
import socket

SUITE_ID_ENV = "SUITE_ID"
ROLE_ENV = "PROCESS_ROLE"
HOST_ENV = "HOST_LABEL"
DEFAULT_SUITE_ID = "forkpool"
DEFAULT_ROLE = "app"

# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
APPLICATION_NAME_MAX = 63
# A host label is kept whole in the name; this bounds it so the role and suite id keep some room.
HOST_LABEL_MAX = 20

# Redis client names may not contain spaces; keep both identities to one safe alphabet.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")

_suite_id: str | None = None
_role: str | None = None
_host: str | None = None


def _clean(value: str) -> str:
    return _UNSAFE.sub("_", value)


def set_identity(*, suite_id: str | None = None, role: str | None = None, host: str | None = None) -> None:
    """Set this process's suite id, role and/or host label in code (overrides the environment)."""
    global _suite_id, _role, _host
    if suite_id is not None:
        _suite_id = _clean(suite_id)
    if role is not None:
        _role = _clean(role)
    if host is not None:
        _host = host


def set_process_role(role: str) -> None:
    """Name this process's role (``web``, ``worker``, ...); used by the server hooks."""
    set_identity(role=role)


def suite_id() -> str:
    return _suite_id or _clean(os.environ.get(SUITE_ID_ENV) or DEFAULT_SUITE_ID)


def process_role() -> str:
    return _role or _clean(os.environ.get(ROLE_ENV) or DEFAULT_ROLE)


def host_label() -> str:
    """This host's label ("" when unset: one host); ``auto`` is the machine's short host name."""
    raw = _host if _host is not None else os.environ.get(HOST_ENV, "")
    if raw.strip().lower() == "auto":
        raw = socket.gethostname().split(".")[0]
    return _clean(raw.strip())[:HOST_LABEL_MAX]


def application_name(pid: int | None = None) -> str:
    """``<suite-id>:<role>[@<host>]:<pid>``, at most 63 characters, never losing the pid or the host.

    When too long, the suite id and role are shortened (suite id first), since
    the pid and the host are what tell one process's sessions from another's.
    """
    tail = f":{pid if pid is not None else os.getpid()}"
    host = host_label()
    at = f"@{host}" if host else ""
    sid, role = suite_id(), process_role()
    room = APPLICATION_NAME_MAX - len(tail) - len(at) - 1  # 1 for the ':' between suite id and role
    if len(sid) + len(role) > room:
        role = role[: max(room // 2, room - len(sid))]
        sid = sid[: room - len(role)]
    return f"{sid}:{role}{at}{tail}"
