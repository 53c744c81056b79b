"""The PostgreSQL drivers the threaded pool speaks, behind one small interface; asyncpg's connect arguments.

    driver = get_driver("psycopg")      # or "psycopg2"; "" picks the installed one (psycopg2 first)

asyncpg (``driver="asyncpg"``) serves the asyncio pool only: its drivers are in
``_drivers_async``. What it needs from here is a name ``resolve_name`` knows,
and ``asyncpg_arguments``: a libpq connection string's parameters as
``asyncpg.connect()``'s, pure (no asyncpg import), so a DSN asyncpg cannot
express fails at configuration, in one line.

A driver opens a connection, puts it in the pool's session state (``Session``:
autocommit, isolation level, read only, deferrable), says whether a returned
one is clean (the hot path: a few attribute reads), brings one back to idle and
to that state, checks one with a round trip, rolls back and closes quietly.
Nothing here takes a pool lock.

Across fork both drivers leave the parent's session alone when an object made
in another process is deallocated (psycopg2 >= 2.8: ``CONN_CHECK_PID`` in
connection_type.c; psycopg 3: ``PGconn.__del__``, ``__dealloc__`` in the C
build, compares ``_procpid``), which is what the pool's fork detach relies on;
tests/test_busy_fork.py runs on both.
psycopg 3's connection also has a Python-level lock (``Connection.lock``) held
while a query runs: the detach never takes it, as it never calls ``close()``.

"Detach after fork" and "its socket" are not methods here because they are the
same for every driver: both connection types (and psycopg 3's async one) expose
``fileno()``, libpq's ``PQsocket()``, read without a lock or I/O, and both guard
deallocation by pid. So ``_base.drop_without_io`` (the fork detach, for
the threaded and the asyncio pool alike) and ``Entry``'s idle-socket poll use
``fileno()`` directly; a driver without those two properties would need its own
detach, and would be added here then. tests/test_foreign_dealloc.py checks the
dealloc guard of both drivers without the pool.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, MissingExtra

PSYCOPG2, PSYCOPG, ASYNCPG = "psycopg2", "psycopg", "asyncpg"
NAMES = (PSYCOPG2, PSYCOPG)  # the threaded pool's, in the order "" picks them
ASYNC_ONLY = (ASYNCPG,)  # named explicitly, never picked by "": the asyncio pool's only
NO_DRIVER = (
    "no PostgreSQL driver is installed: pip install 'forkpool[psycopg2]' (psycopg2) or 'forkpool[psycopg]' (psycopg 3)"
)

# Transaction isolation levels by the name PostgreSQL gives them; "" is the server's default.
ISOLATION_LEVELS = ("", "read uncommitted", "read committed", "repeatable read", "serializable")


@dataclass(frozen=True)
class Session:
    """The session state a pool's connections start in, and are reset to whenever they come back.

    ``None`` (and ``""`` for the isolation level) is the server's default
    (``default_transaction_read_only`` and the like), not "unchanged".
    """

    autocommit: bool = False
    isolation_level: str = ""
    read_only: bool | None = None
    deferrable: bool | None = None


class SetupFailed(Exception):
    """A hook failed on a new connection; each driver subclasses it with its own ``Error`` too,
    so the pool's connect paths, which catch the driver's Error, count and report it as a failed connect."""


class Driver:
    """What the pool asks of a driver. Subclasses fill in the module-specific parts."""

    name = ""
    Error: type[Exception] = Exception  # the driver's base error: anything the server or the network can raise
    # Connect arguments that keep the driver from preparing statements on the server (PgBouncer < 1.21).
    no_prepare: Mapping[str, Any] = {}
    SetupFailed: type[Exception] = SetupFailed  # per driver: a subclass of both SetupFailed and Error

    def connect(self, dsn: str, kwargs: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def clean_check(self, session: Session) -> Callable[[Any], bool]:
        """putconn()'s one question, asked on every return: idle and in `session`'s state?

        A closure over the driver's constants and the session's values, so the
        common return costs a few attribute reads and no call into the pool.
        """
        raise NotImplementedError

    def apply_session(self, conn: Any, session: Session) -> None:
        """Put an idle connection in `session`'s state; raises the driver's Error.

        Only what differs is set. psycopg2 in autocommit mode sends a ``SET
        default_transaction_...`` for a characteristic it changes (a round trip);
        outside autocommit, and with psycopg 3 always, setting them is local: the
        next ``BEGIN`` carries them.
        """
        raise NotImplementedError

    # Set per driver: libpq's transaction statuses as the driver reports them.
    _idle: int
    _unusable: tuple[int, ...]  # closed or broken, or (psycopg 3) a query still running on it

    def transaction_status(self, conn: Any) -> int:
        raise NotImplementedError

    def is_idle(self, conn: Any) -> bool:
        """Open and in no transaction (the state to leave a connection in for the pool)."""
        return self.transaction_status(conn) == self._idle

    def reset_for_reuse(self, conn: Any, session: Session) -> bool:
        """Bring a returned connection back to idle, in `session`'s state; False if it cannot be reused."""
        status = self.transaction_status(conn)
        if conn.closed or status in self._unusable:
            return False
        try:
            if status != self._idle:
                conn.rollback()
            self.apply_session(conn, session)
        except self.Error:
            return False
        return not conn.closed

    def is_alive(self, conn: Any) -> bool:
        """One round trip: does the server still answer on this (idle) connection?"""
        if conn.closed:
            return False
        try:
            was = conn.autocommit
            # One SELECT, not BEGIN + SELECT + ROLLBACK (psycopg2 with a non-default read only or
            # isolation level also SETs them around it: rare, and only for a connection idle past check_idle).
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.autocommit = was  # the pool's session state, as the connection had it
            return True
        except self.Error:
            return False

    def rollback_quietly(self, conn: Any) -> None:
        """Roll back after a failed block; a broken connection fails here too and is discarded on return."""
        try:
            conn.rollback()
        except self.Error:
            pass

    def close_quietly(self, conn: Any) -> None:
        """Close a connection this process opened (sends Terminate: only ever in the owner)."""
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a dying connection may fail any way; it is gone either way
            pass


