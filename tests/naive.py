"""Slow, loop-by-loop NumPy reference of stacked RNN / LSTM / GRU training.

This module is the test oracle for the Numba kernels of ``bptt_numba``.  It
computes, in float64 and with plain Python loops over samples and time steps,

* the forward pass of a stacked (optionally bidirectional) Elman RNN, LSTM or
  GRU with PyTorch's equations, followed by a linear head;
* the loss (``"mse"``, ``"binary_cross_entropy"`` or ``"cross_entropy"``,
  optionally weighted per sample);
* the gradient of that loss w.r.t. every weight and w.r.t. the input, by
  backpropagation through time written out by hand, one cell step at a time,
  optionally truncated (``truncate=k``);
* the *surrogate* loss whose exact gradient is the truncated gradient, so that
  the truncated backward pass can be checked with finite differences too.

Nothing here is vectorised across samples or steps on purpose: every sample is
run on its own, over its own valid steps only, so padding cannot leak into
anything by construction.

Conventions
-----------
Weights are a dict with PyTorch's names (``weight_ih_l0``,
``weight_hh_l1_reverse``, ..., ``head.weight``, ``head.bias``).  Internally a
recurrent state is a tuple of vectors: ``(h,)`` for ``"rnn"`` and ``"gru"``,
``(h, c)`` for ``"lstm"``.  Direction 0 is the forward direction, 1 the
reverse one.

Truncation and border states
----------------------------
With ``truncate=k`` the recurrent edge between steps ``t - 1`` and ``t`` is
cut whenever ``t % k == 0``.  In a direction's processing order that edge is
the state *entering* a step ``s``: ``s = t`` in the forward direction and
``s = t - 1`` in the reverse direction (see :func:`crosses_border`).  A border
state is identified by the key ``(b, layer, direction, s)``: sample, layer,
direction and the time index of the step that receives the state.

:func:`record_border_states` returns those states from an unperturbed forward
pass; :func:`surrogate_loss` recomputes the loss with each of them substituted
for the live state crossing its border.  At the recorded point both losses are
equal, and the exact gradient of the surrogate is the truncated gradient
returned by :func:`naive_loss_and_grad`, which :func:`finite_difference_grad`
can therefore check::

    borders = record_border_states(w, X, lengths, "lstm", (3,), truncate=2)
    f = lambda: surrogate_loss(w, X, y, lengths, "lstm", (3,),
                               truncate=2, border_states=borders)
    fd = finite_difference_grad(f, dict(w, X=X))
"""

from collections import namedtuple

import numpy as np
from scipy.special import expit

#: Number of gate blocks stacked along the first axis of the weights.
N_GATES = {"rnn": 1, "lstm": 4, "gru": 3}

#: Number of vectors in a recurrent state.
N_STATE = {"rnn": 1, "lstm": 2, "gru": 1}

#: PyTorch's name suffix of each direction.
DIRECTION_SUFFIXES = ("", "_reverse")

OUTPUTS = ("last", "sequence")
LOSSES = ("mse", "binary_cross_entropy", "cross_entropy")

#: The four weights of one direction of one layer.
CellParams = namedtuple("CellParams", ["W_ih", "W_hh", "b_ih", "b_hh"])

#: What the forward pass keeps of one direction of one layer of one sample:
#: the cell parameters, the output at each time index, the cache of each step
#: (indexed by time) and the state after the last processed step.
DirectionTrace = namedtuple("DirectionTrace", ["params", "outputs", "caches", "final"])

#: What the forward pass keeps of one layer of one sample: the input vector at
#: each time index, a DirectionTrace per direction and the concatenated output
#: ``[h_fwd_t, h_rev_t]`` at each time index.
LayerTrace = namedtuple("LayerTrace", ["inputs", "directions", "outputs"])


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def sigmoid(a):
    """Logistic function ``1 / (1 + exp(-a))``, without overflow for large ``|a|``.

    Parameters
    ----------
    a : ndarray

    Returns
    -------
    ndarray
    """
    return expit(a)


def n_directions(bidirectional):
    """Return 2 for a bidirectional network and 1 otherwise."""
    return 2 if bidirectional else 1


def param_names(layer, direction):
    """PyTorch's names of the weights of one direction of one layer.

    Parameters
    ----------
    layer : int
    direction : int
        0 for forward, 1 for reverse.

    Returns
    -------
    CellParams
        The four names, in the fields ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh``.
    """
    s = DIRECTION_SUFFIXES[direction]
    return CellParams(
        f"weight_ih_l{layer}{s}",
        f"weight_hh_l{layer}{s}",
        f"bias_ih_l{layer}{s}",
        f"bias_hh_l{layer}{s}",
    )


def cell_params(weights, layer, direction):
    """Look up the four weights of one direction of one layer.

    Parameters
    ----------
    weights : dict of str to ndarray
    layer, direction : int

    Returns
    -------
    CellParams
    """
    return CellParams(*(weights[name] for name in param_names(layer, direction)))


