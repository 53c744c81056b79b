"""``python -m forkpool`` is the ``forkpool`` command."""

import sys

from ._cli import main

sys.exit(main())