class Psycopg2Driver(Driver):
    name = PSYCOPG2

    def __init__(self) -> None:
        import psycopg2
        import psycopg2.extensions as ext

        self._psycopg2 = psycopg2
        self.Error = psycopg2.Error
        self.SetupFailed = type("SetupFailed", (SetupFailed, psycopg2.OperationalError), {})
        self._idle, self._unusable = ext.TRANSACTION_STATUS_IDLE, (ext.TRANSACTION_STATUS_UNKNOWN,)
        self._levels: dict[str, int | None] = {
            "": None,
            "read uncommitted": ext.ISOLATION_LEVEL_READ_UNCOMMITTED,
            "read committed": ext.ISOLATION_LEVEL_READ_COMMITTED,
            "repeatable read": ext.ISOLATION_LEVEL_REPEATABLE_READ,
            "serializable": ext.ISOLATION_LEVEL_SERIALIZABLE,
        }

    def connect(self, dsn: str, kwargs: Mapping[str, Any]) -> Any:
        return self._psycopg2.connect(dsn, **kwargs)

    def clean_check(self, session: Session) -> Callable[[Any], bool]:
        idle, autocommit, level = self._idle, session.autocommit, self._levels[session.isolation_level]
        read_only, deferrable = session.read_only, session.deferrable
        # psycopg2's getters return None (the server's default) or a bool, and the level as None or an int.
        # The status comes first: a closed connection reports UNKNOWN, and its other getters raise.
        return lambda conn: (
            conn.get_transaction_status() == idle
            and conn.autocommit is autocommit
            and conn.readonly is read_only
            and conn.isolation_level == level
            and conn.deferrable is deferrable
        )

    def apply_session(self, conn: Any, session: Session) -> None:
        # Autocommit first: in autocommit mode psycopg2 sets the others with SET default_transaction_*.
        if conn.autocommit is not session.autocommit:
            conn.autocommit = session.autocommit
        level = self._levels[session.isolation_level]
        if conn.isolation_level != level:
            conn.isolation_level = level
        if conn.readonly is not session.read_only:
            conn.readonly = session.read_only
        if conn.deferrable is not session.deferrable:
            conn.deferrable = session.deferrable

    def transaction_status(self, conn: Any) -> int:
        return conn.get_transaction_status()  # type: ignore[no-any-return]  # UNKNOWN once closed


