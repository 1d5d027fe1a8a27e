"""Seeded data and networks shared by the benchmark suites."""

import numpy as np

from bptt_numba import Network


def make_batch(n_samples, n_steps, n_features, n_outputs=1, dtype="float32", seed=0):
    """A seeded random batch (X, y) for a "last"-output MSE step."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_steps, n_features)).astype(dtype)
    y = rng.standard_normal((n_samples, n_outputs)).astype(dtype)
    return X, y


def make_network(cell, hidden, n_features, dtype="float32"):
    """A seeded network with one layer of ``hidden`` units."""
    return Network(n_features, (hidden,), cell=cell, dtype=dtype, random_state=0)


def warm_up(net, truncate=None):
    """Compile the kernels outside the timed region."""
    X, y = make_batch(2, 3, net.n_features, dtype=net.dtype)
    net.loss_and_grad_vector(X, y, truncate=truncate)
    net.forward(X)
