"""Elman RNN forward unroll and backward through time (PyTorch equations).

``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with ``act`` tanh or ReLU.  Same
structure as the LSTM kernels (see ``lstm``).
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from .._config import kernel
from ._fpu import flush_denormals, restore_fpu
from ._products import panel_matmul
from ._recurrence import (
    chunk_gradients, copy, crosses_border, output_grad, project_inputs, project_step, step_slots,
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
    n_chunks, chunk = x.shape[0], x.shape[2]
    for k in prange(n_chunks):
        fpu = flush_denormals()
        samples = slice(k * chunk, (k + 1) * chunk)
        _forward_chunk(
            x[k], w_ih_t, b_ih, w_hh_t, b_hh, gates[k], h[k], lengths[samples], reverse, use_relu, large,
        )
        restore_fpu(fpu)


@register_jitable
def _forward_chunk(x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, lengths, reverse, use_relu, large):
    """`elman_forward` of one chunk: its task, outside the parallel region's body."""
    n_steps, chunk, _ = x.shape
    tape = gates.shape[0] == n_steps
    if tape and not large:
        project_inputs(x, w_ih_t, b_ih, gates)
    rec = np.empty((chunk, w_hh_t.shape[0] * w_hh_t.shape[2]), dtype=gates.dtype)
    for s in range(n_steps):
        t, prev, new = step_slots(s, n_steps, reverse)
        g = t if tape else project_step(x, w_ih_t, b_ih, gates, t, reverse)
        panel_matmul(h[prev], w_hh_t, rec, s % 2 == 1)
        for i in range(chunk):
            if t >= lengths[i]:
                copy(h[prev, i], h[new, i])
                continue
            _cell_forward(gates[g, i], rec[i], b_hh, h[new, i], use_relu)


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
    n_chunks, chunk = x.shape[0], x.shape[2]
    for k in prange(n_chunks):
        fpu = flush_denormals()
        samples = slice(k * chunk, (k + 1) * chunk)
        _backward_chunk(
            w_hh, gates[k], h[k], lengths[samples], reverse, use_relu, truncate, t_offset, dh_out[k], out_steps[samples],
            dh_sq[k : k + 1],
        )
        if not large:
            h_prev = h[k, 1:] if reverse else h[k, :-1]
            chunk_gradients(x[k], h_prev, gates[k], gates[k], w_ih, g_w_ih[k], g_w_hh[k], g_b_ih[k], g_b_hh[k], dx[k])
        restore_fpu(fpu)


@register_jitable
def _backward_chunk(w_hh, gates, h, lengths, reverse, use_relu, truncate, t_offset, dh_out, out_steps, dh_sq):
    """`elman_backward`'s sweep back through time over one chunk (``dh_sq``: (1, T, C) or empty)."""
    n_steps, chunk, _ = gates.shape
    hidden = h.shape[2]
    record = dh_sq.size > 0
    dh = np.zeros((chunk, hidden), dtype=gates.dtype)
    dh_rec = np.empty((chunk, w_hh.shape[0] * w_hh.shape[2]), dtype=gates.dtype)
    no_grad = np.zeros(hidden, dtype=gates.dtype)
    later = n_steps
    cut = False
    for s in range(n_steps):
        t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
        if s > 0:
            later = t - 1 if reverse else t + 1
            cut = crosses_border(t, reverse, t_offset, truncate)
            panel_matmul(gates[later], w_hh, dh_rec, s % 2 == 1)
        for i in range(chunk):
            if s > 0 and later < lengths[i]:
                if cut:
                    dh[i] = 0
                else:
                    copy(dh_rec[i], dh[i])
            da = gates[t, i]
            if t >= lengths[i]:
                da[:] = 0
                continue
            dho = output_grad(dh_out, out_steps, no_grad, t, i)
            squared = _cell_backward(da, h[new, i], dh[i], dho, use_relu)
            if record:
                dh_sq[0, t, i] = squared