def layer_input_size(n_features, hidden_sizes, layer, bidirectional):
    """Width of the input of ``layer``: the features, or the layer below's output."""
    if layer == 0:
        return n_features
    return hidden_sizes[layer - 1] * n_directions(bidirectional)


def init_weights(n_features, hidden_sizes, cell, n_outputs, bidirectional, rng):
    """Draw random weights with PyTorch's names and shapes.

    Parameters
    ----------
    n_features : int
        Width D of the input.
    hidden_sizes : sequence of int
        Hidden size of each layer (may differ between layers).
    cell : {"rnn", "lstm", "gru"}
    n_outputs : int
        Width O of the head's output.
    bidirectional : bool
    rng : numpy.random.Generator or int or None
        Source of randomness, or a seed for one.

    Returns
    -------
    dict of str to ndarray
        Every array drawn from uniform(-0.5, 0.5), float64.
    """
    rng = np.random.default_rng(rng)
    gates = N_GATES[cell]
    weights = {}
    for layer, hidden in enumerate(hidden_sizes):
        width = layer_input_size(n_features, hidden_sizes, layer, bidirectional)
        for direction in range(n_directions(bidirectional)):
            names = param_names(layer, direction)
            weights[names.W_ih] = rng.uniform(-0.5, 0.5, (gates * hidden, width))
            weights[names.W_hh] = rng.uniform(-0.5, 0.5, (gates * hidden, hidden))
            weights[names.b_ih] = rng.uniform(-0.5, 0.5, gates * hidden)
            weights[names.b_hh] = rng.uniform(-0.5, 0.5, gates * hidden)
    top = hidden_sizes[-1] * n_directions(bidirectional)
    weights["head.weight"] = rng.uniform(-0.5, 0.5, (n_outputs, top))
    weights["head.bias"] = rng.uniform(-0.5, 0.5, n_outputs)
    return weights


