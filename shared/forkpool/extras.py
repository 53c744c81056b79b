"""Optional parts of forkpool and the extra that installs each: a clear error instead of a bare ImportError."""

from __future__ import annotations

import importlib
import types

from .errors import ForkpoolError


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
