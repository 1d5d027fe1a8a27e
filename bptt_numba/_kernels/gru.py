"""GRU forward unroll and backward through time (PyTorch equations).

Gate blocks are stacked in PyTorch's order r, z, n, and the reset gate is
applied after the recurrent product::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Same structure as the LSTM kernels: one recurrent GEMM per step outside the
parallel region, fused gate math in a ``prange`` over samples.
"""

import numpy as np
from numba import prange

from .._config import kernel
from ._recurrence import check_buffers, crosses_border, step_slots
from .activations import dsigmoid, dtanh, one_minus, sigmoid, tanh

#: Leading buffers of the tape that form the recurrent state.
N_STATE = 1
N_GATES = 3


@kernel(parallel=True)
def gru_forward(gates, w_hh, b_hh, h, hn, lengths, reverse):
    """Unroll a GRU layer over time, in place.

    Parameters
    ----------
    gates : ndarray of shape (T, B, 3H)
        On entry the input projection ``x W_ih^T + b_ih``; on exit the gates
        r, z, n.
    w_hh : ndarray of shape (3H, H)
    b_hh : ndarray of shape (3H,)
    h : ndarray of shape (T + 1, B, H)
        Hidden states, the initial one in its slot (see ``_recurrence``).
    hn : ndarray of shape (T, B, H)
        Written: ``W_hn h + b_hn`` at each step, needed by the backward pass.
    lengths : ndarray of shape (B,), int64
    reverse : bool
    """
    n_steps, batch, n_gates = gates.shape
    hidden = n_gates // 3
    rec = np.empty((batch, n_gates), dtype=gates.dtype)
    for s in range(n_steps):
        t, prev, new = step_slots(s, n_steps, reverse)
        np.dot(h[prev], w_hh.T, rec)
        for b in prange(batch):
            if t >= lengths[b]:
                h[new, b] = h[prev, b]
                continue
            a = gates[t, b]
            r = rec[b]
            for j in range(hidden):
                rg = sigmoid(a[j] + r[j] + b_hh[j])
                zg = sigmoid(a[hidden + j] + r[hidden + j] + b_hh[hidden + j])
                hnj = r[2 * hidden + j] + b_hh[2 * hidden + j]
                ng = tanh(a[2 * hidden + j] + rg * hnj)
                h[new, b, j] = one_minus(zg) * ng + zg * h[prev, b, j]
                hn[t, b, j] = hnj
                a[j] = rg
                a[hidden + j] = zg
                a[2 * hidden + j] = ng


@kernel(parallel=True)
def gru_backward(gates, w_hh, h, hn, lengths, reverse, truncate, t_offset, dh_out):
    """Back-propagate through an unrolled GRU layer, in place.

    Parameters
    ----------
    gates : ndarray of shape (T, B, 3H)
        On entry the gates from `gru_forward`; on exit the gradient w.r.t.
        the input-side pre-activations (r, z and the n pre-activation), zero
        at padded steps.
    w_hh : ndarray of shape (3H, H)
    h : ndarray of shape (T + 1, B, H)
    hn : ndarray of shape (T, B, H)
        On entry ``W_hn h + b_hn`` from `gru_forward`; on exit the gradient
        w.r.t. it.  Rows r, z of the recurrent-side gradient equal those of
        ``gates``; together they give the ``W_hh`` and ``b_hh`` gradients.
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
    hidden = n_gates // 3
    dh = np.zeros((batch, hidden), dtype=gates.dtype)
    dh_direct = np.zeros((batch, hidden), dtype=gates.dtype)
    d_rec = np.zeros((batch, n_gates), dtype=gates.dtype)
    dh_rec = np.empty((batch, hidden), dtype=gates.dtype)
    later = n_steps
    cut = False
    for s in range(n_steps):
        t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
        if s > 0:
            later = t - 1 if reverse else t + 1
            cut = crosses_border(t, reverse, t_offset, truncate)
            np.dot(d_rec, w_hh, dh_rec)
        for b in prange(batch):
            if s > 0 and later < lengths[b]:
                if cut:
                    dh[b] = 0
                else:
                    for j in range(hidden):
                        dh[b, j] = dh_rec[b, j] + dh_direct[b, j]
            da = gates[t, b]
            if t >= lengths[b]:
                da[:] = 0
                d_rec[b] = 0
                hn[t, b] = 0
                continue
            for j in range(hidden):
                rg = da[j]
                zg = da[hidden + j]
                ng = da[2 * hidden + j]
                dht = dh[b, j] + dh_out[t, b, j]
                dn_pre = dht * one_minus(zg) * dtanh(ng)
                dr_pre = dn_pre * hn[t, b, j] * dsigmoid(rg)
                dz_pre = dht * (h[prev, b, j] - ng) * dsigmoid(zg)
                dh_direct[b, j] = dht * zg
                dhn = dn_pre * rg
                hn[t, b, j] = dhn
                da[j] = dr_pre
                da[hidden + j] = dz_pre
                da[2 * hidden + j] = dn_pre
                d_rec[b, j] = dr_pre
                d_rec[b, hidden + j] = dz_pre
                d_rec[b, 2 * hidden + j] = dhn


def forward(gates, w_hh, b_hh, state0, lengths, reverse, use_relu=False):
    """Allocate the buffers and run `gru_forward`.

    Parameters
    ----------
    gates : ndarray of shape (T, B, 3H)
        Input projection; overwritten with the gates.
    w_hh, b_hh : ndarray
    state0 : tuple of one ndarray of shape (B, H)
        Initial hidden state.
    lengths : ndarray of shape (B,), int64
    reverse : bool
    use_relu : bool
        Ignored.

    Returns
    -------
    tape : tuple of ndarray
        ``(h, hn)``: states (T + 1, B, H) and ``W_hn h + b_hn`` (T, B, H).
    """
    n_steps, batch, _ = gates.shape
    h = np.empty((n_steps + 1, batch, w_hh.shape[1]), dtype=gates.dtype)
    hn = np.empty((n_steps, batch, w_hh.shape[1]), dtype=gates.dtype)
    h[n_steps if reverse else 0] = state0[0]
    check_buffers(gates, w_hh, b_hh, h, hn)
    gru_forward(gates, w_hh, b_hh, h, hn, lengths, reverse)
    return h, hn



def backward(gates, w_hh, tape, lengths, reverse, truncate, t_offset, dh_out, use_relu=False):
    """Run `gru_backward`; returns the recurrent-side row blocks (see lstm)."""
    check_buffers(gates, w_hh, tape[0], tape[1], dh_out)
    gru_backward(gates, w_hh, tape[0], tape[1], lengths, reverse, truncate, t_offset, dh_out)
    hidden = tape[1].shape[2]
    return [(0, 2 * hidden, gates[:, :, : 2 * hidden]), (2 * hidden, 3 * hidden, tape[1])]
