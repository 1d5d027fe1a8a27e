"""bptt-numba: fast CPU training of recurrent networks with backpropagation through time."""

from .network import Network

__all__ = ["Network"]
__version__ = "0.1.0"
