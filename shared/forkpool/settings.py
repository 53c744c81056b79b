"""A pool's settings (defaults, the environment, validation), and the redaction of every string shown.

Bad values fail at start-up with one line naming the setting and the value,
never a traceback at the first request, and never showing a password.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import unquote

from ._drivers import ASYNCPG, ISOLATION_LEVELS, BadConninfo, Session, asyncpg_arguments, parse_conninfo, resolve_name
from .errors import ConfigError, MissingExtra

DEFAULT_SIZE = 4
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_LIFETIME = 3600.0
DEFAULT_MAX_IDLE = 600.0
DEFAULT_CHECK_IDLE = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
# A silent network (a failover leaving the old address dropping packets, no RST) must fail a caller
# well inside Gunicorn's 30 s worker timeout, never hang it. libpq's socket options do it in the
# kernel, for both drivers: a query whose bytes go unacknowledged fails after tcp_user_timeout; an
# idle or waiting connection is probed after keepalives_idle, every keepalives_interval, and closed
# once a probe has gone unanswered past tcp_user_timeout (Linux; elsewhere after keepalives_count
# probes): ~11 s either way. A new connection fails after connect_timeout (5 s). Long queries on a
# live network are untouched: the server's kernel acknowledges both the query and the probes.
DEFAULT_KEEPALIVES_IDLE = 5.0
DEFAULT_KEEPALIVES_INTERVAL = 2.0
DEFAULT_KEEPALIVES_COUNT = 3
DEFAULT_TCP_USER_TIMEOUT = 10.0

# Environment variable -> settings field, for the default pool.
ENV_VARS: dict[str, str] = {
    "DATABASE_URL": "dsn",
    "DB_POOL_MIN": "min_size",
    "DB_POOL_MAX": "max_size",
    "DB_POOL_TIMEOUT": "timeout",
    "DB_POOL_MAX_WAITING": "max_waiting",
    "DB_POOL_MAX_LIFETIME": "max_lifetime",
    "DB_POOL_MAX_IDLE": "max_idle",
    "DB_POOL_CHECK_IDLE": "check_idle",
    "DB_POOL_LEAK_TIMEOUT": "leak_timeout",
    "DB_POOL_CONNECT_TIMEOUT": "connect_timeout",
    "DB_POOL_DRIVER": "driver",
    "DB_POOL_KEEPALIVES_IDLE": "keepalives_idle",
    "DB_POOL_KEEPALIVES_INTERVAL": "keepalives_interval",
    "DB_POOL_KEEPALIVES_COUNT": "keepalives_count",
    "DB_POOL_TCP_USER_TIMEOUT": "tcp_user_timeout",
    "DB_POOL_PREPARE": "prepare",
    "DB_POOL_AUTOCOMMIT": "autocommit",
    "DB_POOL_ISOLATION_LEVEL": "isolation_level",
    "DB_POOL_READ_ONLY": "read_only",
    "DB_POOL_DEFERRABLE": "deferrable",
}
# What connect_kwargs may carry for the session state (psycopg_pool's kwargs={"autocommit": True} and
# both drivers' spellings): taken out of the connection arguments, made the pool's session state.
SESSION_KWARGS: dict[str, str] = {
    "autocommit": "autocommit",
    "isolation_level": "isolation_level",
    "read_only": "read_only",
    "readonly": "read_only",
    "deferrable": "deferrable",
}
SIZE_ENV = "DB_POOL_SIZE"  # sets min_size = max_size: a fixed-size pool


@dataclass(frozen=True)
class PoolSettings:
    """Everything that decides how one named pool behaves.

    Times are seconds. ``0`` turns off ``max_waiting`` (unbounded queue),
    ``max_lifetime``, ``max_idle``, ``check_idle`` (check every checkout) and
    ``leak_timeout`` (no leak warnings), ``keepalives_idle`` (no TCP keepalives) and
    ``tcp_user_timeout`` (the system's default). The network settings are libpq's
    connection parameters; one the DSN or ``connect_kwargs`` sets wins over them.
    """

    dsn: str = ""
    min_size: int = DEFAULT_SIZE
    max_size: int = DEFAULT_SIZE
    timeout: float = DEFAULT_TIMEOUT
    max_waiting: int = 0
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    max_idle: float = DEFAULT_MAX_IDLE
    check_idle: float = DEFAULT_CHECK_IDLE
    leak_timeout: float = 0.0
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    keepalives_idle: float = DEFAULT_KEEPALIVES_IDLE
    keepalives_interval: float = DEFAULT_KEEPALIVES_INTERVAL
    keepalives_count: int = DEFAULT_KEEPALIVES_COUNT
    tcp_user_timeout: float = DEFAULT_TCP_USER_TIMEOUT
    connect_kwargs: Mapping[str, Any] | None = None
    # "psycopg2", "psycopg" (3), or "" for the installed one (psycopg2 first); "asyncpg": the asyncio pool
    # only (the asyncio pool speaks psycopg 3 for any other value).
    driver: str = ""
    # Server-side prepared statements (psycopg 3 prepares a query run 5 times; psycopg2 never does).
    # Off behind PgBouncer < 1.21 in transaction pooling: a statement prepared on one server
    # connection is unknown to the next transaction's.
    prepare: bool = True
    # The session state every connection starts in and is put back in when returned (see Session):
    # a returned connection is rolled back, then these are restored if its user changed them.
    autocommit: bool = False
    isolation_level: str = ""  # "" the server's default, or "read committed", "repeatable read", ...
    read_only: bool | None = None  # None: the server's default
    deferrable: bool | None = None
    # Per-connection hooks, set in code only (configure(), pool_for(), Pool(...)), never from the
    # environment. `configure(conn)` runs once on each new connection before the pool lends it;
    # `reset(conn)` on each returned one before it goes back idle. The asyncio pool awaits what they return.
    configure: Callable[[Any], Any] | None = None
    reset: Callable[[Any], Any] | None = None

    @property
    def identity(self) -> str:
        """The DSN without its password: how the pool is named in logs and stats."""
        return dsn_identity(self.dsn)

    def redact(self, text: str) -> str:
        """Mask this pool's password (and any password-looking part) in `text`."""
        return redact_text(text, _secrets(self.dsn))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={self.identity if f.name == 'dsn' else getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in ("connect_kwargs", "configure", "reset")
        )
        return f"PoolSettings({shown})"


def _secrets(dsn: str) -> tuple[str, ...]:
    return dsn_secrets(dsn)


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number of seconds")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    return env_bool(name, True, environ={name: raw})


def isolation_level(name: str, value: Any) -> str:
    """An isolation level by PostgreSQL's name for it (any case, "_" for " "), or psycopg 3's IsolationLevel."""
    if value is None:
        return ""
    text = getattr(value, "name", value)  # psycopg.IsolationLevel.REPEATABLE_READ -> "REPEATABLE_READ"
    if isinstance(text, str):
        level = " ".join(text.strip().lower().replace("_", " ").split())
        if level in ISOLATION_LEVELS:
            return level
    choices = ", ".join(repr(level) for level in ISOLATION_LEVELS[1:])
    raise ConfigError(f'{name}={value!r} is not an isolation level: use one of {choices} ("": the server\'s)')


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "min_size": _parse_int,
    "max_size": _parse_int,
    "max_waiting": _parse_int,
    "keepalives_count": _parse_int,
    "prepare": _parse_bool,
    "autocommit": _parse_bool,
    "isolation_level": isolation_level,
    "read_only": _parse_bool,
    "deferrable": _parse_bool,
}


