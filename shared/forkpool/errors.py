"""Exceptions raised by forkpool's shared library.

Every message here is safe to show to a user: DSNs in them are redacted.
"""

from __future__ import annotations


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
