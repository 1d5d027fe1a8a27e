"""Self-tests of the NumPy reference in ``naive.py``.

The reference is the oracle of the Numba kernels, so it is checked here
against things that do not share its code paths: finite differences of the
loss (full BPTT) and of the truncation surrogate (truncated BPTT), plain
re-statements of the losses, structural identities (chunking, padding,
reversal, sample-weight duplication) and, when installed, PyTorch.
"""

import itertools

import numpy as np
import pytest

try:
    import naive
except ModuleNotFoundError:  # if tests/ is ever made a package
    from tests import naive

#: (cell, nonlinearity) pairs: every cell, and both Elman activations.
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]

#: One layer, and two layers of different sizes.
HIDDEN = [(3,), (3, 2)]

#: Equal lengths (no padding), and mixed lengths (the longest sample last),
#: with T = 4.  Two samples and four steps keep the finite differences of the
#: whole matrix to a few seconds.
N_STEPS = 4
LENGTHS = {"equal": [4, 4], "mixed": [2, 4]}

#: Central differences with eps = 1e-5 leave errors around 1e-8 relative to
#: the largest entry of each gradient array (the bottom LSTM layer's
#: gradients are ~1e-4, where eps = 1e-6 would be dominated by rounding).
EPS = 1e-5
TOL = 1e-6


# ---------------------------------------------------------------------------
# Problem construction
# ---------------------------------------------------------------------------


class Problem:
    """A random network, batch and targets, with the keyword arguments of the
    reference's loss functions ready to splat."""

    def __init__(self, cell, hidden_sizes, lengths, *, nonlinearity="tanh",
                 bidirectional=False, output="last", loss="mse", n_steps=5,
                 n_features=2, weighted=False, with_state=False, seed=0):
        rng = np.random.default_rng(seed)
        self.lengths = np.asarray(lengths)
        batch = len(lengths)
        n_outputs = 3 if loss == "cross_entropy" else 2
        self.weights = naive.init_weights(n_features, hidden_sizes, cell, n_outputs,
                                          bidirectional, rng)
        self.X = rng.normal(size=(batch, n_steps, n_features))
        self.y = make_targets(rng, loss, output, batch, n_steps, n_outputs)
        ndir = 2 if bidirectional else 1
        state = None
        if with_state:
            state = []
            for hidden in hidden_sizes:
                parts = [rng.normal(scale=0.5, size=(ndir, batch, hidden))
                         for _ in range(naive.N_STATE[cell])]
                state.append(tuple(parts) if cell == "lstm" else parts[0])
        self.net = dict(cell=cell, hidden_sizes=tuple(hidden_sizes),
                        bidirectional=bidirectional, nonlinearity=nonlinearity)
        self.objective = dict(output=output, loss=loss,
                              sample_weight=rng.uniform(0.5, 2.0, batch) if weighted else None,
                              state=state)

    def loss(self, **extra):
        """:func:`naive.naive_loss` of the problem."""
        return naive.naive_loss(self.weights, self.X, self.y, self.lengths,
                                **self.net, **self.objective, **extra)

    def loss_and_grad(self, **extra):
        """:func:`naive.naive_loss_and_grad` of the problem."""
        return naive.naive_loss_and_grad(self.weights, self.X, self.y, self.lengths,
                                         **self.net, **self.objective, **extra)

    def forward(self):
        """:func:`naive.naive_forward` of the problem: ``(Y, final_state)``."""
        return naive.naive_forward(self.weights, self.X, self.lengths, **self.net,
                                   output=self.objective["output"],
                                   state=self.objective["state"])

    def arrays(self):
        """Every array the loss is differentiated w.r.t. (same objects)."""
        return dict(self.weights, X=self.X)


def make_targets(rng, loss, output, batch, n_steps, n_outputs):
    """Random targets of the right kind and shape for ``loss`` and ``output``."""
    lead = (batch,) if output == "last" else (batch, n_steps)
    if loss == "cross_entropy":
        return rng.integers(0, n_outputs, size=lead)
    if loss == "binary_cross_entropy":
        return rng.uniform(0.0, 1.0, size=lead + (n_outputs,))
    return rng.normal(size=lead + (n_outputs,))


def identity_head(weights, width):
    """Make the head the identity so that Y is the top layer's raw output."""
    weights["head.weight"] = np.eye(width)
    weights["head.bias"] = np.zeros(width)


def assert_grads_close(grads, dX, fd, tol=TOL):
    """Compare analytic and finite-difference gradients array by array."""
    analytic = dict(grads, X=dX)
    assert analytic.keys() == fd.keys()
    for name in fd:
        err = naive.max_relative_error(analytic[name], fd[name])
        assert err < tol, f"{name}: relative error {err:.2e}"


