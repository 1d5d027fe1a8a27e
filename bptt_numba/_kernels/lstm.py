"""LSTM forward unroll and backward through time (PyTorch equations).

Gate blocks are stacked in PyTorch's order i, f, g, o::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')

Buffers are chunk-major (see ``_recurrence``); each chunk of samples is one
``prange`` task: one product for its input projection, one small recurrent
product per step (``_products``) followed by the fused gate math,
and after the backward sweep its weight gradients as BLAS GEMMs over all its
steps.  With large weights the projection and the weight gradients are
whole-batch products instead, done around the kernels (``layers``).
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
from .activations import dsigmoid, dtanh, sigmoid_block, tanh, tanh_block

#: Gate blocks per layer, and state buffers (h, c) after the gates in a tape.
N_GATES = 4
N_STATE = 2
#: Whether the backward kernel leaves d loss / d (W_hh h + b_hh) in the aux
#: buffer (the GRU's ``rec``), or in the gates with the input side's.
RECURRENT_GRADIENT_IN_AUX = False


def aux_shape(n_chunks, n_steps, chunk, hidden, kept):
    """Shape of the cell-state buffer ``c`` (every step's, whatever the gates keep)."""
    return (n_chunks, n_steps + 1, chunk, hidden)


@register_jitable
def _blocks(a):
    """Views of the i, f, g, o blocks of a gate row (see ``_recurrence``)."""
    n = a.shape[0] // N_GATES
    return a[:n], a[n : 2 * n], a[2 * n : 3 * n], a[3 * n :]


@register_jitable
def _cell_forward(a, r, b_hh, c_prev, c_new, h_new):
    """One sample's step: gates from pre-activations, new cell and hidden state.

    ``a`` holds the input projection and receives the activated gates: the
    pre-activations, each activation and the new state are loops of their
    own (see ``activations.sigmoid_block``).
    """
    for j in range(a.shape[0]):
        a[j] = a[j] + r[j] + b_hh[j]
    n = c_prev.shape[0]
    ai, af, ag, ao = _blocks(a)
    sigmoid_block(a[: 2 * n])
    tanh_block(ag)
    sigmoid_block(ao)
    for j in range(n):
        cj = af[j] * c_prev[j] + ai[j] * ag[j]
        c_new[j] = cj
        h_new[j] = ao[j] * tanh(cj)


@register_jitable
def _cell_backward(da, c_prev, c_new, dh, dc, dh_out):
    """One sample's step back: gate pre-activation gradients from the gates.

    ``da`` holds the gates and receives the gradients; ``dh`` (from the
    later step) and ``dc`` are updated in place.  Returns the squared norm
    of d loss / d h_t.
    """
    di, df, dg, do = _blocks(da)
    squared = dh.dtype.type(0)
    for j in range(c_prev.shape[0]):
        ig = di[j]
        fg = df[j]
        gg = dg[j]
        og = do[j]
        tc = tanh(c_new[j])
        dht = dh[j] + dh_out[j]
        dct = dc[j] + dht * og * dtanh(tc)
        dc[j] = dct * fg
        di[j] = dct * gg * dsigmoid(ig)
        df[j] = dct * c_prev[j] * dsigmoid(fg)
        dg[j] = dct * ig * dtanh(gg)
        do[j] = dht * tc * dsigmoid(og)
        squared += dht * dht
    return squared


@kernel(parallel=True)
def lstm_forward(x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, c, lengths, reverse, use_relu, large):
    """Unroll an LSTM layer over time.

    Parameters
    ----------
    x : ndarray of shape (K, T, C, D)
        Layer input.
    w_ih_t, b_ih, w_hh_t, b_hh : ndarray
        Weights: ``W_ih`` transposed, (D, 4H) C-ordered, and ``W_hh``
        transposed and packed in panels (``_products.pack_panels``), then
        the biases (4H,).  ``w_ih_t`` is not read when ``large`` (it may be
        empty).
    gates : ndarray of shape (K, T, C, 4H), or (K, P, C, 4H)
        Written: the activated gates i, f, g, o, kept for the backward pass;
        the last few steps' only with ``P`` < T slots (inference with small
        weights: ``_recurrence.project_step``).
    h, c : ndarray of shape (K, T + 1, C, H)
        Hidden and cell states; the initial state must be in its slot, the
        other slots are written.
    lengths : ndarray of shape (K * C,), int64
        Valid steps per sample; a sample's state is frozen after them.
    reverse : bool
        Process time backwards (the reverse direction of a bidirectional
        layer).
    use_relu : bool
        Unused (uniform signature across cells).
    large : bool
        Weights beyond the L2 cache (``_config.batch_plan``): ``gates``
        arrives holding the input projection (``_recurrence.project_rows``).
    """
    n_chunks, chunk = x.shape[0], x.shape[2]
    for k in prange(n_chunks):
        fpu = flush_denormals()
        samples = slice(k * chunk, (k + 1) * chunk)
        _forward_chunk(
            x[k], w_ih_t, b_ih, w_hh_t, b_hh, gates[k], h[k], c[k], lengths[samples], reverse, large,
        )
        restore_fpu(fpu)


@register_jitable
def _forward_chunk(x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, c, lengths, reverse, large):
    """`lstm_forward` of one chunk: its task, outside the parallel region's body."""
    n_steps, chunk, _ = x.shape
    width = N_GATES * h.shape[2]
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
                copy(c[prev, i], c[new, i])
                continue
            _cell_forward(gates[g, i], rec[i, :width], b_hh, c[prev, i], c[new, i], h[new, i])


@kernel(parallel=True)
def lstm_backward(
    x, w_ih, w_hh, gates, h, c, lengths, reverse, use_relu, truncate, t_offset, dh_out, out_steps, dx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dh_sq, large
):
    """Back-propagate through an unrolled LSTM layer.

    Parameters
    ----------
    x, h, c, lengths, reverse, use_relu
        As given to and written by `lstm_forward`.
    w_ih, w_hh : ndarray
        PyTorch's ``W_ih``, (4H, D), and ``W_hh``, (4H, H), packed in panels
        (see `lstm_forward`).
    gates : ndarray of shape (K, T, C, 4H)
        On entry the gates from `lstm_forward`; on exit the gradient w.r.t.
        the gate pre-activations (zero at padded steps).
    truncate : int
        Cut the gradient through the state at absolute times that are
        multiples of ``truncate``; 0 for full BPTT.
    t_offset : int
        Absolute time of step 0 of these buffers.
    dh_out : ndarray of shape (K, T, C, H) or (K, 1, C, H)
        Gradient of the loss w.r.t. the layer's output: at each step, or
        with ``out_steps`` at one step per sample.
    out_steps : ndarray of shape (K * C,) or (0,), int64
        Empty when ``dh_out`` covers every step; else the step at which
        ``dh_out[k, 0, i]`` enters for each sample (-1: none), so that a
        loss on one step per sample (``output="last"``) needs no
        (K, T, C, H) buffer of zeros.
    dx : ndarray of shape (K, T, C, D), or empty
        Written when not empty: gradient w.r.t. ``x``.
    g_w_ih, g_w_hh, g_b_ih, g_b_hh : ndarray with a leading axis of K
        Written: each chunk's share of the parameter gradients.
    dh_sq : ndarray of shape (K, T, C), or empty
        Written when not empty: the squared norm of d loss / d h_t of each
        sample and step (the gradient-flow diagnostic).
    large : bool
        Large weights: the weight gradients are left to
        ``_recurrence.gradient_blocks`` (``g_w_ih`` ... are empty).
    """
    n_chunks, chunk = x.shape[0], x.shape[2]
    for k in prange(n_chunks):
        fpu = flush_denormals()
        samples = slice(k * chunk, (k + 1) * chunk)
        _backward_chunk(
            w_hh, gates[k], c[k], lengths[samples], reverse, truncate, t_offset, dh_out[k], out_steps[samples],
            dh_sq[k : k + 1],
        )
        if not large:
            h_prev = h[k, 1:] if reverse else h[k, :-1]
            chunk_gradients(x[k], h_prev, gates[k], gates[k], w_ih, g_w_ih[k], g_w_hh[k], g_b_ih[k], g_b_hh[k], dx[k])
        restore_fpu(fpu)


@register_jitable
def _backward_chunk(w_hh, gates, c, lengths, reverse, truncate, t_offset, dh_out, out_steps, dh_sq):
    """`lstm_backward`'s sweep back through time over one chunk (``dh_sq``: (1, T, C) or empty)."""
    n_steps, chunk, _ = gates.shape
    hidden = c.shape[2]
    record = dh_sq.size > 0
    dh = np.zeros((chunk, hidden), dtype=gates.dtype)
    dc = np.zeros((chunk, hidden), dtype=gates.dtype)
    dh_rec = np.empty((chunk, w_hh.shape[0] * w_hh.shape[2]), dtype=gates.dtype)
    no_grad = np.zeros(hidden, dtype=gates.dtype)
    later = n_steps
    cut = False
    for s in range(n_steps):
        t, prev, new = step_slots(n_steps - 1 - s, n_steps, reverse)
        if s > 0:
            # Gradient reaching the state this step wrote, through the
            # recurrent weights of the step processed before it.
            later = t - 1 if reverse else t + 1
            cut = crosses_border(t, reverse, t_offset, truncate)
            panel_matmul(gates[later], w_hh, dh_rec, s % 2 == 1)
        for i in range(chunk):
            if s > 0 and later < lengths[i]:
                if cut:
                    dh[i] = 0
                    dc[i] = 0
                else:
                    copy(dh_rec[i], dh[i])
            da = gates[t, i]
            if t >= lengths[i]:
                da[:] = 0
                continue
            dho = output_grad(dh_out, out_steps, no_grad, t, i)
            squared = _cell_backward(da, c[prev, i], c[new, i], dh[i], dc[i], dho)
            if record:
                dh_sq[0, t, i] = squared
