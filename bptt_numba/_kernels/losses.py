"""Loss values and their gradients w.r.t. the network outputs.

Each kernel takes the outputs at the target positions (one row per position),
the targets, a weight per row and ``scale`` (one over the normaliser of the
weighted mean, computed once for the whole batch so that chunks of a
truncated sequence add up to the mean of the whole).  It writes the gradient
into ``grad`` and returns the scaled loss.  The loss sum is accumulated in
float64 on purpose: it is one scalar, and thousands of float32 terms would
lose digits the early-stopping test compares.
"""

import numpy as np

from .._config import kernel
from .activations import sigmoid


@kernel
def mse(out, target, weight, scale, grad):
    """Weighted squared error; PyTorch's ``MSELoss`` for unit weights.

    Parameters
    ----------
    out, target : ndarray of shape (N, O)
    weight : ndarray of shape (N,)
    scale : float
        ``1 / (O * sum of all weights of the batch)``.
    grad : ndarray of shape (N, O)
        Written: d loss / d out.

    Returns
    -------
    float
    """
    total = 0.0
    two = out.dtype.type(2.0)
    for n in range(out.shape[0]):
        w = weight[n] * out.dtype.type(scale)
        for o in range(out.shape[1]):
            diff = out[n, o] - target[n, o]
            total += np.float64(w) * np.float64(diff) * np.float64(diff)
            grad[n, o] = two * w * diff
    return total


@kernel
def binary_cross_entropy(out, target, weight, scale, grad):
    """Weighted binary cross-entropy on logits, stable for any logit.

    ``max(x, 0) - x * y + log1p(exp(-|x|))`` per element.  Parameters and
    return value as for `mse`; ``target`` holds probabilities in [0, 1].
    """
    total = 0.0
    zero = out.dtype.type(0.0)
    for n in range(out.shape[0]):
        w = weight[n] * out.dtype.type(scale)
        for o in range(out.shape[1]):
            x = out[n, o]
            y = target[n, o]
            value = max(x, zero) - x * y + np.log1p(np.exp(-abs(x)))
            total += np.float64(w) * np.float64(value)
            grad[n, o] = w * (sigmoid(x) - y)
    return total


@kernel
def cross_entropy(out, labels, weight, scale, grad):
    """Weighted softmax cross-entropy with integer labels, via log-sum-exp.

    Parameters
    ----------
    out : ndarray of shape (N, C)
        Logits.
    labels : ndarray of shape (N,), int64
        Class indices in ``[0, C)``.
    weight : ndarray of shape (N,)
    scale : float
        ``1 / sum of all weights of the batch``.
    grad : ndarray of shape (N, C)
        Written: d loss / d out.

    Returns
    -------
    float
    """
    total = 0.0
    for n in range(out.shape[0]):
        w = weight[n] * out.dtype.type(scale)
        row = out[n]
        top = row.max()
        sum_exp = out.dtype.type(0.0)
        for k in range(row.shape[0]):
            sum_exp += np.exp(row[k] - top)
        log_norm = top + np.log(sum_exp)
        total += np.float64(w) * np.float64(log_norm - row[labels[n]])
        for k in range(row.shape[0]):
            grad[n, k] = w * np.exp(row[k] - log_norm)
        grad[n, labels[n]] -= w
    return total
