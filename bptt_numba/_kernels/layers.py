"""Thin Python wrappers that run one recurrent layer with a cell's kernels.

They provide the buffers, check them (a stray dtype or a strided view would
compile, and run, another specialisation), and reduce the per-chunk gradient
shares in chunk order, so the sums do not depend on the thread count.

Buffers come from a caller's ``workspace`` dict when one is given, so that a
training loop reuses the same memory step after step: fresh multi-megabyte
arrays cost page faults on first touch, measured here at 25-40% of an LSTM
step (H=128, B=32, T=100).
"""

import math

import numba
import numpy as np

from .._config import LARGE_WEIGHTS
from . import elman, gru, lstm
from ._products import aligned_empty, packed
from ._recurrence import NARROW_GRADIENT, PROJECTED_STEPS, gradient_blocks, project_rows, sum_shares

CELLS = {"rnn": elman, "lstm": lstm, "gru": gru}
KERNELS = {
    (cell, kind): getattr(module, f"{module.__name__.rsplit('.', 1)[1]}_{kind}")
    for cell, module in CELLS.items()
    for kind in ("forward", "backward")
}


def _check_buffers(*arrays):
    dtype = arrays[0].dtype
    for array in arrays:
        if array.dtype != dtype or not array.flags.c_contiguous:
            raise TypeError(
                f"kernel buffers must be C-contiguous {dtype}; got {array.dtype} "
                f"with shape {array.shape} (contiguous={array.flags.c_contiguous})"
            )


#: Buffers smaller than this (bytes) are always fresh: the allocator serves
#: them from memory it keeps, without page faults, and a one-sequence
#: forward pass (LSTM H=64, T=100) took 5-12 us less with fresh ones.
REUSED_BUFFERS = 1 << 18


def _buffer(workspace, key, shape, dtype):
    """An uninitialised array, carved from ``workspace``'s buffer for ``key``.

    The buffer is grown, never kept per shape, so that batches of many sizes
    (a last partial batch, truncated windows, predictions) share one; small
    ones (`REUSED_BUFFERS`) and those asked without a ``workspace`` are fresh
    (NumPy's: aligning those took longer than it saved).  A kept one is
    aligned for the tiles' vectors (``_products.aligned_empty``).
    """
    size = math.prod(shape)
    if workspace is None or size * np.dtype(dtype).itemsize < REUSED_BUFFERS:
        return np.empty(shape, dtype=dtype)
    key = key + (np.dtype(dtype).str,)
    flat = workspace.get(key)
    if flat is None or flat.size < size:
        flat = workspace[key] = aligned_empty(size, np.dtype(dtype))
    return flat[:size].reshape(shape)


#: Gates larger than this (bytes) are not kept at inference.  Smaller ones
#: are, and are projected in one product before the time loop: rolled, a
#: one-sequence Elman forward pass (H=64, T=100) took 134 instead of 129 us
#: here; kept, the gates of 256 LSTM sequences (H=128, T=100) take 52 MB,
#: and rolling them made the pass 8-19% faster.
ROLLING_GATES = 1 << 20


def backward_calls_blas(n_inputs, hidden, need_dx, large):
    """Whether a layer's training passes call BLAS inside a parallel region.

    They do for large weights (`_large`: whole-batch products split between
    the threads), for the input gradient, and for weight gradients over more
    than ``_recurrence.NARROW_GRADIENT`` inputs or states; then BLAS must
    run single-threaded (``_config.kernel_section``).  Otherwise every
    product is the kernels' own, and setting BLAS's thread count to one and
    back is time lost: 54-116 us of an LSTM H=64 B=64 step here.
    """
    return large or need_dx or max(n_inputs, hidden) > NARROW_GRADIENT


def _large(w_hh):
    """Whether a layer's weights are large (``_config.batch_plan``): whole-batch GEMMs around the kernels."""
    return w_hh.nbytes > LARGE_WEIGHTS


def forward(
    cell, x, w_ih, b_ih, w_hh, b_hh, state0, lengths, reverse, use_relu=False, workspace=None, key=(), tape=True
):
    """Unroll one layer direction.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    x : ndarray of shape (K, T, C, D)
        Layer input, chunk-major (see ``_recurrence``).
    w_ih, b_ih, w_hh, b_hh : ndarray
        PyTorch-layout weights of this layer direction.
    state0 : tuple of ndarray of shape (K, C, H), or None
        Initial state: ``(h, c)`` for the LSTM, ``(h,)`` otherwise; None
        for zeros.
    lengths : ndarray of shape (K * C,), int64
    reverse : bool
    use_relu : bool
        ReLU activation for the Elman cell.
    workspace : dict, optional
        Reusable buffers (see the module docstring); the tape then lives in
        it until the next call with the same ``key``.
    key : tuple
        Names this layer direction's buffers in ``workspace``.
    tape : bool, default=True
        Keep every step's gates for `backward`.  Without (inference), gates
        over `ROLLING_GATES` bytes with small weights live in a buffer of a
        few steps (``_recurrence.project_step``): an LSTM layer then takes a
        third of the memory, a GRU layer a seventh.

    Returns
    -------
    tape : tuple of ndarray
        ``(gates, h, aux)``; the states are ``tape[1 : 1 + N_STATE]``.
    """
    module = CELLS[cell]
    n_chunks, n_steps, chunk, _ = x.shape
    hidden = w_hh.shape[1]
    large = _large(w_hh)
    width = module.N_GATES * hidden
    kept = n_steps
    if not (tape or large) and n_chunks * n_steps * chunk * width * x.itemsize > ROLLING_GATES:
        kept = min(n_steps, PROJECTED_STEPS)
    gates = _buffer(workspace, ("gates",) + key, (n_chunks, kept, chunk, width), x.dtype)
    h = _buffer(workspace, ("h",) + key, (n_chunks, n_steps + 1, chunk, hidden), x.dtype)
    aux = _buffer(workspace, ("aux",) + key, module.aux_shape(n_chunks, n_steps, chunk, hidden, kept), x.dtype)
    slot = n_steps if reverse else 0
    for buffer, initial in zip((h, aux), state0 or (0,) * module.N_STATE):
        buffer[:, slot] = initial
    # Packed per call: the weights change at every optimizer step.
    w_hh_t = packed(w_hh, True, large)
    _check_buffers(x, b_ih, b_hh, gates, h, aux)
    if large:
        project_rows(x.reshape((-1, x.shape[3])), w_ih, b_ih, gates.reshape((-1, width)), numba.get_num_threads())
        # Projected above: the kernel reads no W_ih^T, and an empty one keeps
        # it the same compiled specialisation as for small weights.
        w_ih_t = np.empty((0, width), dtype=x.dtype)
    else:
        w_ih_t = np.ascontiguousarray(w_ih.T)
    KERNELS[cell, "forward"](x, w_ih_t, b_ih, w_hh_t, b_hh, gates, h, aux, lengths, reverse, use_relu, large)
    return gates, h, aux