def session_of(settings: PoolSettings) -> Session:
    """The session state of `settings`: its fields, and what connect_kwargs says (ConfigError on a conflict)."""
    level = isolation_level(_env_name("isolation_level"), settings.isolation_level)
    found: dict[str, Any] = {
        "autocommit": settings.autocommit,
        "isolation_level": level,
        "read_only": settings.read_only,
        "deferrable": settings.deferrable,
    }
    given = {key: value for key, value in (settings.connect_kwargs or {}).items() if key in SESSION_KWARGS}
    for key, value in given.items():
        field = SESSION_KWARGS[key]
        if field == "isolation_level":
            value = isolation_level(f"connect_kwargs[{key!r}]", value)
        elif (field == "autocommit" or value is not None) and not isinstance(value, bool):
            raise ConfigError(f"connect_kwargs[{key!r}]={value!r} must be True or False")
        default = getattr(PoolSettings, field)
        if found[field] != default and found[field] != value:
            raise ConfigError(f"connect_kwargs[{key!r}]={value!r} contradicts {_env_name(field)}={found[field]!r}")
        found[field] = value
    return Session(**found)


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The default pool's settings that the environment sets (unset variables are absent)."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    if env.get(SIZE_ENV, "").strip():
        size = _parse_int(SIZE_ENV, env[SIZE_ENV])
        if size < 1:
            raise ConfigError(f"{SIZE_ENV}={env[SIZE_ENV]!r} must be at least 1")
        found.update(min_size=size, max_size=size)
    for var, field in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or (field != "dsn" and not raw.strip()):
            continue
        parse = _PARSERS.get(field, parse_seconds)
        found[field] = raw.strip() if field == "driver" else raw if field == "dsn" else parse(var, raw)
    return found


def _env_name(field: str) -> str:
    """How a field is named in messages: its environment variable where it has one."""
    for var, name in ENV_VARS.items():
        if name == field:
            return f"{field} ({var})"
    return field