class PsycopgDriver(Driver):
    """psycopg 3: the same guarantees; statuses read from ``conn.pgconn`` (libpq's own, no enum built)."""

    name = PSYCOPG
    # psycopg 3 prepares a query on the server after its 5th execution on a connection; None: never.
    no_prepare = {"prepare_threshold": None}

    def __init__(self) -> None:
        import psycopg
        from psycopg import pq

        self._psycopg = psycopg
        self.Error = psycopg.Error
        self.SetupFailed = type("SetupFailed", (SetupFailed, psycopg.OperationalError), {})
        self._idle = int(pq.TransactionStatus.IDLE)
        # ACTIVE too: a query still running (a cursor not consumed) cannot be rolled back from here.
        self._unusable = (int(pq.TransactionStatus.UNKNOWN), int(pq.TransactionStatus.ACTIVE))

    def connect(self, dsn: str, kwargs: Mapping[str, Any]) -> Any:
        return self._psycopg.connect(dsn, **kwargs)

    def level(self, session: Session) -> Any:
        """The session's isolation level as psycopg 3 takes it (an IsolationLevel, or None: the default)."""
        name = session.isolation_level
        return self._psycopg.IsolationLevel[name.upper().replace(" ", "_")] if name else None

    def clean_check(self, session: Session) -> Callable[[Any], bool]:
        idle, autocommit, level = self._idle, session.autocommit, self.level(session)
        read_only, deferrable = session.read_only, session.deferrable
        return lambda conn: (
            conn.pgconn.transaction_status == idle
            and conn.autocommit is autocommit
            and conn.read_only is read_only
            and conn.isolation_level is level
            and conn.deferrable is deferrable
        )

    def apply_session(self, conn: Any, session: Session) -> None:
        # psycopg 3 keeps all four on the client and sends them with the next BEGIN: no I/O here.
        if conn.autocommit is not session.autocommit:
            conn.autocommit = session.autocommit
        level = self.level(session)
        if conn.isolation_level is not level:
            conn.isolation_level = level
        if conn.read_only is not session.read_only:
            conn.read_only = session.read_only
        if conn.deferrable is not session.deferrable:
            conn.deferrable = session.deferrable

    def transaction_status(self, conn: Any) -> int:
        return conn.pgconn.transaction_status  # type: ignore[no-any-return]  # libpq's own, no enum built


_CLASSES: dict[str, type[Driver]] = {PSYCOPG2: Psycopg2Driver, PSYCOPG: PsycopgDriver}
_made: dict[str, Driver] = {}


def installed() -> list[str]:
    """The supported drivers importable here, in the order "" picks them."""
    return list(_installed())


@functools.cache
def _installed() -> tuple[str, ...]:
    # Looked up once per interpreter: find_spec walks sys.path (about 0.1 ms each), and every
    # pool made, DSN read and forked child's first query asks. A driver installed into a running
    # process is picked up by the next one.
    return tuple(name for name in NAMES if importlib.util.find_spec(name) is not None)