def max_relative_error(a, b):
    """Largest absolute difference, relative to the largest magnitude.

    ``max|a - b| / max(max|a|, max|b|, 1e-8)``: unlike an elementwise relative
    error it does not blow up on entries that are (nearly) zero in both.

    Parameters
    ----------
    a, b : array_like

    Returns
    -------
    float
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-8)
    return float(np.max(np.abs(a - b)) / scale)


# ---------------------------------------------------------------------------
# Cells: one forward step and one backward step each
# ---------------------------------------------------------------------------


def rnn_step(params, x, h, nonlinearity="tanh"):
    """One step of an Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Parameters
    ----------
    params : CellParams
        ``W_ih`` (H, D), ``W_hh`` (H, H), ``b_ih`` and ``b_hh`` (H,).
    x : ndarray of shape (D,)
    h : ndarray of shape (H,)
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    h_new : ndarray of shape (H,)
    cache : tuple
        What :func:`rnn_step_backward` needs.
    """
    a = params.W_ih @ x + params.b_ih + params.W_hh @ h + params.b_hh
    if nonlinearity == "tanh":
        h_new = np.tanh(a)
    elif nonlinearity == "relu":
        h_new = np.maximum(a, 0.0)
    else:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}")
    return h_new, (x, h, a, h_new)


def rnn_step_backward(params, cache, dh_new, nonlinearity="tanh"):
    """Backward of :func:`rnn_step`.

    Parameters
    ----------
    params : CellParams
    cache : tuple
        From :func:`rnn_step`.
    dh_new : ndarray of shape (H,)
        d loss / d h'.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    dx : ndarray of shape (D,)
    dh : ndarray of shape (H,)
    dparams : CellParams
        Gradients of the four weights.
    """
    x, h, a, h_new = cache
    if nonlinearity == "tanh":
        da = dh_new * (1.0 - h_new**2)
    else:
        # The derivative of relu at exactly 0 is taken as 0, like PyTorch.
        da = dh_new * (a > 0.0)
    dparams = CellParams(np.outer(da, x), np.outer(da, h), da.copy(), da.copy())
    return params.W_ih.T @ da, params.W_hh.T @ da, dparams


def lstm_step(params, x, h, c):
    """One LSTM step with PyTorch's equations (gate order i, f, g, o).

    ::

        i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
        with a = W_ih x + b_ih + W_hh h + b_hh split into (a_i, a_f, a_g, a_o)
        c' = f * c + i * g
        h' = o * tanh(c')

    Parameters
    ----------
    params : CellParams
        ``W_ih`` (4H, D), ``W_hh`` (4H, H), ``b_ih`` and ``b_hh`` (4H,).
    x : ndarray of shape (D,)
    h, c : ndarray of shape (H,)

    Returns
    -------
    h_new, c_new : ndarray of shape (H,)
    cache : tuple
        What :func:`lstm_step_backward` needs.
    """
    a = params.W_ih @ x + params.b_ih + params.W_hh @ h + params.b_hh
    a_i, a_f, a_g, a_o = a.reshape(4, -1)  # one row per gate block
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c
    return h_new, c_new, (x, h, c, i, f, g, o, tanh_c)


def lstm_step_backward(params, cache, dh_new, dc_new):
    """Backward of :func:`lstm_step`.

    Parameters
    ----------
    params : CellParams
    cache : tuple
        From :func:`lstm_step`.
    dh_new, dc_new : ndarray of shape (H,)
        d loss / d h' and d loss / d c' (the latter from the next step only).

    Returns
    -------
    dx : ndarray of shape (D,)
    dh, dc : ndarray of shape (H,)
    dparams : CellParams
    """
    x, h, c, i, f, g, o, tanh_c = cache
    # c' reaches the loss both directly (next step) and through h'.
    dc_total = dc_new + dh_new * o * (1.0 - tanh_c**2)
    d_o = dh_new * tanh_c
    d_i = dc_total * g
    d_f = dc_total * c
    d_g = dc_total * i
    dc = dc_total * f
    # Through each gate's nonlinearity to its pre-activation.
    da = np.concatenate(
        [
            d_i * i * (1.0 - i),
            d_f * f * (1.0 - f),
            d_g * (1.0 - g**2),
            d_o * o * (1.0 - o),
        ]
    )
    dparams = CellParams(np.outer(da, x), np.outer(da, h), da.copy(), da.copy())
    return params.W_ih.T @ da, params.W_hh.T @ da, dc, dparams


def gru_step(params, x, h):
    """One GRU step with PyTorch's equations (gate order r, z, n).

    ::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Parameters
    ----------
    params : CellParams
        ``W_ih`` (3H, D), ``W_hh`` (3H, H), ``b_ih`` and ``b_hh`` (3H,).
    x : ndarray of shape (D,)
    h : ndarray of shape (H,)

    Returns
    -------
    h_new : ndarray of shape (H,)
    cache : tuple
        What :func:`gru_step_backward` needs.
    """
    # The input and recurrent projections are kept apart: the reset gate
    # multiplies only the recurrent part of the candidate n.
    gi_r, gi_z, gi_n = (params.W_ih @ x + params.b_ih).reshape(3, -1)
    gh_r, gh_z, gh_n = (params.W_hh @ h + params.b_hh).reshape(3, -1)
    r = sigmoid(gi_r + gh_r)
    z = sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    h_new = (1.0 - z) * n + z * h
    return h_new, (x, h, r, z, n, gh_n)


def gru_step_backward(params, cache, dh_new):
    """Backward of :func:`gru_step`.

    Parameters
    ----------
    params : CellParams
    cache : tuple
        From :func:`gru_step`.
    dh_new : ndarray of shape (H,)
        d loss / d h'.

    Returns
    -------
    dx : ndarray of shape (D,)
    dh : ndarray of shape (H,)
    dparams : CellParams
    """
    x, h, r, z, n, gh_n = cache
    d_n = dh_new * (1.0 - z)
    d_z = dh_new * (h - n)
    dh_direct = dh_new * z
    d_an = d_n * (1.0 - n**2)  # pre-activation of n
    d_r = d_an * gh_n
    d_ar = d_r * r * (1.0 - r)
    d_az = d_z * z * (1.0 - z)
    # Gradients of the input projection W_ih x + b_ih and of the recurrent
    # projection W_hh h + b_hh; they differ only in the n block (factor r).
    d_gi = np.concatenate([d_ar, d_az, d_an])
    d_gh = np.concatenate([d_ar, d_az, d_an * r])
    dparams = CellParams(np.outer(d_gi, x), np.outer(d_gh, h), d_gi, d_gh)
    return params.W_ih.T @ d_gi, dh_direct + params.W_hh.T @ d_gh, dparams


def cell_step(cell, params, x, state, nonlinearity="tanh"):
    """Dispatch one forward step on a state tuple.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    params : CellParams
    x : ndarray of shape (D,)
    state : tuple of ndarray
        ``(h,)`` or, for ``"lstm"``, ``(h, c)``.
    nonlinearity : {"tanh", "relu"}
        Used by ``"rnn"`` only.

    Returns
    -------
    new_state : tuple of ndarray
    cache : tuple
    """
    if cell == "rnn":
        h_new, cache = rnn_step(params, x, state[0], nonlinearity)
        return (h_new,), cache
    if cell == "lstm":
        h_new, c_new, cache = lstm_step(params, x, *state)
        return (h_new, c_new), cache
    if cell == "gru":
        h_new, cache = gru_step(params, x, state[0])
        return (h_new,), cache
    raise ValueError(f"unknown cell {cell!r}")


def cell_step_backward(cell, params, cache, d_state, nonlinearity="tanh"):
    """Dispatch one backward step on a state-gradient tuple.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    params : CellParams
    cache : tuple
        From :func:`cell_step`.
    d_state : tuple of ndarray
        Gradient w.r.t. the new state, same structure as the state.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    dx : ndarray of shape (D,)
    d_prev_state : tuple of ndarray
        Gradient w.r.t. the state that entered the step.
    dparams : CellParams
    """
    if cell == "rnn":
        dx, dh, dparams = rnn_step_backward(params, cache, d_state[0], nonlinearity)
        return dx, (dh,), dparams
    if cell == "lstm":
        dx, dh, dc, dparams = lstm_step_backward(params, cache, *d_state)
        return dx, (dh, dc), dparams
    if cell == "gru":
        dx, dh, dparams = gru_step_backward(params, cache, d_state[0])
        return dx, (dh,), dparams
    raise ValueError(f"unknown cell {cell!r}")


# ---------------------------------------------------------------------------
# Time order and truncation borders
# ---------------------------------------------------------------------------


def processing_order(length, reverse):
    """Time indices in the order a direction processes them.

    Parameters
    ----------
    length : int
        Number of valid steps of the sample.
    reverse : bool

    Returns
    -------
    range
    """
    return range(length - 1, -1, -1) if reverse else range(length)


def crosses_border(t, length, reverse, truncate):
    """Whether the state entering step ``t`` crosses a truncation border.

    The edge between steps ``t0 - 1`` and ``t0`` is a border when
    ``t0 % truncate == 0``.  The forward direction feeds step ``t`` from step
    ``t - 1`` (so ``t0 = t``); the reverse direction feeds step ``t`` from
    step ``t + 1`` (so ``t0 = t + 1``).  The first processed step is fed by
    the initial state, which is never a border.

    Parameters
    ----------
    t : int
        Time index of the receiving step.
    length : int
        Number of valid steps of the sample.
    reverse : bool
    truncate : int or None
        None means full BPTT: no borders.

    Returns
    -------
    bool
    """
    if truncate is None:
        return False
    if reverse:
        return t + 1 < length and (t + 1) % truncate == 0
    return t > 0 and t % truncate == 0


# ---------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------


def _zero_state(cell, hidden):
    """A state tuple of zeros."""
    return tuple(np.zeros(hidden) for _ in range(N_STATE[cell]))


def _initial_state(state, cell, hidden, layer, direction, b):
    """The initial state tuple of one sample, direction and layer.

    Parameters
    ----------
    state : None or list
        User format: per layer an array (ndir, B, H) or, for ``"lstm"``, a
        tuple ``(h, c)`` of two such arrays.
    cell : str
    hidden : int
    layer, direction, b : int

    Returns
    -------
    tuple of ndarray
    """
    if state is None:
        return _zero_state(cell, hidden)
    entry = state[layer]
    arrays = entry if cell == "lstm" else (entry,)
    return tuple(np.array(a[direction, b], dtype=np.float64) for a in arrays)


def _run_direction(cell, params, inputs, state, reverse, nonlinearity, truncate,
                   border_states, crossing, key):
    """Run one direction of one layer over one sample's valid steps.

    Parameters
    ----------
    cell : str
    params : CellParams
    inputs : list of ndarray
        The input vector at each valid time index.
    state : tuple of ndarray
        Initial state.
    reverse : bool
    nonlinearity : str
    truncate : int or None
        Where the borders are (only used with ``border_states``/``crossing``).
    border_states : dict or None
        If given, the state crossing each border is replaced by
        ``border_states[key + (t,)]`` (the surrogate forward pass).
    crossing : dict or None
        If given, the live state crossing each border is stored in
        ``crossing[key + (t,)]``.
    key : tuple
        ``(b, layer, direction)``.

    Returns
    -------
    DirectionTrace
    """
    length = len(inputs)
    outputs = [None] * length
    caches = [None] * length
    for t in processing_order(length, reverse):
        if crosses_border(t, length, reverse, truncate):
            if crossing is not None:
                crossing[key + (t,)] = tuple(v.copy() for v in state)
            if border_states is not None:
                state = tuple(np.array(v, dtype=np.float64) for v in border_states[key + (t,)])
        state, caches[t] = cell_step(cell, params, inputs[t], state, nonlinearity)
        outputs[t] = state[0]
    return DirectionTrace(params, outputs, caches, state)


def _forward_sample(weights, x, b, cell, hidden_sizes, bidirectional, nonlinearity,
                    state, truncate=None, border_states=None, crossing=None):
    """Forward pass of all layers for one sample over its valid steps.

    Parameters
    ----------
    weights : dict
    x : ndarray of shape (len_b, D)
        The sample's valid steps only.
    b : int
        Index of the sample (for ``state`` and border keys).
    cell, hidden_sizes, bidirectional, nonlinearity
        Network description.
    state : None or list
        Initial state in the user format.
    truncate, border_states, crossing
        See :func:`_run_direction`.

    Returns
    -------
    list of LayerTrace
        One per layer, bottom first.
    """
    inputs = [x[t] for t in range(len(x))]
    layers = []
    for layer, hidden in enumerate(hidden_sizes):
        directions = []
        for direction in range(n_directions(bidirectional)):
            init = _initial_state(state, cell, hidden, layer, direction, b)
            directions.append(
                _run_direction(
                    cell, cell_params(weights, layer, direction), inputs, init,
                    reverse=direction == 1, nonlinearity=nonlinearity,
                    truncate=truncate, border_states=border_states,
                    crossing=crossing, key=(b, layer, direction),
                )
            )
        # Layer output at step t: [h_fwd_t, h_rev_t].
        outputs = [
            np.concatenate([d.outputs[t] for d in directions]) for t in range(len(inputs))
        ]
        layers.append(LayerTrace(inputs, directions, outputs))
        inputs = outputs
    return layers


def _last_features(layers):
    """Head input of output mode "last": each top direction's final ``h``.

    The forward direction ends after step len_b - 1, the reverse one after
    step 0, so this is PyTorch's ``h_n`` of the top layer.
    """
    return np.concatenate([d.final[0] for d in layers[-1].directions])


def _check_inputs(X, lengths, cell, output):
    """Validate shapes and options; return lengths as a list of int."""
    if cell not in N_GATES:
        raise ValueError(f"unknown cell {cell!r}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output mode {output!r}")
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError("X must have shape (B, T, D)")
    lengths = [int(n) for n in np.asarray(lengths).reshape(-1)]
    if len(lengths) != X.shape[0]:
        raise ValueError("lengths must have one entry per sample")
    if any(n < 1 or n > X.shape[1] for n in lengths):
        raise ValueError("every length must lie in [1, T]")
    return lengths


def _forward_batch(weights, X, lengths, cell, hidden_sizes, bidirectional, nonlinearity,
                   output, state, truncate=None, border_states=None, crossing=None):
    """Forward pass of the whole batch, sample by sample.

    Returns
    -------
    Y : ndarray
        (B, O) for "last", (B, T, O) for "sequence" (0 at padded steps).
    final_state : list
        In the user state format.
    traces : list of list of LayerTrace
        ``traces[b]`` is the trace of sample ``b``.
    """
    X = np.asarray(X, dtype=np.float64)
    lengths = _check_inputs(X, lengths, cell, output)
    hidden_sizes = tuple(hidden_sizes)
    batch, n_steps, _ = X.shape
    W, bias = weights["head.weight"], weights["head.bias"]
    ndir = n_directions(bidirectional)

    if output == "last":
        Y = np.zeros((batch, W.shape[0]))
    else:
        Y = np.zeros((batch, n_steps, W.shape[0]))
    final = [
        [np.zeros((ndir, batch, hidden)) for _ in range(N_STATE[cell])]
        for hidden in hidden_sizes
    ]
    traces = []
    for b in range(batch):
        layers = _forward_sample(
            weights, X[b, : lengths[b]], b, cell, hidden_sizes, bidirectional,
            nonlinearity, state, truncate, border_states, crossing,
        )
        traces.append(layers)
        if output == "last":
            Y[b] = W @ _last_features(layers) + bias
        else:
            for t, h in enumerate(layers[-1].outputs):
                Y[b, t] = W @ h + bias
        for layer, trace in enumerate(layers):
            for direction, d in enumerate(trace.directions):
                for k, v in enumerate(d.final):
                    final[layer][k][direction, b] = v
    final_state = [tuple(f) if cell == "lstm" else f[0] for f in final]
    return Y, final_state, traces


def naive_forward(weights, X, lengths, cell, hidden_sizes, bidirectional=False,
                  nonlinearity="tanh", output="last", state=None):
    """Forward pass of the network and its linear head.

    Parameters
    ----------
    weights : dict of str to ndarray
        PyTorch's names, see :func:`init_weights`.
    X : ndarray of shape (B, T, D)
    lengths : array_like of int, shape (B,)
        Valid steps of each sample, in [1, T].
    cell : {"rnn", "lstm", "gru"}
    hidden_sizes : sequence of int
    bidirectional : bool, default=False
    nonlinearity : {"tanh", "relu"}, default="tanh"
        Activation of ``"rnn"``.
    output : {"last", "sequence"}, default="last"
    state : None or list, default=None
        Initial state: None for zeros, else per layer an array (ndir, B, H_l),
        or for ``"lstm"`` a tuple ``(h, c)`` of two such arrays.

    Returns
    -------
    Y : ndarray
        (B, O) for "last"; (B, T, O) for "sequence", exactly 0 at padded steps.
    final_state : list
        Same format as ``state``: forward direction after step len_b - 1,
        reverse direction after processing step 0.
    """
    Y, final_state, _ = _forward_batch(
        weights, X, lengths, cell, hidden_sizes, bidirectional, nonlinearity, output, state
    )
    return Y, final_state


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def target_positions(lengths, output, loss_start=0):
    """Index tuples of the target positions.

    Parameters
    ----------
    lengths : sequence of int
    output : {"last", "sequence"}
    loss_start : int, default=0
        Steps before it carry no target (for "last", a sample whose last
        step is before it has none).

    Returns
    -------
    list of tuple
        ``(b,)`` per sample for "last"; ``(b, t)`` per valid step for
        "sequence".  ``Y[p]`` is then the output vector at position ``p``.
    """
    if output == "last":
        return [(b,) for b, n in enumerate(lengths) if n - 1 >= loss_start]
    return [(b, t) for b, n in enumerate(lengths) for t in range(loss_start, n)]


def position_loss(loss, yhat, target):
    """Unweighted loss of one position and its gradient w.r.t. the output.

    Parameters
    ----------
    loss : {"mse", "binary_cross_entropy", "cross_entropy"}
    yhat : ndarray of shape (O,)
        Output (logits for the two cross entropies).
    target : ndarray of shape (O,) or int
        Class index for "cross_entropy".

    Returns
    -------
    value : float
        For "mse" and "binary_cross_entropy" the *mean* over the O outputs,
        so that the weighted mean over positions has O in its denominator.
    grad : ndarray of shape (O,)
    """
    n_out = yhat.shape[0]
    if loss == "mse":
        diff = yhat - target
        return np.sum(diff**2) / n_out, 2.0 * diff / n_out
    if loss == "binary_cross_entropy":
        # Stable form of -y log sigmoid(x) - (1 - y) log(1 - sigmoid(x)).
        value = np.maximum(yhat, 0.0) - yhat * target + np.log1p(np.exp(-np.abs(yhat)))
        return np.sum(value) / n_out, (sigmoid(yhat) - target) / n_out
    if loss == "cross_entropy":
        k = int(target)
        shift = np.max(yhat)  # logsumexp without overflow
        lse = shift + np.log(np.sum(np.exp(yhat - shift)))
        grad = np.exp(yhat - lse)  # softmax
        grad[k] -= 1.0
        return lse - yhat[k], grad
    raise ValueError(f"unknown loss {loss!r}")


def loss_and_output_grad(Y, y, lengths, output, loss, sample_weight=None, loss_start=0):
    """Weighted mean loss over the target positions, and d loss / d Y.

    ``loss = sum_p w_p * loss_p / sum_p w_p``, where a position of sample b
    has weight ``w_b`` and ``loss_p`` is :func:`position_loss`.

    Parameters
    ----------
    Y : ndarray
        Network output, (B, O) or (B, T, O).
    y : ndarray
        Targets: same shape as Y, or without the O axis for "cross_entropy"
        (entries at padded steps are ignored).
    lengths : sequence of int
    output : {"last", "sequence"}
    loss : {"mse", "binary_cross_entropy", "cross_entropy"}
    sample_weight : None or array_like of shape (B,)
    loss_start : int, default=0
        See :func:`target_positions`.

    Returns
    -------
    value : float
    dY : ndarray
        Same shape as Y, 0 at padded steps.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}")
    lengths = [int(n) for n in lengths]
    if sample_weight is None:
        sample_weight = np.ones(len(lengths))
    sample_weight = np.asarray(sample_weight, dtype=np.float64)
    y = np.asarray(y)
    positions = target_positions(lengths, output, loss_start)
    normaliser = sum(sample_weight[p[0]] for p in positions)
    value = 0.0
    dY = np.zeros_like(Y)
    for p in positions:
        w = sample_weight[p[0]] / normaliser
        v, g = position_loss(loss, Y[p], y[p])
        value += w * v
        dY[p] = w * g
    return float(value), dY


