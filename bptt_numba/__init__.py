"""bptt-numba: fast CPU training of recurrent networks with backpropagation through time."""

from . import datasets
from .estimators import RNNClassifier, RNNForecaster, RNNRegressor
from .network import Network
from .persistence import load, save
from .training import Trainer, make_streams, train

__all__ = [
    "Network",
    "RNNClassifier",
    "RNNForecaster",
    "RNNRegressor",
    "Trainer",
    "datasets",
    "load",
    "make_streams",
    "save",
    "train",
]
__version__ = "0.1.0"
