"""Who this process is, as the servers see it: ``<name>:<role>:<pid>`` (``FORKPOOL_NAME``, ``PROCESS_ROLE``).

Every PostgreSQL connection carries it as ``application_name`` and every Redis
client as ``client_name``, so one deployment's sessions can be counted exactly,
by role and by process. It is read at connect time, so after a fork the
child's connections carry the child's pid.

On more than one host, ``HOST_LABEL`` names the host and joins the role:
``<name>:<role>@<host>:<pid>`` (``web@h1``). Pids repeat across hosts, so
without it two hosts' processes could carry one name; inside the role, every
parser that splits ``name:role:pid`` keeps working, and grouping by role
groups by role and host. ``HOST_LABEL=auto`` takes the machine's host name
(a container's id under Docker).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import warnings

NAME_ENV = "FORKPOOL_NAME"
# The variable's name before 0.3.0, still read (with one FutureWarning per process) when NAME_ENV is unset.
DEPRECATED_NAME_ENV = "SUITE_ID"
ROLE_ENV = "PROCESS_ROLE"
HOST_ENV = "HOST_LABEL"
DEFAULT_NAME = "forkpool"
DEFAULT_ROLE = "app"

# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
APPLICATION_NAME_MAX = 63
# A host label is kept whole in the name; this bounds it so the role and the name keep some room.
HOST_LABEL_MAX = 20

# Redis client names may not contain spaces; keep both identities to one safe alphabet.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")

_name: str | None = None
_role: str | None = None
_host: str | None = None
# The deprecated variable is announced once per process, whichever thread reads it first.
_warned_lock = threading.Lock()
_warned = False


def _clean(value: str) -> str:
    return _UNSAFE.sub("_", value)


def set_identity(
    *,
    name: str | None = None,
    role: str | None = None,
    host: str | None = None,
    suite_id: str | None = None,
) -> None:
    """Set this process's name, role and/or host label in code (overrides the environment).

    ``suite_id=`` is the keyword's name before 0.3.0: deprecated, it sets the name.
    """
    global _name, _role, _host
    if suite_id is not None:
        warnings.warn(
            "set_identity(suite_id=...) is deprecated: use set_identity(name=...)", DeprecationWarning, stacklevel=2
        )
        if name is None:
            name = suite_id
    if name is not None:
        _name = _clean(name)
    if role is not None:
        _role = _clean(role)
    if host is not None:
        _host = host


def set_process_role(role: str) -> None:
    """Name this process's role (``web``, ``worker``, ...); used by the server hooks."""
    set_identity(role=role)


def name() -> str:
    """This deployment's name: ``set_identity(name=...)``, else ``FORKPOOL_NAME``, else ``forkpool``."""
    if _name:
        return _name
    value = os.environ.get(NAME_ENV)
    if not value:
        value = os.environ.get(DEPRECATED_NAME_ENV)
        if value:
            _warn_deprecated_env()
    return _clean(value or DEFAULT_NAME)


def _warn_deprecated_env() -> None:
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"the environment variable {DEPRECATED_NAME_ENV} is deprecated: set {NAME_ENV} instead "
        f"(read as the deployment's name until forkpool 0.4)",
        FutureWarning,  # for whoever deploys, not only for developers: shown by default
        stacklevel=3,
    )


def suite_id() -> str:
    """Deprecated: ``forkpool.identity.name()``."""
    warnings.warn(
        "forkpool.identity.suite_id() is deprecated: use forkpool.identity.name()", DeprecationWarning, stacklevel=2
    )
    return name()


def process_role() -> str:
    return _role or _clean(os.environ.get(ROLE_ENV) or DEFAULT_ROLE)


def host_label() -> str:
    """This host's label ("" when unset: one host); ``auto`` is the machine's short host name."""
    raw = _host if _host is not None else os.environ.get(HOST_ENV, "")
    if raw.strip().lower() == "auto":
        raw = socket.gethostname().split(".")[0]
    return _clean(raw.strip())[:HOST_LABEL_MAX]


def application_name(pid: int | None = None) -> str:
    """``<name>:<role>[@<host>]:<pid>``, at most 63 characters, never losing the pid or the host.

    When too long, the name and role are shortened (name first), since
    the pid and the host are what tell one process's sessions from another's.
    """
    tail = f":{pid if pid is not None else os.getpid()}"
    host = host_label()
    at = f"@{host}" if host else ""
    sid, role = name(), process_role()
    room = APPLICATION_NAME_MAX - len(tail) - len(at) - 1  # 1 for the ':' between name and role
    if len(sid) + len(role) > room:
        role = role[: max(room // 2, room - len(sid))]
        sid = sid[: room - len(role)]
    return f"{sid}:{role}{at}{tail}"
