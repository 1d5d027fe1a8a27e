"""``python -m bptt_numba``: the ``bptt-numba`` command."""

import sys

from .cli import main

sys.exit(main())
