"""Exceptions raised by forkpool's shared library.

Every message here is safe to show to a user: DSNs in them are redacted.
"""

from __future__ import annotations

import importlib
import types


class ForkpoolError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(ForkpoolError, ValueError):
    """A setting is invalid; the message is one line naming the setting and its value."""


class PoolError(ForkpoolError):
    """Base class of the pool's run-time errors."""


class PoolTimeout(PoolError):
    """No connection became free within the caller's timeout."""


class TooManyWaiting(PoolError):
    """The pool's queue of waiting callers is full (`max_waiting`)."""


class PoolClosed(PoolError):
    """The pool was closed, or belongs to another process (it was inherited across fork)."""


class ConnectError(PoolError):
    """The pool could not open a new connection to the server."""


# -- optional parts and the extra that installs each ---------------------------------------------------------
# Optional parts of forkpool and the extra that installs each: a clear error instead of a bare ImportError.


class MissingExtra(ForkpoolError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def import_extra(module: str, extra: str, feature: str) -> types.ModuleType:
    """Import `module` for `feature`, or raise MissingExtra saying ``pip install 'forkpool[extra]'``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but something it imports is missing: show the real error
        raise MissingExtra(
            f"{feature} needs {module.split('.')[0]}, which is not installed: pip install 'forkpool[{extra}]'"
        ) from None