def backward(
    cell,
    x,
    w_ih,
    w_hh,
    tape,
    lengths,
    reverse,
    truncate,
    t_offset,
    dh_out,
    need_dx,
    grads,
    use_relu=False,
    dh_sq=None,
    workspace=None,
    key=(),
    out_steps=None,
):
    """Back-propagate one layer direction (the tape is consumed).

    Parameters
    ----------
    cell, x, w_ih, w_hh, lengths, reverse, use_relu
        As for `forward`.
    tape : tuple of ndarray
        From `forward`; overwritten with gradients.
    truncate : int
        TBPTT window (0: full BPTT), in absolute time.
    t_offset : int
        Absolute time of step 0 of ``x``.
    dh_out : ndarray of shape (K, T, C, H) or (K, 1, C, H)
        Gradient w.r.t. the layer direction's output at each step, or with
        ``out_steps`` at one step per sample.
    need_dx : bool
        Also return the gradient w.r.t. ``x``.
    grads : tuple of ndarray
        The gradients w.r.t. ``w_ih, w_hh, b_ih, b_hh``, C-ordered: this
        pass's are added to them (by the kernels that sum them, where adding
        a layer's gradients in NumPy after them was four more passes).
    dh_sq : ndarray of shape (K, T, C), optional
        Zeroed buffer; receives the squared norm of d loss / d h_t per
        sample and step (the gradient-flow diagnostic).
    workspace, key
        As for `forward`; ``dx`` then lives in it until the next call.
    out_steps : ndarray of shape (K * C,), int64, optional
        The step of each sample at which ``dh_out[k, 0, i]`` enters (-1:
        none), for a (K, 1, C, H) ``dh_out``.

    Returns
    -------
    dx : ndarray of shape (K, T, C, D) or None
        With a ``workspace`` it lives in it until the next call with the
        same ``key``.
    """
    gates, h, aux = tape
    n_chunks = x.shape[0]
    large = _large(w_hh)
    dx = _buffer(workspace, ("dx",) + key, x.shape if need_dx else (n_chunks, 0, 0, 0), x.dtype)
    shapes = (w_ih.shape, w_hh.shape, w_ih.shape[:1], w_hh.shape[:1])
    # Large weights: the kernel leaves the weight gradients to gradient_blocks, which adds to ``grads``.
    n_shares = 0 if large else n_chunks
    shares = [_buffer(workspace, ("share", i) + key, (n_shares,) + shape, x.dtype) for i, shape in enumerate(shapes)]
    if dh_sq is None:
        dh_sq = np.empty((0, 0, 0), dtype=x.dtype)
    if out_steps is None:
        out_steps = np.empty(0, dtype=np.int64)
    _check_buffers(x, w_ih, w_hh, gates, h, aux, dh_out, dx, *shares, dh_sq, *grads)
    KERNELS[cell, "backward"](
        x, w_ih, packed(w_hh, False, large), gates, h, aux, lengths, reverse, use_relu, truncate, t_offset, dh_out,
        out_steps, dx, *shares, dh_sq, large,
    )
    if large:
        _whole_batch_gradients(CELLS[cell], x, w_ih, gates, h, aux, reverse, dx, grads)
    else:
        sum_shares(tuple(share.reshape((n_chunks, -1)) for share in shares), tuple(total.reshape(-1) for total in grads))
    return dx if need_dx else None


def _whole_batch_gradients(module, x, w_ih, gates, h, aux, reverse, dx, grads):
    """The weight and input gradients of large weights, over the whole batch (``_recurrence.gradient_blocks``)."""
    rows = x.shape[0] * x.shape[1] * x.shape[2]
    d_rec = aux if module.RECURRENT_GRADIENT_IN_AUX else gates
    gradient_blocks(
        x.reshape((rows, x.shape[3])), h, int(reverse), gates.reshape((rows, gates.shape[3])),
        d_rec.reshape((rows, gates.shape[3])), w_ih, *grads,
        dx.reshape((dx.shape[0] * dx.shape[1] * dx.shape[2], dx.shape[3])), numba.get_num_threads(),
    )
