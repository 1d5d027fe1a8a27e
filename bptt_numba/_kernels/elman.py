"""Elman RNN forward unroll and backward through time (PyTorch equations).

``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with ``act`` tanh or ReLU.  Same
structure as the LSTM kernels (see ``lstm``).
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from .._config import kernel
from ._fpu import flush_denormals, restore_fpu
from ._recurrence import (
    chunk_gradients, crosses_border, matmul, output_grad, project_inputs, project_step, step_slots,
)
from .activations import drelu, dtanh, relu, tanh

#: Gate blocks per layer, and state buffers (h) after the gates in a tape.
N_GATES = 1
N_STATE = 1
#: Whether the backward kernel leaves d loss / d (W_hh h + b_hh) in the aux
#: buffer (the GRU's ``rec``), or in the gates with the input side's.
RECURRENT_GRADIENT_IN_AUX = False


def aux_shape(n_chunks, n_steps, chunk, hidden, kept):
    """The Elman cell needs no buffer beside its states."""
    return (0, 0, 0, 0)


@register_jitable
def _cell_forward(a, r, b_hh, h_new, use_relu):
    """One sample's step: the new state from the input projection ``a``."""
    for j in range(h_new.shape[0]):
        pre = a[j] + r[j] + b_hh[j]
        h_new[j] = relu(pre) if use_relu else tanh(pre)


@register_jitable
def _cell_backward(da, h_new, dh, dh_out, use_relu):
    """One sample's step back: ``da`` receives the pre-activation gradient.

    Returns the squared norm of d loss / d h_t.
    """
    squared = dh.dtype.type(0)
    for j in range(h_new.shape[0]):
        slope = drelu(h_new[j]) if use_relu else dtanh(h_new[j])
        dht = dh[j] + dh_out[j]
        da[j] = dht * slope
        squared += dht * dht
    return squared


@kernel(parallel=True)
def elman_forward(x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, unused, lengths, reverse, use_relu, large):
    """Unroll an Elman layer over time.

    Parameters
    ----------
    x, w_ih_t, b_ih, w_hh_t, b_hh, lengths, reverse, large
        As for `lstm_forward` (with H gates).
    gates : ndarray of shape (K, T, C, H), or (K, P, C, H)
        Written: the input projection (every step's or the last few steps',
        as for `lstm_forward`; the backward pass needs only the states, and
        uses this buffer for its gradients).
    h : ndarray of shape (K, T + 1, C, H)
        Hidden states, the initial one in its slot.
    unused : ndarray
        Empty (uniform signature across cells).
    use_relu : bool
        ReLU instead of tanh.
    """
    n_chunks, n_steps, chunk, _ = x.shape
    hidden = w_hh_t.shape[0]
    tape = gates.shape[1] == n_steps
    for k in prange(n_chunks):
        fpu = flush_denormals()
        chunk_lengths = lengths[k * chunk : (k + 1) * chunk]
        if tape and not large:
            project_inputs(x[k], w_ih_t, b_ih, gates[k])
        rec = np.empty((chunk, hidden), dtype=gates.dtype)
        for s in range(n_steps):
            t, prev, new = step_slots(s, n_steps, reverse)
            g = t if tape else project_step(x[k], w_ih_t, b_ih, gates[k], t, reverse)
            matmul(h[k, prev], w_hh_t, rec)
            for i in range(chunk):
                if t >= chunk_lengths[i]:
                    h[k, new, i] = h[k, prev, i]
                    continue
                _cell_forward(gates[k, g, i], rec[i], b_hh, h[k, new, i], use_relu)
        restore_fpu(fpu)


@kernel(parallel=True)
def elman_backward(
    x, w_ih, w_hh, gates, h, unused, lengths, reverse, use_relu, truncate, t_offset, dh_out, out_steps, dx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dh_sq, large
):
    """Back-propagate through an unrolled Elman layer.

    Parameters
    ----------
    x, w_ih, w_hh, h, unused, lengths, reverse, use_relu, truncate, t_offset, dh_out, out_steps, dx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dh_sq, large
        As for `lstm_backward` and `elman_forward`.
    gates : ndarray of shape (K, T, C, H)
        Written: the gradient w.r.t. the pre-activations (zero at padded
        steps).
    """
    n_chunks, n_steps, chunk, _ = x.shape
    hidden = w_hh.shape[1]
    record = dh_sq.size > 0
    for k in prange(n_chunks):
        fpu = flush_denormals()
        dh = np.zeros((chunk, hidden), dtype=gates.dtype)
        dh_rec = np.empty((chunk, hidden), dtype=gates.dtype)
        no_grad = np.zeros(hidden, dtype=gates.dtype)
        later = n_steps
        cut = False
        for s in range(n_steps):
            t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
            if s > 0:
                later = t - 1 if reverse else t + 1
                cut = crosses_border(t, reverse, t_offset, truncate)
                matmul(gates[k, later], w_hh, dh_rec)
            for i in range(chunk):
                length = lengths[k * chunk + i]
                if s > 0 and later < length:
                    if cut:
                        dh[i] = 0
                    else:
                        dh[i] = dh_rec[i]
                da = gates[k, t, i]
                if t >= length:
                    da[:] = 0
                    continue
                dho = output_grad(dh_out, out_steps, no_grad, k, t, i)
                squared = _cell_backward(da, h[k, new, i], dh[i], dho, use_relu)
                if record:
                    dh_sq[k, t, i] = squared
        if not large:
            h_prev = h[k, 1:] if reverse else h[k, :-1]
            chunk_gradients(x[k], h_prev, gates[k], gates[k], w_ih, g_w_ih[k], g_w_hh[k], g_b_ih[k], g_b_hh[k], dx[k])
        restore_fpu(fpu)