def validate(settings: PoolSettings) -> PoolSettings:
    """Return `settings` if coherent, else raise ConfigError naming the culprit."""
    _check_dsn(settings.dsn)
    if settings.max_size < 1:
        raise ConfigError(f"{_env_name('max_size')}={settings.max_size!r} must be at least 1")
    if settings.min_size < 0:
        raise ConfigError(f"{_env_name('min_size')}={settings.min_size!r} must not be negative")
    if settings.max_size < settings.min_size:
        raise ConfigError(
            f"{_env_name('max_size')}={settings.max_size!r} is smaller than "
            f"{_env_name('min_size')}={settings.min_size!r}"
        )
    if settings.max_waiting < 0:
        raise ConfigError(f"{_env_name('max_waiting')}={settings.max_waiting!r} must not be negative")
    for field in ("timeout", "connect_timeout"):
        if not getattr(settings, field) > 0:
            raise ConfigError(f"{_env_name(field)}={getattr(settings, field)!r} must be more than 0 seconds")
    for field in ("keepalives_interval", "keepalives_count"):
        if not getattr(settings, field) > 0:
            raise ConfigError(f"{_env_name(field)}={getattr(settings, field)!r} must be more than 0")
    for field in ("max_lifetime", "max_idle", "check_idle", "leak_timeout", "keepalives_idle", "tcp_user_timeout"):
        if getattr(settings, field) < 0:
            raise ConfigError(f"{_env_name(field)}={getattr(settings, field)!r} must not be negative (0 turns it off)")
    # An unknown or missing driver fails at start-up, not at the first checkout; so does a DSN asyncpg cannot take.
    if resolve_name(settings.driver) == ASYNCPG:
        given = {k: v for k, v in (settings.connect_kwargs or {}).items() if k not in SESSION_KWARGS}
        asyncpg_arguments({**parse_conninfo(settings.dsn), **given})
    settings = replace(
        settings, isolation_level=isolation_level(_env_name("isolation_level"), settings.isolation_level)
    )
    for field in ("autocommit", "read_only", "deferrable"):
        value = getattr(settings, field)
        if not isinstance(value, bool) and not (value is None and field != "autocommit"):
            raise ConfigError(f"{_env_name(field)}={value!r} must be True or False")
    session_of(settings)
    for field in ("configure", "reset"):
        if getattr(settings, field) is not None and not callable(getattr(settings, field)):
            raise ConfigError(f"{field}={getattr(settings, field)!r} must be a function taking the connection")
    return settings


def _check_dsn(dsn: str) -> None:
    try:
        parse_conninfo(dsn)
    except BadConninfo as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparsable"
        secrets = _secrets(dsn)
        raise ConfigError(
            f"dsn (DATABASE_URL)={redact_text(dsn, secrets)!r} is not a valid PostgreSQL DSN "
            f"({redact_text(reason, secrets)})"
        ) from None


def build_settings(base: PoolSettings | None = None, **overrides: Any) -> PoolSettings:
    """`base` (default: built-in defaults) with the non-None `overrides` applied, validated."""
    known = {f.name for f in fields(PoolSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown pool setting(s): {', '.join(unknown)}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return validate(replace(base or PoolSettings(), **chosen))


def with_hooks(
    settings: PoolSettings, configure: Callable[[Any], Any] | None, reset: Callable[[Any], Any] | None
) -> PoolSettings:
    """`settings` with the hooks given (None: keep the settings' own); ConfigError if one is not callable."""
    hooks: dict[str, Any] = {
        name: hook for name, hook in (("configure", configure), ("reset", reset)) if hook is not None
    }
    for name, hook in hooks.items():
        if not callable(hook):
            raise ConfigError(f"{name}={hook!r} must be a function taking the connection")
    return replace(settings, **hooks) if hooks else settings


def env_int(name: str, default: int, *, minimum: int = 0, environ: Mapping[str, str] | None = None) -> int:
    """A whole-number setting from the environment, at least `minimum`; ConfigError otherwise."""
    raw = (os.environ if environ is None else environ).get(name, "")
    if not raw.strip():
        return default
    value = _parse_int(name, raw)
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    raw = (os.environ if environ is None else environ).get(name, "")
    if not raw.strip():
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value (use 1/0, true/false, yes/no, on/off)")


# -- redaction: no password in any string the library shows --------------------------------------------------
# Keep passwords out of every string the library shows: logs, errors, repr, stats.
#
# A DSN is shown as its identity: ``postgresql://user@host:port/dbname``, never with
# its password. Free text (driver error messages, user input) goes through
# `redact_text`, which masks URL userinfo passwords and ``password=...`` pairs.

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
        return parse_conninfo(dsn).get("password") or None
    except (BadConninfo, MissingExtra):  # unreadable, or no driver to read it: the patterns below
        match = _URL_PASSWORD.search(dsn) or _KV_PASSWORD.search(dsn)
        return unquote(match["pw"].strip("'")) if match else None


def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """Every form a DSN's password can be quoted in: decoded, and as written (a parser's error about a
    bad percent-escape quotes it undecoded)."""
    found = {dsn_password(dsn)}
    match = _URL_PASSWORD.search(dsn) or _KV_PASSWORD.search(dsn)
    if match:
        written = match["pw"].strip("'")
        found |= {written, unquote(written)}
    return tuple(sorted((p for p in found if p), key=len, reverse=True))  # the longest first: no half-masked secret


def dsn_identity(dsn: str) -> str:
    """The DSN without its password, as ``postgresql://user@host:port/dbname``.

    This is a pool's identity key: two DSNs that differ only in password are the
    same server and database for reporting purposes.
    """
    params = parse_conninfo(dsn)
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
