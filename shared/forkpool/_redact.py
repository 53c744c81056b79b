"""Keep passwords out of every string the library shows: logs, errors, repr, stats.

A DSN is shown as its identity: ``postgresql://user@host:port/dbname``, never with
its password. Free text (driver error messages, user input) goes through
`redact_text`, which masks URL userinfo passwords and ``password=...`` pairs.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import psycopg2.extensions

MASK = "***"

# postgresql://user:secret@host -> postgresql://user:***@host (any scheme, e.g. redis://)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")
# password=secret / password='se cret' in libpq keyword DSNs and messages
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask every password-looking part of `text`, and every literal in `secrets`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, if any (for masking it in third-party messages)."""
    try:
        return psycopg2.extensions.parse_dsn(dsn).get("password") or None
    except psycopg2.Error:
        match = _URL_PASSWORD.search(dsn) or _KV_PASSWORD.search(dsn)
        return unquote(match["pw"].strip("'")) if match else None


def dsn_identity(dsn: str) -> str:
    """The DSN without its password, as ``postgresql://user@host:port/dbname``.

    This is a pool's identity key: two DSNs that differ only in password are the
    same server and database for reporting purposes.
    """
    params = psycopg2.extensions.parse_dsn(dsn)
    user = params.get("user", "")
    host = params.get("host", "") or params.get("hostaddr", "")
    port = params.get("port", "")
    dbname = params.get("dbname", "")
    netloc = f"{user}@" if user else ""
    netloc += host if "," in host or ":" not in host else f"[{host}]"
    netloc += f":{port}" if port else ""
    return f"postgresql://{netloc}/{dbname}"


def describe_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """An exception as one redacted line (driver messages span several lines)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return redact_text(first, secrets)
