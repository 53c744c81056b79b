"""For code that forks where Python's at-fork hooks do not run: ``after_fork_in_child()`` and ``PerProcess``."""

from __future__ import annotations

from ._process import PerProcess, after_fork_in_child

__all__ = ["PerProcess", "after_fork_in_child"]