def assert_states_equal(a, b, cell):
    """Equality (to rounding) of two states in the user format."""
    assert len(a) == len(b)
    for layer_a, layer_b in zip(a, b):
        parts_a = layer_a if cell == "lstm" else (layer_a,)
        parts_b = layer_b if cell == "lstm" else (layer_b,)
        for pa, pb in zip(parts_a, parts_b):
            np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------
# Full BPTT against finite differences
# ---------------------------------------------------------------------------


def _gradient_cases():
    """Every cell x depth x direction x output x lengths; the loss, sample
    weights and initial state rotate with the case index so that each
    appears with every cell (3 and 4 are coprime, so all 12 combinations of
    loss and (weighted, with_state) occur)."""
    combos = itertools.product(CELLS, HIDDEN, (False, True), naive.OUTPUTS, LENGTHS)
    for i, ((cell, act), hidden, bi, output, lengths) in enumerate(combos):
        loss = naive.LOSSES[i % 3]
        weighted, with_state = bool(i % 2), bool((i // 2) % 2)
        case_id = (f"{cell}-{act}-L{len(hidden)}-{'bi' if bi else 'uni'}-{output}-"
                   f"{lengths}-{loss}{'-w' if weighted else ''}{'-h0' if with_state else ''}")
        yield pytest.param(cell, act, hidden, bi, output, lengths, loss, weighted,
                           with_state, id=case_id)


@pytest.mark.parametrize(
    "cell, act, hidden, bi, output, lengths, loss, weighted, with_state",
    list(_gradient_cases()),
)
def test_gradient_matches_finite_differences(cell, act, hidden, bi, output, lengths,
                                             loss, weighted, with_state):
    p = Problem(cell, hidden, LENGTHS[lengths], nonlinearity=act, bidirectional=bi,
                output=output, loss=loss, weighted=weighted, with_state=with_state,
                n_steps=N_STEPS, seed=len(hidden) + 2 * bi)
    value, grads, dX = p.loss_and_grad()
    assert value == p.loss()
    # Every weight influences the loss here, so an all-zero gradient would
    # make the comparison vacuous (e.g. a dead relu network).
    for name, g in grads.items():
        assert np.any(g != 0.0), name
    fd = naive.finite_difference_grad(p.loss, p.arrays(), eps=EPS)
    assert_grads_close(grads, dX, fd)


def test_finite_difference_grad_restores_arrays():
    a = np.array([[1.0, -2.0], [0.5, 3.0]])
    before = a.copy()
    fd = naive.finite_difference_grad(lambda: float(np.sum(a**3)), {"a": a})
    assert np.array_equal(a, before)
    np.testing.assert_allclose(fd["a"], 3 * before**2, rtol=1e-8)


# ---------------------------------------------------------------------------
# Truncated BPTT
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 5, 6, 7])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_borders_follow_the_definition(length, k):
    # Spec: the edge between steps t - 1 and t is cut when t % k == 0.  The
    # forward direction receives it at step t, the reverse one at t - 1.
    cut_edges = [t for t in range(1, length) if t % k == 0]
    forward = [t for t in range(length) if naive.crosses_border(t, length, False, k)]
    reverse = [t for t in range(length) if naive.crosses_border(t, length, True, k)]
    assert forward == cut_edges
    assert reverse == [t - 1 for t in cut_edges]
    assert not any(naive.crosses_border(t, length, r, None)
                   for t in range(length) for r in (False, True))


def _truncation_cases():
    # Small equal sizes here: unequal ones are covered by the full-BPTT matrix.
    combos = itertools.product(["lstm", "gru", "rnn"], [(2,), (2, 2)], (False, True), (2, 3))
    for i, (cell, hidden, bi, k) in enumerate(combos):
        output = naive.OUTPUTS[i % 2]
        loss = naive.LOSSES[i % 3]
        yield pytest.param(cell, hidden, bi, k, output, loss,
                           id=f"{cell}-L{len(hidden)}-{'bi' if bi else 'uni'}-k{k}-{output}-{loss}")


