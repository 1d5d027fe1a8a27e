"""Buffer layout and the pieces shared by the recurrent kernels.

The batch is cut into ``K`` chunks of ``C`` samples (the last padded with
zero-length samples), and every buffer is chunk-major and then time-major:
``(K, T, C, features)``.  Each chunk is one ``prange`` task that runs the
whole time loop of its samples with its own small GEMMs, so a layer is one
parallel region, and every chunk's data are contiguous for those GEMMs.  The
chunking (``_config.batch_plan``) depends on the batch and weight sizes,
never on the thread count, so neither do the results.

States live in buffers of ``T + 1`` time slots.  A forward-direction layer
keeps its initial state in slot 0 and the state after step ``t`` in slot
``t + 1``; a reverse-direction layer keeps its initial state in slot ``T`` and
the state after step ``t`` in slot ``t``.  Either way the layer's output at
step ``t`` and the state it read are contiguous slices of one buffer.

The per-sample gate loops take each gate block as its own view and index it
from 0.  An index such as ``a[hidden + j]`` makes Numba check for a negative
index at every access, which keeps LLVM from vectorising the loop: measured
4x slower for the LSTM's gate math.
"""

import numpy as np
from numba.extending import register_jitable


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
def step_product(a, b, out, t, lengths, per_sample):
    """``out = a @ b`` for the samples of one chunk at step ``t``.

    BLAS rounds a row of a product by its position among the rows of the
    call (OpenBLAS 0.3.30: 16 equal rows gave 3 different results), so with
    one GEMM per chunk a sample's output would depend on the rest of its
    batch.  Inference passes with small weights therefore multiply one
    sample at a time (``per_sample``, skipping finished samples: no slower
    for small weights, 13.8 against 23.1 us for 16 rows of (64, 256));
    training passes multiply whole chunks, 10-25% faster per step.

    Parameters
    ----------
    a : ndarray of shape (C, K)
    b : ndarray of shape (K, N)
    out : ndarray of shape (C, N)
        Written (for the running samples only, with ``per_sample``).
    t : int
        The step's time index.
    lengths : ndarray of shape (C,)
    per_sample : bool
        One BLAS call per running sample, else one for the chunk.
    """
    if per_sample:
        for i in range(a.shape[0]):
            if t < lengths[i]:
                np.dot(a[i : i + 1], b, out[i : i + 1])
    else:
        np.dot(a, b, out)


@register_jitable
def project_inputs(x, w_ih_t, b_ih, gates, lengths, per_sample):
    """``gates = x W_ih^T + b_ih`` at the valid steps of one chunk.

    Parameters
    ----------
    x : ndarray of shape (T, C, D)
    w_ih_t : ndarray of shape (D, G)
        ``W_ih`` transposed (C-ordered for small weights, see
        ``layers._transposed``).
    b_ih : ndarray of shape (G,)
    gates : ndarray of shape (T, C, G)
        Written at each sample's valid steps.
    lengths : ndarray of shape (C,)
    per_sample : bool
        As for `step_product`; else the projection is one GEMM.
    """
    if not per_sample:
        rows = x.shape[0] * x.shape[1]
        np.dot(x.reshape((rows, x.shape[2])), w_ih_t, gates.reshape((rows, gates.shape[2])))
    for t in range(x.shape[0]):
        if per_sample:
            step_product(x[t], w_ih_t, gates[t], t, lengths, per_sample)
        for i in range(x.shape[1]):
            if t < lengths[i]:
                row = gates[t, i]
                for g in range(row.shape[0]):
                    row[g] += b_ih[g]


@register_jitable
def output_grad(dh_out, out_steps, no_grad, k, t, i):
    """d loss / d output of sample ``i`` of chunk ``k`` at step ``t``.

    ``dh_out`` holds it for every step when ``out_steps`` is empty, else at
    step ``out_steps[sample]`` only (see ``lstm.lstm_backward``);
    ``no_grad`` is a row of zeros.
    """
    if out_steps.size == 0:
        return dh_out[k, t, i]
    if out_steps[k * dh_out.shape[2] + i] == t:
        return dh_out[k, 0, i]
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
    np.dot(d_in2.T, x.reshape((rows, x.shape[2])), g_w_ih)
    np.dot(d_rec2.T, h_prev.reshape((rows, h_prev.shape[2])), g_w_hh)
    g_b_ih[:] = 0
    g_b_hh[:] = 0
    for r in range(rows):
        for g in range(d_in2.shape[1]):
            g_b_ih[g] += d_in2[r, g]
            g_b_hh[g] += d_rec2[r, g]
    if dx.size:
        np.dot(d_in2, w_ih, dx.reshape((rows, dx.shape[2])))

