"""bptt-numba: fast CPU training of recurrent networks with backpropagation through time."""

import importlib

from . import datasets
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

#: Imported on first use: the estimators import scikit-learn (about 2 s here),
#: which users of the engine alone should not pay for.
_ESTIMATORS = ("RNNClassifier", "RNNForecaster", "RNNRegressor")


def __getattr__(name):
    if name in _ESTIMATORS:
        return getattr(importlib.import_module(".estimators", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