@pytest.mark.parametrize("cell, hidden, bi, k, output, loss", list(_truncation_cases()))
def test_truncated_gradient_matches_surrogate(cell, hidden, bi, k, output, loss):
    # The short sample has a border for k = 2 only; the long one fills T = 6.
    p = Problem(cell, hidden, [3, 6], bidirectional=bi, output=output, loss=loss,
                n_steps=6, weighted=True, with_state=(k == 3), seed=k)
    borders = naive.record_border_states(p.weights, p.X, p.lengths, **p.net,
                                         state=p.objective["state"], truncate=k)
    ndir = 2 if bi else 1
    per_direction = sum(len([t for t in range(1, n) if t % k == 0]) for n in p.lengths)
    assert len(borders) == per_direction * ndir * len(hidden)

    def surrogate():
        return naive.surrogate_loss(p.weights, p.X, p.y, p.lengths, **p.net,
                                    **p.objective, truncate=k, border_states=borders)

    value, grads, dX = p.loss_and_grad(truncate=k)
    assert value == p.loss()
    assert surrogate() == pytest.approx(value, rel=1e-14, abs=0)
    fd = naive.finite_difference_grad(surrogate, p.arrays(), eps=EPS)
    assert_grads_close(grads, dX, fd)
    # The cut must matter, or this test would not distinguish it from full BPTT.
    _, full, _ = p.loss_and_grad()
    assert naive.max_relative_error(grads["weight_hh_l0"], full["weight_hh_l0"]) > 1e-3


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("output", naive.OUTPUTS)
def test_truncate_at_least_T_is_full_bptt(cell, output):
    p = Problem(cell, (3, 2), [5, 2, 4], bidirectional=True, output=output,
                weighted=True, with_state=True)
    value, grads, dX = p.loss_and_grad()
    for k in (5, 9):
        value_k, grads_k, dX_k = p.loss_and_grad(truncate=k)
        assert value_k == value
        assert np.array_equal(dX_k, dX)
        for name in grads:
            assert np.array_equal(grads_k[name], grads[name]), name


# ---------------------------------------------------------------------------
# Structural identities
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell, act", CELLS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_chunked_stateful_forward(cell, act, hidden):
    p = Problem(cell, hidden, [5, 5, 5], nonlinearity=act, output="sequence",
                with_state=True)
    Y, final = p.forward()
    state = p.objective["state"]
    Y1, mid = naive.naive_forward(p.weights, p.X[:, :3], [3, 3, 3], **p.net,
                                  output="sequence", state=state)
    Y2, end = naive.naive_forward(p.weights, p.X[:, 3:], [2, 2, 2], **p.net,
                                  output="sequence", state=mid)
    np.testing.assert_allclose(np.concatenate([Y1, Y2], axis=1), Y, rtol=0, atol=1e-14)
    assert_states_equal(end, final, cell)


@pytest.mark.parametrize("cell, act", CELLS)
@pytest.mark.parametrize("output", naive.OUTPUTS)
@pytest.mark.parametrize("truncate", [None, 2])
def test_padded_steps_are_inert(cell, act, output, truncate):
    loss = "cross_entropy" if cell == "gru" else "mse"
    p = Problem(cell, (3, 2), [5, 2, 4], nonlinearity=act, bidirectional=True,
                output=output, loss=loss, weighted=True, with_state=True)
    padded = np.arange(5)[None, :] >= p.lengths[:, None]  # (B, T)
    Y, final = p.forward()
    value, grads, dX = p.loss_and_grad(truncate=truncate)
    if output == "sequence":
        assert np.all(Y[padded] == 0.0)
    assert np.all(dX[padded] == 0.0)

    # Garbage in X and in the targets at padded steps changes nothing at all.
    p.X[padded] = np.random.default_rng(1).normal(scale=10.0, size=(padded.sum(), 2))
    if output == "sequence":
        p.y[padded] = -100 if loss == "cross_entropy" else np.nan
    Y_new, final_new = p.forward()
    value_new, grads_new, dX_new = p.loss_and_grad(truncate=truncate)
    assert np.array_equal(Y_new, Y)
    assert_states_equal(final_new, final, cell)
    assert value_new == value
    assert np.array_equal(dX_new, dX)
    for name in grads:
        assert np.array_equal(grads_new[name], grads[name]), name


def one_direction_of_one_sample(state, cell, direction, b):
    """Cut a user-format state down to one direction and one sample."""
    if cell == "lstm":
        return [tuple(part[direction:direction + 1, b:b + 1] for part in layer)
                for layer in state]
    return [layer[direction:direction + 1, b:b + 1] for layer in state]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_reverse_direction_is_forward_on_flipped_sample(cell):
    # PyTorch's packed semantics: the reverse direction of each sample starts
    # at its own last valid step, so it equals a forward pass over the
    # time-reversed valid part, with the reverse direction's weights.
    hidden, lengths = (3,), [5, 2, 4]
    bi = Problem(cell, hidden, lengths, bidirectional=True, output="sequence",
                 with_state=True)
    identity_head(bi.weights, 6)
    Y, final = bi.forward()
    uni_weights = {
        fwd: bi.weights[rev]
        for fwd, rev in zip(naive.param_names(0, 0), naive.param_names(0, 1))
    }
    identity_head(uni_weights, 3)
    for b, n in enumerate(lengths):
        Y_rev, final_rev = naive.naive_forward(
            uni_weights, bi.X[b:b + 1, :n][:, ::-1], [n], cell, hidden,
            output="sequence",
            state=one_direction_of_one_sample(bi.objective["state"], cell, 1, b),
        )
        np.testing.assert_allclose(Y[b, :n, 3:], Y_rev[0, ::-1], rtol=0, atol=1e-14)
        assert_states_equal(final_rev, one_direction_of_one_sample(final, cell, 1, b), cell)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", naive.LOSSES)
