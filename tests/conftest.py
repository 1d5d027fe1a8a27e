"""Shared test set-up: one Numba cache for the whole suite.

Kernels compile once per dtype; pointing every test process at one cache
directory (unless the caller chose one) lets later runs, and CI after its
first pass, load them instead of compiling again.
"""

import os
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".numba_cache"))
