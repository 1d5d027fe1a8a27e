"""Elman RNN forward unroll and backward through time (PyTorch equations).

``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with ``act`` tanh or ReLU.  Same
structure as the LSTM kernels: one recurrent GEMM per step outside the
parallel region, elementwise math in a ``prange`` over samples.
"""

import numpy as np
from numba import prange

from .._config import kernel
from ._recurrence import check_buffers, crosses_border, step_slots
from .activations import drelu, dtanh, relu, tanh

#: Leading buffers of the tape that form the recurrent state.
N_STATE = 1
N_GATES = 1


@kernel(parallel=True)
def elman_forward(gates, w_hh, b_hh, h, use_relu, lengths, reverse):
    """Unroll an Elman layer over time, in place.

    Parameters
    ----------
    gates : ndarray of shape (T, B, H)
        The input projection ``x W_ih^T + b_ih``; left unchanged (the
        backward pass needs only the states).
    w_hh : ndarray of shape (H, H)
    b_hh : ndarray of shape (H,)
    h : ndarray of shape (T + 1, B, H)
        Hidden states, the initial one in its slot (see ``_recurrence``).
    use_relu : bool
        ReLU instead of tanh.
    lengths : ndarray of shape (B,), int64
    reverse : bool
    """
    n_steps, batch, hidden = gates.shape
    rec = np.empty((batch, hidden), dtype=gates.dtype)
    for s in range(n_steps):
        t, prev, new = step_slots(s, n_steps, reverse)
        np.dot(h[prev], w_hh.T, rec)
        for b in prange(batch):
            if t >= lengths[b]:
                h[new, b] = h[prev, b]
                continue
            for j in range(hidden):
                pre = gates[t, b, j] + rec[b, j] + b_hh[j]
                h[new, b, j] = relu(pre) if use_relu else tanh(pre)


@kernel(parallel=True)
def elman_backward(gates, w_hh, h, use_relu, lengths, reverse, truncate, t_offset, dh_out):
    """Back-propagate through an unrolled Elman layer.

    Parameters
    ----------
    gates : ndarray of shape (T, B, H)
        Written: the gradient w.r.t. the pre-activations (zero at padded
        steps).
    w_hh : ndarray of shape (H, H)
    h : ndarray of shape (T + 1, B, H)
        States written by `elman_forward`.
    use_relu : bool
    lengths : ndarray of shape (B,), int64
    reverse : bool
    truncate : int
        Cut the gradient through the state at absolute times that are
        multiples of ``truncate``; 0 for full BPTT.
    t_offset : int
        Absolute time of step 0 of these buffers.
    dh_out : ndarray of shape (T, B, H)
        Gradient of the loss w.r.t. the layer's output at each step.
    """
    n_steps, batch, hidden = gates.shape
    dh = np.zeros((batch, hidden), dtype=gates.dtype)
    dh_rec = np.empty((batch, hidden), dtype=gates.dtype)
    later = n_steps
    cut = False
    for s in range(n_steps):
        t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
        if s > 0:
            later = t - 1 if reverse else t + 1
            cut = crosses_border(t, reverse, t_offset, truncate)
            np.dot(gates[later], w_hh, dh_rec)
        for b in prange(batch):
            if s > 0 and later < lengths[b]:
                if cut:
                    dh[b] = 0
                else:
                    dh[b] = dh_rec[b]
            da = gates[t, b]
            if t >= lengths[b]:
                da[:] = 0
                continue
            for j in range(hidden):
                hj = h[new, b, j]
                slope = drelu(hj) if use_relu else dtanh(hj)
                da[j] = (dh[b, j] + dh_out[t, b, j]) * slope


def forward(gates, w_hh, b_hh, state0, lengths, reverse, use_relu=False):
    """Allocate the state buffer and run `elman_forward`.

    Parameters
    ----------
    gates : ndarray of shape (T, B, H)
        Input projection.
    w_hh, b_hh : ndarray
    state0 : tuple of one ndarray of shape (B, H)
    lengths : ndarray of shape (B,), int64
    reverse : bool
    use_relu : bool

    Returns
    -------
    tape : tuple of ndarray
        ``(h,)``, states of shape (T + 1, B, H).
    """
    n_steps, batch, hidden = gates.shape
    h = np.empty((n_steps + 1, batch, hidden), dtype=gates.dtype)
    h[n_steps if reverse else 0] = state0[0]
    check_buffers(gates, w_hh, b_hh, h)
    elman_forward(gates, w_hh, b_hh, h, use_relu, lengths, reverse)
    return (h,)



def backward(gates, w_hh, tape, lengths, reverse, truncate, t_offset, dh_out, use_relu=False):
    """Run `elman_backward`; returns the recurrent-side row blocks (see lstm)."""
    check_buffers(gates, w_hh, tape[0], dh_out)
    elman_backward(gates, w_hh, tape[0], use_relu, lengths, reverse, truncate, t_offset, dh_out)
    return [(0, gates.shape[2], gates)]