def naive_loss(weights, X, y, lengths, cell, hidden_sizes, bidirectional=False,
               nonlinearity="tanh", output="last", loss="mse", sample_weight=None,
               state=None):
    """Loss of the network on a batch.

    Parameters
    ----------
    weights, X, lengths, cell, hidden_sizes, bidirectional, nonlinearity, output, state
        See :func:`naive_forward`.
    y : ndarray
        Targets, see :func:`loss_and_output_grad`.
    loss : {"mse", "binary_cross_entropy", "cross_entropy"}, default="mse"
    sample_weight : None or array_like of shape (B,), default=None
        None means unit weights.

    Returns
    -------
    float
    """
    Y, _ = naive_forward(weights, X, lengths, cell, hidden_sizes, bidirectional,
                         nonlinearity, output, state)
    return loss_and_output_grad(Y, y, _check_inputs(X, lengths, cell, output),
                                output, loss, sample_weight)[0]


# ---------------------------------------------------------------------------
# Backward pass (BPTT)
# ---------------------------------------------------------------------------


def _backward_direction(cell, trace, d_outputs, d_final, reverse, nonlinearity,
                        truncate, grads, names, d_inputs):
    """Backpropagate through one direction of one layer of one sample.

    Parameters
    ----------
    cell : str
    trace : DirectionTrace
    d_outputs : list of ndarray
        d loss / d (this direction's output h at time t), from the layer above
        or the head.  Not including the recurrent path.
    d_final : tuple of ndarray
        d loss / d (state after the last processed step), from the head.
    reverse : bool
    nonlinearity : str
    truncate : int or None
    grads : dict
        Weight gradients, accumulated into (``names`` gives the keys).
    names : CellParams
    d_inputs : list of ndarray
        d loss / d (layer input at time t), accumulated into.
    """
    length = len(trace.outputs)
    d_state = d_final
    # Walk the steps in the reverse of their processing order.
    for t in reversed(processing_order(length, reverse)):
        # The output h at t is the first component of the state after step t.
        d_state = (d_state[0] + d_outputs[t],) + d_state[1:]
        dx, d_state, dparams = cell_step_backward(
            cell, trace.params, trace.caches[t], d_state, nonlinearity
        )
        for name, g in zip(names, dparams):
            grads[name] += g
        d_inputs[t] += dx
        # Truncation: the state that entered step t across a border is a
        # constant of the surrogate, so no gradient flows further back.
        if crosses_border(t, length, reverse, truncate):
            d_state = tuple(np.zeros_like(v) for v in d_state)


