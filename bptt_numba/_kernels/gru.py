"""GRU forward unroll and backward through time (PyTorch equations).

Gate blocks are stacked in PyTorch's order r, z, n, and the reset gate is
applied after the recurrent product::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Same structure as the LSTM kernels (see ``lstm``).
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
from .activations import dsigmoid, dtanh, one_minus, sigmoid_block, tanh_block

#: Gate blocks per layer, and state buffers (h) after the gates in a tape.
N_GATES = 3
N_STATE = 1
#: Whether the backward kernel leaves d loss / d (W_hh h + b_hh) in the aux
#: buffer (the GRU's ``rec``), or in the gates with the input side's.
RECURRENT_GRADIENT_IN_AUX = True


def aux_shape(n_chunks, n_steps, chunk, hidden, kept):
    """Shape of the recurrent-side buffer ``rec``: ``kept`` steps, like the gates."""
    return (n_chunks, kept, chunk, 3 * hidden)


@register_jitable
def _blocks(a):
    """Views of the r, z, n blocks of a gate row (see ``_recurrence``)."""
    n = a.shape[0] // N_GATES
    return a[:n], a[n : 2 * n], a[2 * n :]


@register_jitable
def _cell_forward(a, r, b_hh, h_prev, h_new, rec_n):
    """One sample's step: gates from pre-activations, and the new state.

    ``a`` holds the input projection and receives the gates; ``rec_n``
    receives ``W_hn h + b_hn`` for the backward pass.  Pre-activations,
    activations and the state are loops of their own (see
    ``activations.sigmoid_block``): as one loop, H=64 took 4.8 instead of
    3.3 ns a unit (16 samples).
    """
    n = h_prev.shape[0]
    for j in range(2 * n):
        a[j] = a[j] + r[j] + b_hh[j]
    sigmoid_block(a[: 2 * n])
    ar, az, an = _blocks(a)
    rn = r[2 * n : 3 * n]
    bn = b_hh[2 * n :]
    for j in range(n):
        hn = rn[j] + bn[j]
        rec_n[j] = hn
        an[j] = an[j] + ar[j] * hn
    tanh_block(an)
    for j in range(n):
        h_new[j] = one_minus(az[j]) * an[j] + az[j] * h_prev[j]


@register_jitable
def _cell_backward(da, dr, h_prev, dh, dh_out, dh_direct):
    """One sample's step back: pre-activation gradients from the gates.

    ``da`` holds the gates and receives the input-side gradients; ``dr``
    holds ``W_hn h + b_hn`` in its last block and receives the
    recurrent-side ones; ``dh_direct`` receives the gradient reaching the
    previous state other than through ``W_hh``.  Returns the squared norm of
    d loss / d h_t.
    """
    d_r, d_z, d_n = _blocks(da)
    dr_r, dr_z, dr_n = _blocks(dr)
    squared = dh.dtype.type(0)
    for j in range(h_prev.shape[0]):
        rg = d_r[j]
        zg = d_z[j]
        ng = d_n[j]
        dht = dh[j] + dh_out[j]
        dn_pre = dht * one_minus(zg) * dtanh(ng)
        dr_pre = dn_pre * dr_n[j] * dsigmoid(rg)
        dz_pre = dht * (h_prev[j] - ng) * dsigmoid(zg)
        dh_direct[j] = dht * zg
        d_r[j] = dr_pre
        d_z[j] = dz_pre
        d_n[j] = dn_pre
        dr_r[j] = dr_pre
        dr_z[j] = dz_pre
        dr_n[j] = dn_pre * rg
        squared += dht * dht
    return squared


@kernel(parallel=True)
def gru_forward(x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, rec, lengths, reverse, use_relu, large):
    """Unroll a GRU layer over time.

    Parameters
    ----------
    x, w_ih_t, b_ih, w_hh_t, b_hh, lengths, reverse, use_relu, large
        As for `lstm_forward` (with 3H gates).
    gates : ndarray of shape (K, T, C, 3H), or (K, P, C, 3H)
        Written: the gates r, z, n (every step's or the last few steps', as
        for `lstm_forward`).
    h : ndarray of shape (K, T + 1, C, H)
        Hidden states, the initial one in its slot.
    rec : ndarray with the shape of ``gates``
        Written: ``W_hn h + b_hn`` in its last third, for the backward pass.
    """
    n_chunks, chunk = x.shape[0], x.shape[2]
    for k in prange(n_chunks):
        fpu = flush_denormals()
        samples = slice(k * chunk, (k + 1) * chunk)
        _forward_chunk(
            x[k], w_ih_t, b_ih, w_hh_t, b_hh, gates[k], h[k], rec[k], lengths[samples], reverse, large,
        )
        restore_fpu(fpu)


@register_jitable
def _forward_chunk(x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, rec, lengths, reverse, large):
    """`gru_forward` of one chunk: its task, outside the parallel region's body."""
    n_steps, chunk, _ = x.shape
    width = N_GATES * h.shape[2]
    tape = gates.shape[0] == n_steps
    if tape and not large:
        project_inputs(x, w_ih_t, b_ih, gates)
    step_rec = np.empty((chunk, w_hh_t.shape[0] * w_hh_t.shape[2]), dtype=gates.dtype)
    for s in range(n_steps):
        t, prev, new = step_slots(s, n_steps, reverse)
        g = t if tape else project_step(x, w_ih_t, b_ih, gates, t, reverse)
        panel_matmul(h[prev], w_hh_t, step_rec, s % 2 == 1)
        for i in range(chunk):
            if t >= lengths[i]:
                copy(h[prev, i], h[new, i])
                continue
            _cell_forward(gates[g, i], step_rec[i, :width], b_hh, h[prev, i], h[new, i], _blocks(rec[g, i])[2])


