"""LSTM forward unroll and backward through time (PyTorch equations).

Gate blocks are stacked in PyTorch's order i, f, g, o::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')

The input projection of all steps is one GEMM done by the caller; each step
here is one recurrent GEMM for the whole batch (outside the parallel region)
followed by fused gate math in a ``prange`` over samples.  Samples never share
an output element, so results do not depend on the thread count.
"""

import numpy as np
from numba import prange

from .._config import kernel
from ._recurrence import check_buffers, crosses_border, step_slots
from .activations import dsigmoid, dtanh, sigmoid, tanh

#: Leading buffers of the tape that form the recurrent state.
N_STATE = 2
N_GATES = 4


@kernel(parallel=True)
def lstm_forward(gates, w_hh, b_hh, h, c, lengths, reverse):
    """Unroll an LSTM layer over time, in place.

    Parameters
    ----------
    gates : ndarray of shape (T, B, 4H)
        On entry the input projection ``x W_ih^T + b_ih`` of every step; on
        exit the activated gates i, f, g, o (kept for the backward pass).
    w_hh : ndarray of shape (4H, H)
    b_hh : ndarray of shape (4H,)
    h, c : ndarray of shape (T + 1, B, H)
        Hidden and cell states; the initial state must be in its slot
        (see ``_recurrence``), the other slots are written.
    lengths : ndarray of shape (B,), int64
        Valid steps per sample; a sample's state is frozen after them.
    reverse : bool
        Process time backwards (the reverse direction of a bidirectional
        layer).
    """
    n_steps, batch, n_gates = gates.shape
    hidden = n_gates // 4
    rec = np.empty((batch, n_gates), dtype=gates.dtype)
    for s in range(n_steps):
        t, prev, new = step_slots(s, n_steps, reverse)
        np.dot(h[prev], w_hh.T, rec)
        for b in prange(batch):
            if t >= lengths[b]:
                h[new, b] = h[prev, b]
                c[new, b] = c[prev, b]
                continue
            a = gates[t, b]
            r = rec[b]
            for j in range(hidden):
                ig = sigmoid(a[j] + r[j] + b_hh[j])
                fg = sigmoid(a[hidden + j] + r[hidden + j] + b_hh[hidden + j])
                gg = tanh(a[2 * hidden + j] + r[2 * hidden + j] + b_hh[2 * hidden + j])
                og = sigmoid(a[3 * hidden + j] + r[3 * hidden + j] + b_hh[3 * hidden + j])
                cj = fg * c[prev, b, j] + ig * gg
                c[new, b, j] = cj
                h[new, b, j] = og * tanh(cj)
                a[j] = ig
                a[hidden + j] = fg
                a[2 * hidden + j] = gg
                a[3 * hidden + j] = og


@kernel(parallel=True)
def lstm_backward(gates, w_hh, h, c, lengths, reverse, truncate, t_offset, dh_out):
    """Back-propagate through an unrolled LSTM layer, in place.

    Parameters
    ----------
    gates : ndarray of shape (T, B, 4H)
        On entry the activated gates from `lstm_forward`; on exit the
        gradient of the loss w.r.t. the gate pre-activations (zero at padded
        steps), from which the caller forms the weight gradients with GEMMs.
    w_hh : ndarray of shape (4H, H)
    h, c : ndarray of shape (T + 1, B, H)
        States written by `lstm_forward`.
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
    n_steps, batch, n_gates = gates.shape
    hidden = n_gates // 4
    dh = np.zeros((batch, hidden), dtype=gates.dtype)
    dc = np.zeros((batch, hidden), dtype=gates.dtype)
    dh_rec = np.empty((batch, hidden), dtype=gates.dtype)
    later = n_steps
    cut = False
    for s in range(n_steps):
        t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
        if s > 0:
            # Gradient reaching the state written by this step through the
            # recurrent weights of the step processed before it.
            later = t - 1 if reverse else t + 1
            cut = crosses_border(t, reverse, t_offset, truncate)
            np.dot(gates[later], w_hh, dh_rec)
        for b in prange(batch):
            if s > 0 and later < lengths[b]:
                if cut:
                    dh[b] = 0
                    dc[b] = 0
                else:
                    dh[b] = dh_rec[b]
            da = gates[t, b]
            if t >= lengths[b]:
                da[:] = 0
                continue
            for j in range(hidden):
                ig = da[j]
                fg = da[hidden + j]
                gg = da[2 * hidden + j]
                og = da[3 * hidden + j]
                tc = tanh(c[new, b, j])
                dht = dh[b, j] + dh_out[t, b, j]
                dct = dc[b, j] + dht * og * dtanh(tc)
                dc[b, j] = dct * fg
                da[j] = dct * gg * dsigmoid(ig)
                da[hidden + j] = dct * c[prev, b, j] * dsigmoid(fg)
                da[2 * hidden + j] = dct * ig * dtanh(gg)
                da[3 * hidden + j] = dht * tc * dsigmoid(og)


def forward(gates, w_hh, b_hh, state0, lengths, reverse, use_relu=False):
    """Allocate the state buffers and run `lstm_forward`.

    Parameters
    ----------
    gates : ndarray of shape (T, B, 4H)
        Input projection; overwritten with the gates.
    w_hh, b_hh : ndarray
    state0 : tuple of two ndarray of shape (B, H)
        Initial hidden and cell state.
    lengths : ndarray of shape (B,), int64
    reverse : bool
    use_relu : bool
        Ignored (tanh is part of the LSTM).

    Returns
    -------
    tape : tuple of ndarray
        ``(h, c)`` buffers of shape (T + 1, B, H).
    """
    n_steps, batch, _ = gates.shape
    h = np.empty((n_steps + 1, batch, w_hh.shape[1]), dtype=gates.dtype)
    c = np.empty_like(h)
    slot = n_steps if reverse else 0
    h[slot], c[slot] = state0
    check_buffers(gates, w_hh, b_hh, h, c)
    lstm_forward(gates, w_hh, b_hh, h, c, lengths, reverse)
    return h, c



def backward(gates, w_hh, tape, lengths, reverse, truncate, t_offset, dh_out, use_relu=False):
    """Run `lstm_backward`.

    Returns
    -------
    d_rec : list of (int, int, ndarray)
        Row blocks ``(start, stop, grad)`` of the recurrent-side
        pre-activation gradient, for the ``W_hh`` and ``b_hh`` gradients;
        ``gates`` itself holds the input-side one.
    """
    check_buffers(gates, w_hh, tape[0], tape[1], dh_out)
    lstm_backward(gates, w_hh, tape[0], tape[1], lengths, reverse, truncate, t_offset, dh_out)
    return [(0, gates.shape[2], gates)]
