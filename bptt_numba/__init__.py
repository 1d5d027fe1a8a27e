"""bptt-numba: fast CPU training of recurrent networks with backpropagation through time."""

from . import datasets
from .network import Network

__all__ = ["Network", "datasets"]
__version__ = "0.1.0"
