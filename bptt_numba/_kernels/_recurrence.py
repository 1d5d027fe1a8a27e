"""Buffer layout and the pieces shared by the recurrent kernels.

The batch is cut into ``K`` chunks of ``C`` samples (the last padded with
zero-length samples), and every buffer is chunk-major and then time-major:
``(K, T, C, features)``.  Each chunk is one ``prange`` task that runs the
whole time loop of its samples with its own small products (``_products``), so a
layer is one parallel region, and every chunk's data are contiguous for
those products.  The chunking (``_config.batch_plan``) depends on the batch
and weight sizes, never on the thread count, so neither do the results.

States live in buffers of ``T + 1`` time slots.  A forward-direction layer
keeps its initial state in slot 0 and the state after step ``t`` in slot
``t + 1``; a reverse-direction layer keeps its initial state in slot ``T`` and
the state after step ``t`` in slot ``t``.  Either way the layer's output at
step ``t`` and the state it read are contiguous slices of one buffer.

Each kernel's ``prange`` body is one call of the cell's chunk function
(``_forward_chunk``, ``_backward_chunk``): a serial function of one chunk's
buffers, which is where the time loop lives, and the parallel region only
hands out the chunks, so Numba's parfor passes see a few statements instead
of the whole time loop.  Array slices are copied with `copy`, not assigned:
an assignment between arrays makes Numba compile the formatting of its
shape error.  Together, in alternating fresh processes with an empty cache,
a first LSTM fit compiled in 19-24 s instead of 24-31 s (5f9378a against
1faff1f; single runs on this machine move by more than that).

The per-sample gate loops take each gate block as its own view and index it
from 0.  An index such as ``a[hidden + j]`` makes Numba check for a negative
index at every access, which keeps LLVM from vectorising the loop: measured
4x slower for the LSTM's gate math.
"""

import numpy as np
from numba import prange
from numba.extending import register_jitable

from .._config import kernel
from ._fpu import flush_denormals, restore_fpu
from ._products import affine, gradient_matmul

#: Elements per task of `sum_shares` (16 KiB of float32: the running sum
#: stays in L1 while the shares stream past it).
SUM_BLOCK = 4096


@register_jitable(inline="always")
def step_slots(s, n_steps, reverse):
    """Time index and state slots of the ``s``-th step in processing order.

    Returns
    -------
    t : int
        Time index of the step.
    prev : int
        Slot holding the state the step reads.
    new : int
        Slot the step writes its state to.
    """
    if reverse:
        t = n_steps - 1 - s
        return t, t + 1, t
    return s, s, s + 1


@register_jitable(inline="always")
def crosses_border(t, reverse, t_offset, truncate):
    """Whether the recurrent edge out of step ``t`` crosses a truncation border.

    The edge joins step ``t`` to the next step in processing order.  Borders
    sit before the absolute times ``truncate, 2 * truncate, ...``; ``truncate``
    of 0 means no borders (full BPTT).
    """
    if truncate <= 0:
        return False
    later = t + t_offset if reverse else t + 1 + t_offset
    return later % truncate == 0