def resolve_name(name: str) -> str:
    """The driver a setting names ("" : the first installed); ConfigError for an unknown or missing one."""
    if name in ASYNC_ONLY:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"DB_POOL_DRIVER={name!r} is not installed: pip install 'forkpool[{name}]'")
        return name
    if name and name not in NAMES:
        raise ConfigError(f"DB_POOL_DRIVER={name!r} must be one of {', '.join(NAMES + ASYNC_ONLY)}")
    present = installed()
    if not name:
        if not present:
            raise MissingExtra(NO_DRIVER)
        return present[0]
    if name not in present:
        extra = "psycopg" if name == PSYCOPG else "psycopg2"
        raise ConfigError(f"DB_POOL_DRIVER={name!r} is not installed: pip install 'forkpool[{extra}]'")
    return name


def get_driver(name: str = "") -> Driver:
    """The driver object for `name` (one per process and name; drivers hold no connection state)."""
    resolved = resolve_name(name)
    if resolved in ASYNC_ONLY:
        raise ConfigError(
            f"DB_POOL_DRIVER={resolved!r} serves forkpool's asyncio pool only (get_async_pool, AsyncPool): "
            "the threaded pool needs psycopg2 or psycopg"
        )
    driver = _made.get(resolved)
    if driver is None:
        driver = _made.setdefault(resolved, _CLASSES[resolved]())
    return driver


class BadConninfo(ValueError):
    """libpq could not read a connection string; the message is the driver's (it never holds the password)."""


def parse_conninfo(dsn: str) -> dict[str, str]:
    """A connection string (``key=value`` pairs or a ``postgresql://`` URI) read as libpq reads it.

    By whichever driver is installed (both call libpq's ``PQconninfoParse``), so
    the library needs no driver of its own; with neither (asyncpg alone), by
    ``_conninfo``, which reads it the same way in Python.
    """
    if not installed():
        from . import _conninfo

        try:
            return _conninfo.parse(dsn)
        except ValueError as exc:
            raise BadConninfo(str(exc)) from None
    if resolve_name("") == PSYCOPG2:
        import psycopg2
        import psycopg2.extensions

        try:
            params: dict[str, str] = psycopg2.extensions.parse_dsn(dsn)
            return params
        except psycopg2.Error as exc:
            raise BadConninfo(str(exc).strip()) from None
    import psycopg.conninfo

    try:
        return {key: str(value) for key, value in psycopg.conninfo.conninfo_to_dict(dsn).items()}
    except psycopg.Error as exc:
        raise BadConninfo(str(exc).strip()) from None


def make_conninfo(base: str = "", **params: Any) -> str:
    """`base` with `params` added or replaced, quoted as libpq needs (either driver's own function)."""
    if resolve_name("") == PSYCOPG2:
        import psycopg2.extensions

        made: str = psycopg2.extensions.make_dsn(base or None, **params)
        return made
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(base, **params)


def connect_once(dsn: str, application_name: str, timeout_s: int) -> Any:
    """A short connection of a tool's own (budget, doctor) by the installed driver; its ``Error`` on failure."""
    driver = get_driver("")
    return driver.connect(dsn, {"application_name": application_name, "connect_timeout": timeout_s})


def driver_error() -> type[Exception]:
    """The installed driver's base exception (what connect_once and queries raise)."""
    error: type[Exception] = get_driver("").Error
    return error


# -- asyncpg's connect arguments from libpq's parameters ------------------------------------------------------

# asyncpg.connect()'s own keyword arguments, passed through from connect_kwargs as they are.
ASYNCPG_NATIVE = frozenset(
    {
        "command_timeout",
        "connection_class",
        "direct_tls",
        "gsslib",
        "krbsrvname",
        "max_cacheable_statement_size",
        "max_cached_statement_lifetime",
        "passfile",
        "record_class",
        "server_settings",
        "service",
        "servicefile",
        "ssl",
        "statement_cache_size",
    }
)
# libpq's TLS parameters: asyncpg reads them from a DSN's query string only (a query-only DSN carries them).
_ASYNCPG_SSL_QUERY = (
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
)
# TCP options asyncpg does not set: the asyncio pool sets them on the socket after connecting.
_ASYNCPG_SOCKET = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")
# Read and dropped: forkpool names every session itself (identity.py); asyncpg speaks UTF-8 only.
_ASYNCPG_IGNORED = ("fallback_application_name",)


