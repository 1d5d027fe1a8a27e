"""The linear head: the network's outputs from the top layer's states.

Each row is computed on its own (``_products.affine``), in the same order
whatever the other rows, so that a prediction does not depend on the rest
of its batch (a BLAS product rounds a row by its position in the call).  Compiled: in NumPy the
head of a one-sequence prediction was five to seven calls (the indices of
the last steps, their gather, ``einsum``, the bias), 20-30 us of the Python
around its kernels here.
"""

import numpy as np

from .._config import kernel
from ._products import affine


@kernel
def linear(features, weight_t, bias, out):
    """``out = features @ weight_t + bias``, row by row (``_products.affine``).

    Parameters
    ----------
    features : ndarray of shape (N, F)
    weight_t : ndarray of shape (F, O), C-ordered
        The head's weight, transposed.
    bias : ndarray of shape (O,)
    out : ndarray of shape (N, O)
        Written.
    """
    affine(features, weight_t, bias, out)


@kernel
def last_outputs(h, h_reverse, samples, slots, weight_t, bias, features, out):
    """The head at each sample's last step: its input gathered from the states, and `linear` of it.

    Parameters
    ----------
    h : ndarray of shape (K, T + 1, C, H)
        The top layer's (forward) state buffer (``layers.forward``).
    h_reverse : ndarray of shape (K, T + 1, C, H), or empty
        The reverse direction's, read at slot 0: its state after the whole
        sequence.
    samples : ndarray of shape (N,), int64
        Sample ``b`` is row ``b % C`` of chunk ``b // C``.
    slots : ndarray of shape (N,), int64
        The slot of ``h`` each sample is read at: its last step plus one.
    weight_t, bias
        As for `linear`.
    features : ndarray of shape (N, H), or (N, 2 H) with ``h_reverse``
        Written: the forward state, then the reverse one.
    out : ndarray of shape (N, O)
        Written.
    """
    chunk, hidden = h.shape[2], h.shape[3]
    for n in range(samples.shape[0]):
        k, i = divmod(samples[n], chunk)
        row, forward = features[n], h[k, slots[n], i]
        for j in range(hidden):
            row[j] = forward[j]
        if h_reverse.size:
            reverse = h_reverse[k, 0, i]
            for j in range(hidden):
                row[hidden + j] = reverse[j]
    affine(features, weight_t, bias, out)


@kernel
def backward(d_out, features, weight, samples, steps, g_weight, g_bias, d_top, d_top_reverse):
    """Back through the head: its gradients, and d loss / d its inputs put where the top layer's pass reads them.

    One call for what were seven NumPy calls, two of them BLAS products: 89
    us of an LSTM H=64 B=64 T=28 training step here, measured in the step.
    In-process A/B of the whole step (2 threads, alternating): that LSTM
    0.95-0.99, RNN H=64 B=32 0.96-0.97, LSTM H=64 B=1 T=500 0.97; a cold
    first fit compiled 0.4-2 s longer.  Every sum runs over the rows in
    order, so the result depends on neither the thread count nor BLAS.

    Parameters
    ----------
    d_out : ndarray of shape (N, O)
        d loss / d outputs of the rows scored.
    features : ndarray of shape (N, F)
        Their head inputs.
    weight : ndarray of shape (O, F)
        The head's weight (PyTorch's layout).
    samples, steps : ndarray of shape (N,), int64
        Row ``n`` is sample ``b = samples[n]`` (row ``b % C`` of chunk
        ``b // C``) at step ``steps[n]`` of ``d_top``.
    g_weight : ndarray of shape (O, F)
    g_bias : ndarray of shape (O,)
        Accumulated: ``+= d_out.T @ features`` and ``+= d_out.sum(0)``.
    d_top : ndarray of shape (K, S, C, H)
        Written at each row's place: its first ``H`` input gradients.
    d_top_reverse : ndarray of shape (K, S, C, H), or empty
        Written alike: the ``H`` after them (a bidirectional top layer).
    """
    n_rows, n_out = d_out.shape
    n_features = features.shape[1]
    chunk, hidden = d_top.shape[2], d_top.shape[3]
    zeros = np.zeros(n_features, dtype=d_out.dtype)
    # Both products are `affine`'s (with a copy of d_out transposed), which
    # compiles in a fraction of the time `gradient_matmul` takes.
    d_out_t = np.empty((n_out, n_rows), dtype=d_out.dtype)
    for n in range(n_rows):
        for o in range(n_out):
            d_out_t[o, n] = d_out[n, o]
    weight_grad = np.empty((n_out, n_features), dtype=d_out.dtype)
    affine(d_out_t, features, zeros, weight_grad)
    for o in range(n_out):
        row, part = g_weight[o], weight_grad[o]
        for j in range(n_features):
            row[j] += part[j]
        # In float64, as NumPy's pairwise sum kept it accurate over many rows.
        total = 0.0
        for n in range(n_rows):
            total += d_out_t[o, n]
        g_bias[o] += total
    d_features = np.empty((n_rows, n_features), dtype=d_out.dtype)
    affine(d_out, weight, zeros, d_features)
    for n in range(n_rows):
        k, i = divmod(samples[n], chunk)
        source, target = d_features[n], d_top[k, steps[n], i]
        for j in range(hidden):
            target[j] = source[j]
        if d_top_reverse.size:
            target = d_top_reverse[k, steps[n], i]
            for j in range(hidden):
                target[j] = source[hidden + j]
