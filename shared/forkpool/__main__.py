"""``python -m forkpool`` is the ``forkpool`` command."""

import sys

from .cli import main

sys.exit(main())
