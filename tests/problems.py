"""Small seeded problems shared by the engine tests."""

import numpy as np

from bptt_numba import Network

#: (cell, nonlinearity): every cell, and both Elman activations.
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def make_problem(
    cell="lstm",
    nonlinearity="tanh",
    hidden_sizes=(3,),
    bidirectional=False,
    output="last",
    loss="mse",
    lengths=None,
    n_samples=3,
    n_steps=5,
    n_features=2,
    n_outputs=2,
    dtype="float64",
    seed=0,
):
    """A network and a batch (X, y, lengths, sample_weight) for it.

    Weights are drawn a little larger than the default initialisation so
    that every gate is away from its linear regime and errors show.
    """
    rng = np.random.default_rng(seed)
    net = Network(
        n_features,
        hidden_sizes,
        cell=cell,
        n_outputs=n_outputs,
        bidirectional=bidirectional,
        nonlinearity=nonlinearity,
        dtype=dtype,
        random_state=seed,
    )
    net.params[:] = rng.uniform(-0.6, 0.6, size=net.params.shape)
    X = rng.normal(size=(n_samples, n_steps, n_features))
    if lengths is None:
        lengths = np.full(n_samples, n_steps)
    lengths = np.asarray(lengths)
    lead = (n_samples,) if output == "last" else (n_samples, n_steps)
    if loss == "cross_entropy":
        y = rng.integers(0, n_outputs, size=lead)
    elif loss == "binary_cross_entropy":
        y = rng.uniform(size=lead + (n_outputs,))
    else:
        y = rng.normal(size=lead + (n_outputs,))
    sample_weight = rng.uniform(0.5, 2.0, size=n_samples)
    return net, X, y, lengths, sample_weight


def relative_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``, robust to all-zero arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12)
