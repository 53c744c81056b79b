"""One module per library forkpool protects, each attached through that library's own API.

``integration_for(obj)`` picks the module by the object's type name, so a
library is imported only when an object of it is protected.
"""

from __future__ import annotations

import importlib
from typing import Any

# (module prefix of the object's class, class names or "*", integration module)
_BY_TYPE = (
    ("sqlalchemy.engine", {"Engine"}, "sqlalchemy"),
    ("sqlalchemy.ext.asyncio", {"AsyncEngine"}, "sqlalchemy_async"),
    ("flask_sqlalchemy", {"SQLAlchemy"}, "sqlalchemy"),
    (
        "psycopg_pool",
        {"ConnectionPool", "AsyncConnectionPool", "NullConnectionPool", "AsyncNullConnectionPool"},
        "psycopg_pool",
    ),
    ("asyncpg", {"Pool"}, "asyncpg"),
    ("redis", {"Redis", "StrictRedis"}, "redis"),
    ("psycopg2", {"connection"}, "dbapi"),
    ("psycopg", {"Connection", "AsyncConnection"}, "dbapi"),
)


def integration_for(obj: Any) -> Any:
    """The Integration for `obj`, or None when forkpool has none."""
    for cls in type(obj).__mro__:
        for prefix, names, module in _BY_TYPE:
            if cls.__module__.startswith(prefix) and cls.__name__ in names:
                return importlib.import_module(f"{__name__}.{module}").INTEGRATION
    return None