@kernel(parallel=True)
def gru_backward(
    x, w_ih, w_hh, gates, h, rec, lengths, reverse, use_relu, truncate, t_offset, dh_out, out_steps, dx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dh_sq, large
):
    """Back-propagate through an unrolled GRU layer.

    Parameters
    ----------
    x, w_ih, w_hh, h, lengths, reverse, use_relu, truncate, t_offset, dh_out, out_steps, dx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dh_sq, large
        As for `lstm_backward`.
    gates : ndarray of shape (K, T, C, 3H)
        On entry the gates; on exit the gradient w.r.t. the input-side
        pre-activations (r, z and the n pre-activation).
    rec : ndarray of shape (K, T, C, 3H)
        On entry from `gru_forward`; on exit the gradient w.r.t. the
        recurrent-side pre-activations ``W_hh h + b_hh``.
    """
    n_chunks, chunk = x.shape[0], x.shape[2]
    for k in prange(n_chunks):
        fpu = flush_denormals()
        samples = slice(k * chunk, (k + 1) * chunk)
        _backward_chunk(
            w_hh, gates[k], h[k], rec[k], lengths[samples], reverse, truncate, t_offset, dh_out[k], out_steps[samples],
            dh_sq[k : k + 1],
        )
        if not large:
            h_prev = h[k, 1:] if reverse else h[k, :-1]
            chunk_gradients(x[k], h_prev, gates[k], rec[k], w_ih, g_w_ih[k], g_w_hh[k], g_b_ih[k], g_b_hh[k], dx[k])
        restore_fpu(fpu)


@register_jitable
def _backward_chunk(w_hh, gates, h, rec, lengths, reverse, truncate, t_offset, dh_out, out_steps, dh_sq):
    """`gru_backward`'s sweep back through time over one chunk (``dh_sq``: (1, T, C) or empty)."""
    n_steps, chunk, _ = gates.shape
    hidden = h.shape[2]
    record = dh_sq.size > 0
    dh = np.zeros((chunk, hidden), dtype=gates.dtype)
    dh_direct = np.zeros((chunk, hidden), dtype=gates.dtype)
    dh_rec = np.empty((chunk, w_hh.shape[0] * w_hh.shape[2]), dtype=gates.dtype)
    no_grad = np.zeros(hidden, dtype=gates.dtype)
    later = n_steps
    cut = False
    for s in range(n_steps):
        t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
        if s > 0:
            later = t - 1 if reverse else t + 1
            cut = crosses_border(t, reverse, t_offset, truncate)
            panel_matmul(rec[later], w_hh, dh_rec, s % 2 == 1)
        for i in range(chunk):
            if s > 0 and later < lengths[i]:
                if cut:
                    dh[i] = 0
                else:
                    for j in range(hidden):
                        dh[i, j] = dh_rec[i, j] + dh_direct[i, j]
            da = gates[t, i]
            dr = rec[t, i]
            if t >= lengths[i]:
                da[:] = 0
                dr[:] = 0
                continue
            dho = output_grad(dh_out, out_steps, no_grad, t, i)
            squared = _cell_backward(da, dr, h[prev, i], dh[i], dho, dh_direct[i])
            if record:
                dh_sq[0, t, i] = squared
