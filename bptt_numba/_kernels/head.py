"""The linear head: the network's outputs from the top layer's states.

Each row is computed on its own (``_products.affine``), in the same order
whatever the other rows, so that a prediction does not depend on the rest
of its batch (a BLAS product rounds a row by its position in the call).  Compiled: in NumPy the
head of a one-sequence prediction was five to seven calls (the indices of
the last steps, their gather, ``einsum``, the bias), 20-30 us of the Python
around its kernels here.
"""

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