def asyncpg_arguments(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """libpq parameters (a parsed DSN, the pool's connect parameters over it) as ``asyncpg.connect()``'s keyword
    arguments, and the TCP options (libpq's names and units) to set on its socket. ConfigError, one line, for a
    parameter asyncpg has no equivalent for. A multi-host ``host=a,b port=p1,p2`` becomes asyncpg's lists."""
    found: dict[str, Any] = {}
    server_settings: dict[str, str] = {}
    ssl_query: dict[str, str] = {}
    socket_options: dict[str, int] = {}
    app_name: str | None = None
    for key, value in params.items():
        if key in ASYNCPG_NATIVE:
            if key == "server_settings":
                server_settings.update(value or {})
            else:
                found[key] = value
        elif key in ("host", "hostaddr", "port"):
            continue  # below, together: hostaddr, where given, is where libpq connects
        elif key in ("user", "password", "target_session_attrs"):
            found[key] = str(value)
        elif key == "dbname":
            found["database"] = str(value)
        elif key == "application_name":
            app_name = str(value)  # after server_settings: as with libpq, the parameter wins
        elif key == "options":
            server_settings.update(_options_settings(str(value)))
        elif key == "connect_timeout":
            found["timeout"] = float(_number(key, value))
        elif key == "client_encoding":
            if str(value).lower().replace("-", "") not in ("utf8", "unicode"):
                raise ConfigError(f"client_encoding={value!r}: asyncpg speaks UTF-8 only")
        elif key in _ASYNCPG_SSL_QUERY:
            ssl_query[key] = str(value)
        elif key in _ASYNCPG_SOCKET:
            socket_options[key] = _number(key, value)
        elif key not in _ASYNCPG_IGNORED:
            # The key only: a misspelt `password` would carry the secret (libpq names only the key too).
            raise ConfigError(f"{key}: libpq's parameter has no asyncpg equivalent (driver asyncpg)")
    if app_name is not None:
        server_settings["application_name"] = app_name
    hosts = [h.strip() for h in str(params.get("hostaddr") or params.get("host") or "").split(",")]
    if hosts != [""]:
        found["host"] = hosts if len(hosts) > 1 else hosts[0]
    if params.get("port") not in (None, ""):
        # libpq: one port for every host, or one per host; an empty one is the default port.
        ports = [_number("port", p) if p.strip() else DEFAULT_PORT for p in str(params["port"]).split(",")]
        if len(ports) > 1 and len(ports) != len(hosts):
            raise ConfigError(f"port={params['port']!r}: {len(ports)} port numbers for {len(hosts)} hosts")
        found["port"] = ports if len(ports) > 1 else ports[0]
    if server_settings:
        found["server_settings"] = server_settings
    if ssl_query:
        from urllib.parse import urlencode

        found["dsn"] = "postgresql://?" + urlencode(ssl_query)  # asyncpg: keyword arguments win over the DSN
    return found, socket_options


DEFAULT_PORT = 5432  # libpq's for an empty entry of a port list


def _number(key: str, value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a whole number") from None


def _options_settings(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value`` and ``--name=value``, the forms PostgreSQL documents) as settings."""
    found: dict[str, str] = {}
    words = options.split()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            word, i = "-c" + words[i + 1], i + 1
        if word.startswith(("-c", "--")) and "=" in word:
            name, _, value = word[2:].partition("=")
        else:
            raise ConfigError(f"options={options!r}: asyncpg takes only -c name=value settings (server_settings)")
        found[name.replace("-", "_")] = value
        i += 1
    return found