def _backward_sample(layers, d_top_outputs, d_top_final, cell, hidden_sizes,
                     nonlinearity, truncate, grads):
    """Backpropagate through all layers of one sample.

    Parameters
    ----------
    layers : list of LayerTrace
    d_top_outputs : list of ndarray
        d loss / d (top layer output at t), width H_top * ndir.
    d_top_final : list of tuple
        Per direction, d loss / d (final state of the top layer).
    cell, hidden_sizes, nonlinearity, truncate
    grads : dict
        Accumulated into.

    Returns
    -------
    list of ndarray
        d loss / d x_t for each valid step.
    """
    d_outputs = d_top_outputs
    d_finals = d_top_final
    for layer in reversed(range(len(layers))):
        trace = layers[layer]
        hidden = hidden_sizes[layer]
        d_inputs = [np.zeros_like(x) for x in trace.inputs]
        for direction, d in enumerate(trace.directions):
            # This direction's slice of the concatenated layer output.
            own = [g[direction * hidden:(direction + 1) * hidden] for g in d_outputs]
            _backward_direction(
                cell, d, own, d_finals[direction], direction == 1, nonlinearity,
                truncate, grads, param_names(layer, direction), d_inputs,
            )
        d_outputs = d_inputs
        # Final states of lower layers do not reach the loss.
        d_finals = [_zero_state(cell, hidden_sizes[layer - 1])] * len(trace.directions)
    return d_outputs


