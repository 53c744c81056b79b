"""``python -m harness`` is the ``forkpool`` command."""

from .cli import run

run()
