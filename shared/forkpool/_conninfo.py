"""libpq's connection strings read in Python, for a process with no libpq driver (asyncpg alone).

``parse(dsn)`` returns what libpq's ``PQconninfoParse`` returns for the same
string (the options it sets, as strings; no environment, no service file):
``key=value`` pairs (values quoted with ``'``, ``\\`` escaping the next
character) or a ``postgresql://`` / ``postgres://`` URI (user and password,
a comma-separated host list with ports, the database, query parameters; all
percent-decoded; ``ssl=true`` read as ``sslmode=require``, as libpq does).
An unknown keyword or a malformed string raises ``ValueError`` with libpq's
wording. tests/test_aio_pool_asyncpg.py compares it with libpq's own parser.
"""

from __future__ import annotations

from urllib.parse import unquote

# libpq's connection options (PostgreSQL 17's PQconninfoOptions, and the few older or newer ones a
# DSN may carry): what it accepts, so that a typo fails here as it would there.
KEYWORDS = frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "dbname",
        "fallback_application_name",
        "gssdelegation",
        "gssencmode",
        "gsslib",
        "host",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "max_protocol_version",
        "min_protocol_version",
        "options",
        "passfile",
        "password",
        "port",
        "replication",
        "require_auth",
        "requirepeer",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcertmode",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
        "user",
    }
)
_PREFIXES = ("postgresql://", "postgres://")


def parse(dsn: str) -> dict[str, str]:
    """`dsn` read as libpq reads it; ValueError (libpq's message) if it cannot be."""
    if dsn.startswith(_PREFIXES):
        return _parse_uri(dsn)
    return _parse_pairs(dsn)


def _store(found: dict[str, str], key: str, value: str) -> None:
    if key not in KEYWORDS:
        raise ValueError(f'invalid connection option "{key}"')
    found[key] = value


def _parse_pairs(dsn: str) -> dict[str, str]:
    found: dict[str, str] = {}
    i, n = 0, len(dsn)
    while True:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            return found
        start = i
        while i < n and dsn[i] != "=" and not dsn[i].isspace():
            i += 1
        key = dsn[start:i]
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n or dsn[i] != "=":
            raise ValueError(f'missing "=" after "{key}" in connection info string')
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and dsn[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string in connection info string")
                char = dsn[i]
                if char == "\\" and i + 1 < n:
                    value.append(dsn[i + 1])
                    i += 2
                elif char == "'":
                    i += 1
                    break
                else:
                    value.append(char)
                    i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(dsn[i])
                i += 1
        _store(found, key, "".join(value))


def _decode(text: str) -> str:
    if "%" in text:
        for index in range(len(text)):
            if text[index] == "%":
                code = text[index + 1 : index + 3]
                if len(code) < 2 or any(c not in "0123456789abcdefABCDEF" for c in code):
                    raise ValueError(f'invalid percent-encoded token: "{text}"')
        decoded = unquote(text, errors="strict")
        if "\x00" in decoded:
            raise ValueError(f'forbidden value %00 in percent-encoded value: "{text}"')
        return decoded
    return text


def _parse_uri(dsn: str) -> dict[str, str]:
    found: dict[str, str] = {}
    rest = dsn[len(next(p for p in _PREFIXES if dsn.startswith(p))) :]
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    path = None
    if "/" in rest:
        rest, path = rest.split("/", 1)
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, colon, password = userinfo.partition(":")
        if user:
            found["user"] = _decode(user)
        if colon and password:
            found["password"] = _decode(password)
    hosts: list[str] = []
    ports: list[str] = []
    for spec in rest.split(","):
        if spec.startswith("["):
            end = spec.find("]")
            if end < 0:
                raise ValueError(
                    f'end of string reached when looking for matching "]" in IPv6 host address in URI: "{dsn}"'
                )
            host, after = spec[1:end], spec[end + 1 :]
            if after and not after.startswith(":"):
                raise ValueError(f'unexpected character "{after[0]}" at position {len(dsn)} in URI: "{dsn}"')
            port = after[1:]
        else:
            host, _, port = spec.partition(":")
        hosts.append(_decode(host))
        ports.append(_decode(port))
    host_list, port_list = ",".join(hosts), ",".join(ports)
    if host_list:
        found["host"] = host_list
    if port_list:
        found["port"] = port_list
    if path:
        found["dbname"] = _decode(path)
    for pair in query.split("&") if query else ():
        key, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f'missing key/value separator "=" in URI query parameter: "{pair}"')
        if "=" in value:
            raise ValueError(f'extra key/value separator "=" in URI query parameter: "{pair}"')
        key, value = _decode(key), _decode(value)
        if key == "ssl" and value == "true":  # libpq's compatibility with JDBC URIs
            key, value = "sslmode", "require"
        if key not in KEYWORDS:
            raise ValueError(f'invalid URI query parameter: "{key}"')
        found[key] = value
    return found