def naive_loss_and_grad(weights, X, y, lengths, cell, hidden_sizes, bidirectional=False,
                        nonlinearity="tanh", output="last", loss="mse",
                        sample_weight=None, state=None, truncate=None, loss_start=0):
    """Loss and its gradient by hand-written backpropagation through time.

    Parameters
    ----------
    weights, X, y, lengths, cell, hidden_sizes, bidirectional, nonlinearity,
    output, loss, sample_weight, state
        See :func:`naive_loss`.
    loss_start : int, default=0
        Steps before it carry no loss (see :func:`target_positions`).
    truncate : int or None, default=None
        None for full BPTT.  Otherwise the gradient through the recurrent
        state is cut across every border ``t % truncate == 0`` (see
        :func:`crosses_border`), in every layer and both directions; the
        forward pass and the loss are unchanged.

    Returns
    -------
    loss : float
    grads : dict of str to ndarray
        Same keys and shapes as ``weights``.
    dX : ndarray of shape (B, T, D)
        d loss / d X, 0 at padded steps.
    """
    if truncate is not None and truncate < 1:
        raise ValueError("truncate must be None or >= 1")
    X = np.asarray(X, dtype=np.float64)
    hidden_sizes = tuple(hidden_sizes)
    Y, _, traces = _forward_batch(
        weights, X, lengths, cell, hidden_sizes, bidirectional, nonlinearity, output, state
    )
    lengths = _check_inputs(X, lengths, cell, output)
    value, dY = loss_and_output_grad(Y, y, lengths, output, loss, sample_weight, loss_start)

    grads = {name: np.zeros_like(w, dtype=np.float64) for name, w in weights.items()}
    dX = np.zeros_like(X)
    W = weights["head.weight"]
    top = hidden_sizes[-1]
    for b, layers in enumerate(traces):
        n_steps = lengths[b]
        d_top_outputs = [np.zeros(top * len(layers[-1].directions)) for _ in range(n_steps)]
        d_top_final = [_zero_state(cell, top) for _ in layers[-1].directions]
        # Head: Y = W feat + bias, at one feature vector or at every valid step.
        if output == "last":
            feat = _last_features(layers)
            grads["head.weight"] += np.outer(dY[b], feat)
            grads["head.bias"] += dY[b]
            d_feat = W.T @ dY[b]
            for direction in range(len(layers[-1].directions)):
                d_h = d_feat[direction * top:(direction + 1) * top]
                d_top_final[direction] = (d_h,) + d_top_final[direction][1:]
        else:
            for t in range(n_steps):
                grads["head.weight"] += np.outer(dY[b, t], layers[-1].outputs[t])
                grads["head.bias"] += dY[b, t]
                d_top_outputs[t] = W.T @ dY[b, t]
        d_x = _backward_sample(layers, d_top_outputs, d_top_final, cell, hidden_sizes,
                               nonlinearity, truncate, grads)
        for t in range(n_steps):
            dX[b, t] = d_x[t]
    return value, grads, dX


