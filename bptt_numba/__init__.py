"""bptt-numba: fast CPU training of recurrent networks with backpropagation through time."""

from . import datasets
from .network import Network
from .training import Trainer, make_streams, train

__all__ = ["Network", "Trainer", "datasets", "make_streams", "train"]
__version__ = "0.1.0"