@register_jitable
def copy(src, dst):
    """``dst[:] = src`` for 1-D arrays of one size (see the module docstring)."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@register_jitable
def project_inputs(x, w_ih_t, b_ih, gates):
    """``gates = x W_ih^T + b_ih`` for every step of one chunk: one ``_products.affine``.

    Parameters
    ----------
    x : ndarray of shape (T, C, D)
    w_ih_t : ndarray of shape (D, G)
        ``W_ih`` transposed, C-ordered.
    b_ih : ndarray of shape (G,)
    gates : ndarray of shape (T, C, G)
        Written.
    """
    rows = x.shape[0] * x.shape[1]
    out = gates.reshape((rows, gates.shape[2]))
    affine(x.reshape((rows, x.shape[2])), w_ih_t, b_ih, out)


@register_jitable
def _add_bias(out, bias):
    for r in range(out.shape[0]):
        for g in range(out.shape[1]):
            out[r, g] += bias[g]


@kernel(parallel=True)
def project_rows(x, w, bias, out, blocks):
    """``out = x @ w.T + bias`` for a whole batch of large weights, a block of rows per thread.

    Each block is one single-threaded BLAS call (see
    ``_config.kernel_section``), which packs the weights once for its rows,
    where each chunk's ``_products.affine`` would stream them from L3 for
    every block of rows.  The blocks follow the thread count, so a row's
    rounding may too.

    Parameters
    ----------
    x : ndarray of shape (N, D)
    w : ndarray of shape (G, D)
        PyTorch's ``W_ih`` (BLAS reads it transposed: no copy).
    bias : ndarray of shape (G,)
    out : ndarray of shape (N, G)
        Written.
    blocks : int
        The thread count (given: calling Numba's from here would keep the
        function out of the cache).
    """
    for block in prange(blocks):
        fpu = flush_denormals()
        start = block * x.shape[0] // blocks
        stop = (block + 1) * x.shape[0] // blocks
        if stop > start:
            part = out[start:stop]
            np.dot(x[start:stop], w.T, part)
            _add_bias(part, bias)
        restore_fpu(fpu)


#: Steps of a gate buffer that does not keep every step (`project_step`).
PROJECTED_STEPS = 8


@register_jitable
def project_step(x, w_ih_t, b_ih, gates, t, reverse):
    """The slot of step ``t`` in a buffer of `PROJECTED_STEPS` gate rows.

    Such a buffer (large batches at inference, small weights: see
    ``layers.forward``) is filled block by block, blocks aligned in time, as
    the first step of a block in processing order starts.  A tape of every
    step is projected before the time loop instead, in one product (called
    for each step, this function made one-sequence calls 8-15% slower).  Rows
    are computed alike either way (see ``_products.affine``), so the results are too.

    Parameters
    ----------
    x : ndarray of shape (T, C, D)
    w_ih_t, b_ih
        As for `project_inputs`.
    gates : ndarray of shape (PROJECTED_STEPS, C, G)
    t : int
    reverse : bool

    Returns
    -------
    int
    """
    n_steps = x.shape[0]
    start = t - t % PROJECTED_STEPS
    stop = min(start + PROJECTED_STEPS, n_steps)
    if t == (stop - 1 if reverse else start):
        project_inputs(x[start:stop], w_ih_t, b_ih, gates[: stop - start])
    return t - start


@register_jitable
def output_grad(dh_out, out_steps, no_grad, t, i):
    """d loss / d output of sample ``i`` of a chunk at step ``t``.

    ``dh_out`` (the chunk's) holds it for every step when ``out_steps`` is
    empty, else at step ``out_steps[i]`` only (see ``lstm.lstm_backward``);
    ``no_grad`` is a row of zeros.
    """
    if out_steps.size == 0:
        return dh_out[t, i]
    if out_steps[i] == t:
        return dh_out[0, i]
    return no_grad


@register_jitable
def chunk_gradients(x, h_prev, d_in, d_rec, w_ih, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dx):
    """Weight, bias and input gradients of one chunk: GEMMs over all its steps.

    Parameters
    ----------
    x : ndarray of shape (T, C, D)
        The layer input.
    h_prev : ndarray of shape (T, C, H)
        The state each step read.
    d_in, d_rec : ndarray of shape (T, C, G)
        Gradient w.r.t. the input-side and recurrent-side pre-activations
        (the same array except for the GRU); zero at padded steps.
    w_ih : ndarray of shape (G, D)
    g_w_ih, g_w_hh, g_b_ih, g_b_hh : ndarray
        Written: this chunk's share of each gradient.
    dx : ndarray of shape (T, C, D) or empty
        Written when not empty: d loss / d x.
    """
    rows = x.shape[0] * x.shape[1]
    d_in2 = d_in.reshape((rows, d_in.shape[2]))
    d_rec2 = d_rec.reshape((rows, d_rec.shape[2]))
    _weight_gradient(d_in2, x.reshape((rows, x.shape[2])), g_w_ih)
    _weight_gradient(d_rec2, h_prev.reshape((rows, h_prev.shape[2])), g_w_hh)
    _bias_gradients(d_in2, d_rec2, g_b_ih, g_b_hh)
    if dx.size:
        np.dot(d_in2, w_ih, dx.reshape((rows, dx.shape[2])))


@register_jitable
def _bias_gradients(d_in, d_rec, g_b_ih, g_b_hh):
    """``g_b_ih = d_in.sum(0)`` and ``g_b_hh = d_rec.sum(0)``, summed once when both are one array (LSTM, Elman)."""
    _column_sums(d_in, g_b_ih)
    if d_rec.ctypes.data == d_in.ctypes.data:
        copy(g_b_ih, g_b_hh)
    else:
        _column_sums(d_rec, g_b_hh)


@register_jitable
def _column_sums(d, out):
    """``out = d.sum(axis=0)``, row after row (one vectorised loop: views indexed from 0)."""
    out[:] = 0
    for r in range(d.shape[0]):
        row = d[r]
        for g in range(out.shape[0]):
            out[g] += row[g]


#: Inputs or states up to which a chunk's weight gradient is
#: ``_products.gradient_matmul`` rather than BLAS: on one core here, 9-58
#: (BLAS) against 43-75 GFLOP/s for 4 to 32 columns; at 64, 18-66 against
#: 66-76 with 192 outputs (GRU H=64) and a tie with 256 (LSTM H=64); BLAS
#: ahead (80-110) at 128.  In-process A/B of 64 against 32: GRU H=64 B=16
#: step -7 to -10%, RNN H=64 -2%, LSTM H=64 within 2%.
NARROW_GRADIENT = 64


@register_jitable
def _weight_gradient(d, x, out):
    """``out = d.T @ x``: `chunk_gradients`' product, picked by the width of ``x``."""
    if x.shape[1] <= NARROW_GRADIENT:
        gradient_matmul(d, x, out)
    else:
        np.dot(d.T, x, out)


#: Columns of ``x`` or of the states a `gradient_blocks` product takes at a
#: time: the contiguous copy it makes of them stays small (3.1 MiB for an
#: LSTM H=512 B=64 T=100 batch), where whole copies added a third of the
#: activations to the step's peak memory; 64 columns made the products of
#: an H=512 B=16 T=25 batch 10-30% slower.
GRADIENT_COLUMNS = 128


@kernel(parallel=True)
def gradient_blocks(x, h, offset, d_in, d_rec, w_ih, g_w_ih, g_w_hh, g_b_ih, g_b_hh, dx, blocks):
    """`chunk_gradients` of a whole batch of large weights, split between the threads.

    Each thread takes a block of the input columns of each weight gradient
    (BLAS reads ``d_in`` transposed in place; only `GRADIENT_COLUMNS` of
    ``x`` or of the states are copied at a time, to be contiguous), a block
    of the biases and a block of the rows of ``dx``.  Splitting the gate
    rows instead needed a copy of those columns of ``d_in`` and ``d_rec``:
    for an LSTM H=512 B=64 T=100 D=128 step, 100 MB.

    Parameters
    ----------
    x : ndarray of shape (N, D)
        The layer input, N = K * T * C rows in chunk-major order.
    h : ndarray of shape (K, T + 1, C, H)
        The state buffer: the state each step read is in slot ``t + offset``.
    offset : int
        0 for a forward-direction layer, 1 for a reverse one.
    d_in, d_rec : ndarray of shape (N, G)
    w_ih : ndarray of shape (G, D)
    g_w_ih, g_w_hh, g_b_ih, g_b_hh : ndarray
        The whole gradients: the batch's are added to them.
    dx : ndarray of shape (N, D) or empty
    blocks : int
        As for `project_rows`.
    """
    n_rows, n_gates = d_in.shape
    n_chunks, n_slots, chunk, hidden = h.shape
    steps = n_slots - 1
    for block in prange(blocks):
        fpu = flush_denormals()
        for start in range(block * x.shape[1] // blocks, (block + 1) * x.shape[1] // blocks, GRADIENT_COLUMNS):
            stop = min(start + GRADIENT_COLUMNS, (block + 1) * x.shape[1] // blocks)
            _gradient_columns(d_in, np.ascontiguousarray(x[:, start:stop]), g_w_ih, start, stop)
        for start in range(block * hidden // blocks, (block + 1) * hidden // blocks, GRADIENT_COLUMNS):
            stop = min(start + GRADIENT_COLUMNS, (block + 1) * hidden // blocks)
            states = np.empty((n_rows, stop - start), dtype=h.dtype)
            for k in range(n_chunks):
                for t in range(steps):
                    for i in range(chunk):
                        copy(h[k, t + offset, i, start:stop], states[(k * steps + t) * chunk + i])
            _gradient_columns(d_rec, states, g_w_hh, start, stop)
        start = block * n_gates // blocks
        stop = (block + 1) * n_gates // blocks
        b_in = np.empty(stop - start, dtype=g_b_ih.dtype)
        b_rec = np.empty(stop - start, dtype=g_b_hh.dtype)
        _bias_gradients(d_in[:, start:stop], d_rec[:, start:stop], b_in, b_rec)
        total_in, total_rec = g_b_ih[start:stop], g_b_hh[start:stop]
        for g in range(stop - start):
            total_in[g] += b_in[g]
            total_rec[g] += b_rec[g]
        first = block * n_rows // blocks
        last = (block + 1) * n_rows // blocks
        if dx.size and last > first:
            np.dot(d_in[first:last], w_ih, dx[first:last])
        restore_fpu(fpu)


@register_jitable
def _gradient_columns(d, a, g_w, start, stop):
    """``g_w[:, start:stop] += d^T a`` (``a`` holds those columns, contiguous)."""
    part = np.empty((d.shape[1], stop - start), dtype=g_w.dtype)
    np.dot(d.T, a, part)
    for g in range(part.shape[0]):
        source, target = part[g], g_w[g, start:stop]
        for j in range(stop - start):
            target[j] += source[j]


@kernel(parallel=True)
def sum_shares(shares, totals):
    """Add the sum of the chunks' shares of each gradient to its total.

    Threads split the elements, and every element adds its chunks' shares
    in chunk order, then the sum to its total, so the result is the same on
    any thread count (and the same as a serial sum).  Done serially in NumPy, this sum
    was the largest serial part of a batch-256 step on 16 threads.  All of
    a layer's gradients in one call: one parallel region instead of four
    and its loop indexed from 0, took the sums of a training step from 71 to
    36 us with LSTM H=64 B=64 T=28, and from 998 to 346 us with H=128 B=256
    T=100 (2 threads).

    Parameters
    ----------
    shares : tuple of ndarray of shape (K, N_i), C-ordered
        Row ``k`` of each is chunk ``k``'s share (row 0 is overwritten).
    totals : tuple of ndarray of shape (N_i,)
        Added to.
    """
    n_blocks = 0
    for a in range(len(shares)):
        n_blocks += -(-shares[a].shape[1] // SUM_BLOCK)
    owner = np.empty(n_blocks, dtype=np.int64)
    starts = np.empty(n_blocks, dtype=np.int64)
    block = 0
    for a in range(len(shares)):
        for start in range(0, shares[a].shape[1], SUM_BLOCK):
            owner[block] = a
            starts[block] = start
            block += 1
    for block in prange(n_blocks):
        array = shares[owner[block]]
        start = starts[block]
        stop = min(array.shape[1], start + SUM_BLOCK)
        # Views indexed from 0 (see the module docstring): indexed from
        # ``start``, the loop was not vectorised and took 4x as long.
        partial = array[0, start:stop]
        for k in range(1, array.shape[0]):
            share = array[k, start:stop]
            for e in range(stop - start):
                partial[e] += share[e]
        total = totals[owner[block]][start:stop]
        for e in range(stop - start):
            total[e] += partial[e]