# ---------------------------------------------------------------------------
# Truncated-BPTT surrogate
# ---------------------------------------------------------------------------


def record_border_states(weights, X, lengths, cell, hidden_sizes, bidirectional=False,
                         nonlinearity="tanh", state=None, *, truncate):
    """States crossing the truncation borders in an unperturbed forward pass.

    Parameters
    ----------
    weights, X, lengths, cell, hidden_sizes, bidirectional, nonlinearity, state
        See :func:`naive_forward`.
    truncate : int
        Truncation length k.

    Returns
    -------
    dict
        ``{(b, layer, direction, t): state_tuple}`` where ``t`` is the time
        index of the step that *receives* the state (see
        :func:`crosses_border`) and ``state_tuple`` is ``(h,)`` or ``(h, c)``
        (copies).  Pass it to :func:`surrogate_loss`.
    """
    crossing = {}
    _forward_batch(weights, X, lengths, cell, hidden_sizes, bidirectional, nonlinearity,
                   "last", state, truncate=truncate, crossing=crossing)
    return crossing


def surrogate_loss(weights, X, y, lengths, cell, hidden_sizes, bidirectional=False,
                   nonlinearity="tanh", output="last", loss="mse", sample_weight=None,
                   state=None, *, truncate, border_states):
    """Loss with the state crossing each border replaced by a constant.

    The forward pass is run as usual except that, at every truncation border,
    the state handed across it is ``border_states[(b, layer, direction, t)]``
    instead of the live one.  With ``border_states`` from
    :func:`record_border_states` at the same weights and inputs this equals
    :func:`naive_loss`, and its exact gradient is the truncated gradient of
    :func:`naive_loss_and_grad` (``truncate`` the same), so central finite
    differences of it (with ``border_states`` held fixed) check that gradient.

    Parameters
    ----------
    weights, X, y, lengths, cell, hidden_sizes, bidirectional, nonlinearity,
    output, loss, sample_weight, state
        See :func:`naive_loss`.
    truncate : int
        Truncation length k.
    border_states : dict
        From :func:`record_border_states`.

    Returns
    -------
    float
    """
    Y, _, _ = _forward_batch(weights, X, lengths, cell, hidden_sizes, bidirectional,
                             nonlinearity, output, state, truncate=truncate,
                             border_states=border_states)
    return loss_and_output_grad(Y, y, _check_inputs(X, lengths, cell, output),
                                output, loss, sample_weight)[0]


# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------


def finite_difference_grad(f, arrays, eps=1e-6):
    """Central finite differences of a scalar function of arrays.

    Every element of every array is perturbed *in place* by ``+eps`` and
    ``-eps`` in turn and restored exactly afterwards, so ``f`` must read the
    arrays it depends on at call time (e.g. a closure over the same objects).

    Parameters
    ----------
    f : callable
        ``f() -> float``, called without arguments.
    arrays : dict of str to ndarray
        float64 arrays to differentiate w.r.t.  The same array object may
        appear under one key only (e.g. ``dict(weights, X=X)``).
    eps : float, default=1e-6

    Returns
    -------
    dict of str to ndarray
        ``(f(a + eps e_i) - f(a - eps e_i)) / (2 eps)`` for each element.
    """
    grads = {}
    for name, a in arrays.items():
        g = np.zeros(a.shape, dtype=np.float64)
        for index in np.ndindex(a.shape):
            original = a[index]
            a[index] = original + eps
            f_plus = f()
            a[index] = original - eps
            f_minus = f()
            a[index] = original
            g[index] = (f_plus - f_minus) / (2.0 * eps)
        grads[name] = g
    return grads