@pytest.mark.parametrize("output", naive.OUTPUTS)
def test_unweighted_loss_is_plain_mean(loss, output):
    lengths = [5, 2, 4]
    p = Problem("gru", (3,), lengths, output=output, loss=loss)
    Y, _ = p.forward()
    if output == "last":
        Yv, yv = Y, p.y
    else:  # flatten the valid positions only
        Yv = np.concatenate([Y[b, :n] for b, n in enumerate(lengths)])
        yv = np.concatenate([p.y[b, :n] for b, n in enumerate(lengths)])
    if loss == "mse":
        expected = np.mean((Yv - yv) ** 2)
    elif loss == "binary_cross_entropy":
        prob = 1.0 / (1.0 + np.exp(-Yv))
        expected = np.mean(-yv * np.log(prob) - (1.0 - yv) * np.log(1.0 - prob))
    else:
        log_softmax = Yv - np.log(np.sum(np.exp(Yv), axis=1, keepdims=True))
        expected = -np.mean(log_softmax[np.arange(len(yv)), yv])
    assert p.loss() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("loss", naive.LOSSES)
def test_integer_sample_weight_equals_duplicating_the_sample(loss):
    p = Problem("lstm", (2,), [5, 2, 4], output="sequence", loss=loss)
    weighted = naive.naive_loss_and_grad(p.weights, p.X, p.y, p.lengths, **p.net,
                                         output="sequence", loss=loss,
                                         sample_weight=[1.0, 2.0, 1.0])
    rows = [0, 1, 1, 2]
    duplicated = naive.naive_loss_and_grad(p.weights, p.X[rows], p.y[rows],
                                           p.lengths[rows], **p.net,
                                           output="sequence", loss=loss)
    assert weighted[0] == pytest.approx(duplicated[0], rel=1e-13)
    for name in weighted[1]:
        np.testing.assert_allclose(weighted[1][name], duplicated[1][name],
                                   rtol=1e-12, atol=1e-15)


def test_cross_entropy_is_stable_for_huge_logits():
    Y = np.array([[1000.0, -1000.0, 0.0]])
    value, dY = naive.loss_and_output_grad(Y, np.array([1]), [1], "last", "cross_entropy")
    assert value == pytest.approx(2000.0)
    np.testing.assert_allclose(dY, [[1.0, -1.0, 0.0]], rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------
# PyTorch cross-check (skipped without torch)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell, act", CELLS)
@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("hidden", [(3,), (3, 3)])
def test_matches_torch(cell, act, bi, hidden):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lengths = [5, 2, 4]
    ndir = 2 if bi else 1
    p = Problem(cell, hidden, lengths, nonlinearity=act, bidirectional=bi,
                output="sequence", with_state=True)
    identity_head(p.weights, hidden[-1] * ndir)
    Y, final = p.forward()

    kwargs = dict(input_size=2, hidden_size=hidden[0], num_layers=len(hidden),
                  batch_first=True, bidirectional=bi, dtype=torch.float64)
    if cell == "rnn":
        kwargs["nonlinearity"] = act
    net = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](**kwargs)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(torch.from_numpy(p.weights[name]))

    # Our state is per layer (ndir, B, H); torch stacks layer-major (L*ndir, B, H).
    def to_torch(state):
        if cell == "lstm":
            return tuple(torch.from_numpy(np.concatenate([s[k] for s in state]))
                         for k in range(2))
        return torch.from_numpy(np.concatenate(state))

    packed = pack_padded_sequence(torch.from_numpy(p.X), torch.tensor(lengths),
                                  batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, h_n = net(packed, to_torch(p.objective["state"]))
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=5)
    np.testing.assert_allclose(Y, out.numpy(), rtol=1e-12, atol=1e-12)
    expected = to_torch(final)
    if cell == "lstm":
        for ours, theirs in zip(expected, h_n):
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(expected.numpy(), h_n.numpy(), rtol=1e-12, atol=1e-12)
