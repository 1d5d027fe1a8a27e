"""Network against the NumPy reference, and its contract: state, truncation,
threads, dtypes, weights I/O, initialisation and errors."""

import itertools
import subprocess
import sys

import numba
import numpy as np
import pytest

import naive
from bptt_numba import Network, network, train
from bptt_numba._config import LARGE_WEIGHTS
from bptt_numba._kernels._recurrence import NARROW_GRADIENT
from problems import CELLS, make_problem, relative_error

MODELS = list(itertools.product(CELLS, [(4,), (3, 5)], [False, True]))
MODEL_IDS = [f"{c}-{nl}-{len(h)}L-{'bi' if b else 'uni'}" for (c, nl), h, b in MODELS]


def _model(net):
    return dict(
        cell=net.cell, hidden_sizes=net.hidden_sizes, bidirectional=net.bidirectional, nonlinearity=net.nonlinearity
    )


@pytest.mark.parametrize("cell_nl, hidden, bidirectional", MODELS, ids=MODEL_IDS)
@pytest.mark.parametrize("output", ["last", "sequence"])
def test_forward_and_gradients_match_reference(cell_nl, hidden, bidirectional, output):
    net, X, y, lengths, weights = make_problem(
        *cell_nl, hidden, bidirectional, output, "mse", [7, 3, 6, 1], n_samples=4, n_steps=7, n_features=3
    )
    rng = np.random.default_rng(1)
    n_state = 2 if net.cell == "lstm" else 1
    state = [
        tuple(rng.normal(size=(net.n_directions, 4, h)) for _ in range(n_state)) for h in hidden
    ]
    state = [s if n_state == 2 else s[0] for s in state]
    Y, final = net.forward(X, lengths, state=state, output=output)
    Y_ref, final_ref = naive.naive_forward(net.get_weights(), X, lengths, **_model(net), output=output, state=state)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(final, final_ref):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)

    for truncate in (None, 3):
        value, grads, _, _, input_grad, _ = net._backprop(
            X, y, lengths, "mse", output, truncate, state, weights, 0, 0.0, None, need_input_grad=True
        )
        value_ref, grads_ref, dX_ref = naive.naive_loss_and_grad(
            net.get_weights(), X, y, lengths, **_model(net), output=output, loss="mse",
            sample_weight=weights, state=state, truncate=truncate,
        )
        assert value == pytest.approx(value_ref, rel=1e-12)
        for name, expected in grads_ref.items():
            assert relative_error(net.unflatten(grads)[name], expected) < 1e-10, name
        assert relative_error(input_grad, dX_ref) < 1e-10


def test_weight_names_and_shapes_follow_pytorch():
    net = Network(5, (4, 3), cell="gru", n_outputs=2, bidirectional=True)
    shapes = {name: w.shape for name, w in net.get_weights().items()}
    assert shapes["weight_ih_l0"] == (12, 5)
    assert shapes["weight_hh_l0_reverse"] == (12, 4)
    assert shapes["weight_ih_l1"] == (9, 8)
    assert shapes["bias_hh_l1_reverse"] == (9,)
    assert shapes["head.weight"] == (2, 6)
    assert shapes["head.bias"] == (2,)
    assert sum(np.prod(s) for s in shapes.values()) == net.params.size
    # The named weights are views into the one flat vector.
    net.params[:] = 0.25
    assert all(np.all(w == 0.25) for w in net.get_weights().values())


def test_set_weights_round_trip_and_errors():
    net = Network(3, (4,), cell="lstm", random_state=0)
    other = Network(3, (4,), cell="lstm", random_state=1)
    other.set_weights(net.get_weights())
    np.testing.assert_array_equal(other.params, net.params)
    before = other.params.copy()
    bad = net.get_weights()
    bad["weight_hh_l0"] = np.zeros((16, 5))
    with pytest.raises(ValueError, match="weight_hh_l0.*shape"):
        other.set_weights(bad)
    bad = net.get_weights()
    bad["head.bias"] = np.array([np.nan])
    with pytest.raises(ValueError, match="head.bias.*NaN"):
        other.set_weights(bad)
    bad = net.get_weights()
    del bad["bias_ih_l0"]
    bad["bias_ih_l9"] = np.zeros(16)
    with pytest.raises(ValueError, match="missing.*bias_ih_l0.*unknown.*bias_ih_l9"):
        other.set_weights(bad)
    np.testing.assert_array_equal(other.params, before)  # nothing half-written


def test_initialisation():
    net = Network(6, (5,), cell="lstm", random_state=3)
    w = net.get_weights()
    for block in range(4):
        q = w["weight_hh_l0"][block * 5 : (block + 1) * 5]
        np.testing.assert_allclose(q @ q.T, np.eye(5), atol=1e-6)
    np.testing.assert_array_equal(w["bias_ih_l0"][5:10], 1.0)
    np.testing.assert_array_equal(np.delete(w["bias_ih_l0"], np.s_[5:10]), 0.0)
    np.testing.assert_array_equal(w["bias_hh_l0"], 0.0)
    limit = np.sqrt(6 / (20 + 6))
    assert np.abs(w["weight_ih_l0"]).max() <= limit
    np.testing.assert_array_equal(Network(6, (5,), random_state=3).params, net.params)
    assert not np.array_equal(Network(6, (5,), random_state=4).params, net.params)
    assert Network(6, (5,), cell="gru").get_weights()["bias_ih_l0"].max() == 0.0


def _assert_same_state(got, expected):
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        for a, b in zip(*(parts if isinstance(parts, tuple) else (parts,) for parts in (mine, theirs))):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell, bidirectional", [("lstm", False), ("gru", True), ("rnn", False)])
def test_final_state_alone_is_forwards_and_a_valid_batch_is_a_checked_one(cell, bidirectional):
    net, X, _, lengths, _ = make_problem(cell, hidden_sizes=(3, 2), bidirectional=bidirectional, lengths=[5, 2, 4])
    lengths = np.asarray(lengths, dtype=np.int64)
    _, state = net.forward(X[:, :3], np.minimum(lengths, 3))
    for initial in (None, state):
        _, expected = net.forward(X, lengths, initial)
        _assert_same_state(net._final_state(net._batch(X, lengths, initial, "sequence")), expected)
        # The unchecked batch of a strided window, as `Trainer` makes it.
        window, window_lengths = X[:, 1:4], np.minimum(lengths - 1, 3)
        checked = net._batch(window, window_lengths, initial, "sequence")
        unchecked = net._valid_batch(window, window_lengths, initial)
        for a, b in zip(checked, unchecked):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
            elif a is not None and isinstance(a, list):
                _assert_same_state([p for layer in a for p in layer], [p for layer in b for p in layer])
            else:
                assert a == b


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_truncate_at_least_length_is_full_bptt(cell):
    net, X, y, lengths, _ = make_problem(cell, n_steps=6, lengths=[6, 4, 2])
    full = net.loss_and_grad_vector(X, y, lengths)
    for truncate in (6, 50):
        cut = net.loss_and_grad_vector(X, y, lengths, truncate=truncate)
        assert cut[0] == full[0]
        np.testing.assert_array_equal(cut[1], full[1])
    # and a real window changes the gradient but not the loss
    cut = net.loss_and_grad_vector(X, y, lengths, truncate=2)
    assert cut[0] == pytest.approx(full[0], rel=1e-14)
    assert not np.allclose(cut[1], full[1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunked_stateful_forward_equals_whole_sequence(cell):
    net, X, _, _, _ = make_problem(cell, hidden_sizes=(4, 3), n_steps=9)
    lengths = np.array([9, 9, 9])
    Y, final = net.forward(X, output="sequence")
    state, pieces = None, []
    for t0, t1 in [(0, 4), (4, 5), (5, 9)]:
        Y_part, state = net.forward(X[:, t0:t1], state=state, output="sequence")
        pieces.append(Y_part)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), Y, rtol=1e-13, atol=1e-13)
    for a, b in zip(state, final):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-13)
    # Same for "last": the last chunk's outputs are the whole-sequence ones.
    Y_last, _ = net.forward(X[:, 5:], state=net.forward(X[:, :5], lengths=lengths - 4)[1], output="last")
    np.testing.assert_allclose(Y_last, net.forward(X)[0], rtol=1e-13)


def test_truncated_backward_holds_one_window_of_activations(monkeypatch):
    net, X, y, lengths, _ = make_problem("lstm", n_steps=10, lengths=[10, 7, 3])
    seen = []
    original = Network._forward_layers

    def recording(self, x, *args):
        seen.append(x.shape[1])  # (chunks, time, chunk, features)
        return original(self, x, *args)

    monkeypatch.setattr(Network, "_forward_layers", recording)
    net.loss_and_grad_vector(X, y, lengths, truncate=4)
    assert seen == [4, 4, 2]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_results_do_not_depend_on_thread_count(cell):
    net, X, y, lengths, weights = make_problem(
        cell, hidden_sizes=(16, 8), bidirectional=True, n_samples=37, n_steps=12, lengths=None
    )
    lengths = np.random.default_rng(0).integers(1, 13, size=37)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = net.loss_and_grad_vector(X, y, lengths, sample_weight=weights)
        numba.set_num_threads(2)
        two = net.loss_and_grad_vector(X, y, lengths, sample_weight=weights)
        again = net.loss_and_grad_vector(X, y, lengths, sample_weight=weights)
    finally:
        numba.set_num_threads(previous)
    assert relative_error(one[1], two[1]) < 1e-10
    assert one[0] == pytest.approx(two[0], rel=1e-10)
    np.testing.assert_array_equal(two[1], again[1])  # run to run: identical
    assert two[0] == again[0]


@pytest.mark.parametrize("cell, hidden", [("lstm", 24), ("gru", 24), ("rnn", 24), ("lstm", 300)])
def test_a_prediction_does_not_depend_on_the_rest_of_the_batch(cell, hidden):
    """Bitwise, in float32, for small weights: BLAS rounds a row of a product
    by its position in a call, which would make a sample's output depend on
    its batch-mates (scikit-learn checks this).  H=300 takes the plan for
    large weights, whose input projection is a whole-batch BLAS product
    split by rows: equal up to rounding there."""
    net = Network(8, (hidden,), cell=cell, random_state=0)
    X = np.random.default_rng(0).standard_normal((40, 5, 8)).astype(np.float32)
    order = np.random.default_rng(1).permutation(40)
    Y = net.forward(X)[0]
    exact = net.get_weights()["weight_hh_l0"].nbytes <= LARGE_WEIGHTS
    check = np.testing.assert_array_equal if exact else (lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5))
    check(net.forward(X[order])[0], Y[order])
    check(net.forward(X[13:30])[0], Y[13:30])
    check(net.forward(X[5:6])[0], Y[5:6])


def test_inference_reuses_its_buffers_up_to_a_cap(monkeypatch):
    """Predictions of several batch sizes share one set of buffers (grown,
    not kept per shape), give what fresh buffers give, and a pass whose
    buffers pass the cap leaves none behind."""
    import bptt_numba.network as network_module
    from bptt_numba._kernels import layers

    net = Network(4, (32, 16), cell="lstm", random_state=0)
    X = np.random.default_rng(0).standard_normal((64, 40, 4)).astype(np.float32)
    expected = {n: net.forward(X[:n], output="sequence")[0] for n in (40, 64)}
    fresh = Network(4, (32, 16), cell="lstm", random_state=0)
    fresh._workspace = dict  # a new, empty workspace at every call
    workspace = net._workspace()
    sizes = [buffer.size for buffer in workspace.values()]
    assert sizes and max(sizes) * 4 >= layers.REUSED_BUFFERS
    assert all(buffer.ctypes.data % 32 == 0 for buffer in workspace.values())  # for the kernels' vectors
    kept = {key: id(buffer) for key, buffer in workspace.items()}
    for n in (40, 64, 17):
        np.testing.assert_array_equal(net.forward(X[:n], output="sequence")[0], fresh.forward(X[:n], output="sequence")[0])
    np.testing.assert_array_equal(expected[40], fresh.forward(X[:40], output="sequence")[0])
    assert {key: id(buffer) for key, buffer in net._workspace().items()} == kept
    monkeypatch.setattr(network_module, "INFERENCE_SCRATCH", 0)
    np.testing.assert_array_equal(net.forward(X, output="sequence")[0], expected[64])
    assert not net._workspace()
    train(net, X, np.zeros((64, 1), np.float32), max_iter=1, batch_size=64)
    assert not net._workspace()  # nor does a fit


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float32_agrees_with_float64(cell):
    net64, X, y, lengths, _ = make_problem(cell, hidden_sizes=(8,), n_steps=10, lengths=[10, 6, 9])
    net32 = Network(2, (8,), cell=cell, n_outputs=2, dtype="float32")
    net32.set_weights(net64.get_weights())
    Y64, _ = net64.forward(X, lengths, output="sequence")
    Y32, _ = net32.forward(X, lengths, output="sequence")
    assert Y32.dtype == np.float32
    np.testing.assert_allclose(Y32, Y64, rtol=1e-4, atol=1e-5)
    loss64, g64, _ = net64.loss_and_grad_vector(X, y, lengths)
    loss32, g32, _ = net32.loss_and_grad_vector(X, y, lengths)
    assert g32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    assert relative_error(g32, g64) < 1e-4


def test_padded_steps_change_nothing():
    net, X, y, lengths, _ = make_problem("gru", bidirectional=True, output="sequence", lengths=[5, 2, 3])
    mask = np.arange(5)[None, :] >= lengths[:, None]
    X2, y2 = X.copy(), y.copy()
    X2[mask] = 1e3
    y2[mask] = 7.0
    Y, _ = net.forward(X, lengths, output="sequence")
    np.testing.assert_array_equal(Y[mask], 0.0)
    np.testing.assert_array_equal(net.forward(X2, lengths, output="sequence")[0], Y)
    a = net.loss_and_grad_vector(X, y, lengths, output="sequence")
    b = net.loss_and_grad_vector(X2, y2, lengths, output="sequence")
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_losses_match_their_definitions():
    net, X, _, lengths, _ = make_problem("lstm", n_outputs=3, lengths=[5, 3, 4])
    Y, _ = net.forward(X, lengths)
    labels = np.array([0, 2, 1])
    log_softmax = Y - np.log(np.exp(Y).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(3), labels].mean()
    assert net.loss_and_grad(X, labels, lengths, loss="cross_entropy")[0] == pytest.approx(expected, rel=1e-12)
    targets = np.random.default_rng(0).uniform(size=(3, 3))
    p = 1 / (1 + np.exp(-Y))
    expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()
    assert net.loss_and_grad(X, targets, lengths, loss="binary_cross_entropy")[0] == pytest.approx(expected)
    weights = np.array([1.0, 0.0, 3.0])
    expected = (((Y - targets) ** 2).mean(axis=1) * weights).sum() / weights.sum()
    got = net.loss_and_grad(X, targets, lengths, sample_weight=weights)[0]
    assert got == pytest.approx(expected, rel=1e-12)


def test_extreme_logits_stay_finite():
    net, X, _, _, _ = make_problem("rnn", n_outputs=3)
    net.get_weights()  # untouched
    net.unflatten(net.params)["head.bias"][:] = [800.0, -800.0, 0.0]
    loss, grads, _ = net.loss_and_grad(X, np.array([1, 1, 2]), loss="cross_entropy")
    assert np.isfinite(loss) and loss > 700
    assert all(np.isfinite(g).all() for g in grads.values())
    loss, grads, _ = net.loss_and_grad(X, np.ones((3, 3)), loss="binary_cross_entropy")
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(cell="lstmm"), ValueError, "cell must be one of"),
        (dict(hidden_sizes=(4, 0)), ValueError, "hidden size must be >= 1"),
        (dict(hidden_sizes=()), ValueError, "at least one layer"),
        (dict(n_outputs=0), ValueError, "n_outputs must be >= 1"),
        (dict(dtype="float16"), ValueError, "dtype must be one of"),
        (dict(nonlinearity="relu", cell="gru"), ValueError, "relu.*rnn"),
        (dict(nonlinearity="sigmoid", cell="rnn"), ValueError, "nonlinearity must be one of"),
        (dict(n_features=2.5), TypeError, "n_features must be an integer"),
    ],
)
def test_bad_network_arguments(kwargs, error, match):
    kwargs = {"n_features": 3, **kwargs}
    with pytest.raises(error, match=match):
        Network(**kwargs)


def test_bad_batches_raise_clear_errors():
    net = Network(2, (3,), n_outputs=2, dtype="float64")
    X = np.zeros((3, 4, 2))
    y = np.zeros((3, 2))
    cases = [
        (dict(X=np.zeros((3, 4))), ValueError, "3-D"),
        (dict(X=np.zeros((3, 4, 5))), ValueError, "5 features.*expects 2"),
        (dict(X=np.zeros((0, 4, 2))), ValueError, "at least one sample"),
        (dict(X=np.full((3, 4, 2), np.nan)), ValueError, "X contains NaN"),
        (dict(X=np.full((3, 4, 2), np.inf)), ValueError, "X contains infinity"),
        (dict(X=np.full((3, 4, 2), "a")), TypeError, "real numbers"),
        (dict(lengths=[4, 0, 2]), ValueError, "zero-length"),
        (dict(lengths=[4, 5, 2]), ValueError, r"\[1, 4\]"),
        (dict(lengths=[4, 2]), ValueError, "one per sample"),
        (dict(y=np.zeros((3, 3))), ValueError, r"y must have shape \(3, 2\)"),
        (dict(y=np.full((3, 2), np.nan)), ValueError, "y contains NaN"),
        (dict(loss="hinge"), ValueError, "loss must be one of"),
        (dict(output="all"), ValueError, "output must be one of"),
        (dict(truncate=0), ValueError, "truncate must be >= 1"),
        (dict(sample_weight=[1, -1, 1]), ValueError, "non-negative and not all zero"),
        (dict(state=[(np.zeros((1, 3, 4)),) * 2]), ValueError, r"state of layer 0 must have shape \(1, 3, 3\)"),
        (dict(state=[np.zeros((1, 3, 3))]), ValueError, r"pair \(h, c\)"),
        (dict(loss="cross_entropy", y=np.array([0, 1, 2])), ValueError, r"class indices must lie in \[0, 2\)"),
        (dict(loss="binary_cross_entropy", y=np.full((3, 2), 2.0)), ValueError, r"\[0, 1\]"),
    ]
    for overrides, error, match in cases:
        args = dict(X=X, y=y, lengths=None, loss="mse", output="last", truncate=None, state=None, sample_weight=None)
        args.update(overrides)
        with pytest.raises(error, match=match):
            net.loss_and_grad(**args)


def test_inputs_are_converted_not_rejected():
    net = Network(2, (3,), dtype="float32", random_state=0)
    X = np.arange(24).reshape(3, 4, 2)
    expected, _ = net.forward(X.astype(np.float32))
    for variant in (X, X.astype(np.float16), np.asfortranarray(X.astype(float)), X.astype(">f8"), X.tolist()):
        if isinstance(variant, np.ndarray):
            variant.setflags(write=False)
        np.testing.assert_array_equal(net.forward(variant)[0], expected)


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    for cell, module in [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("rnn", torch.nn.RNN)]:
        net, X, y, lengths, _ = make_problem(
            cell, hidden_sizes=(4, 4), bidirectional=True, n_samples=4, n_steps=6, lengths=[6, 2, 5, 3]
        )
        rnn = module(2, 4, num_layers=2, batch_first=True, bidirectional=True, dtype=torch.float64)
        head = torch.nn.Linear(8, 2, dtype=torch.float64)
        weights = net.get_weights()
        with torch.no_grad():
            for name, p in list(rnn.named_parameters()) + [("head." + n, p) for n, p in head.named_parameters()]:
                p.copy_(torch.from_numpy(weights[name]))
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(X), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
        _, h_n = rnn(packed)
        h_n = h_n[0] if cell == "lstm" else h_n
        out = head(torch.cat([h_n[-2], h_n[-1]], dim=1))
        torch.nn.functional.mse_loss(out, torch.from_numpy(y)).backward()
        np.testing.assert_allclose(net.forward(X, lengths)[0], out.detach().numpy(), rtol=1e-10, atol=1e-12)
        _, grads, _ = net.loss_and_grad(X, y, lengths)
        for name, p in list(rnn.named_parameters()) + [("head." + n, p) for n, p in head.named_parameters()]:
            np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_weight_mask_covers_weights_not_biases():
    net = Network(3, (4, 2), cell="gru", bidirectional=True)
    mask = net.weight_mask
    for name, view in net.unflatten(mask).items():
        assert view.all() == ("weight" in name) and view.any() == ("weight" in name), name


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_loss_start_skips_early_targets(output):
    net, X, y, lengths, weights = make_problem("gru", output=output, n_steps=6, lengths=[6, 3, 5])
    loss, flat, _ = net.loss_and_grad_vector(X, y, lengths, output=output, sample_weight=weights, loss_start=3)
    Y, _ = net.forward(X, lengths, output=output)
    if output == "last":
        keep = lengths - 1 >= 3
        per = ((Y - y) ** 2).mean(axis=1)
        expected = (per * weights)[keep].sum() / weights[keep].sum()
    else:
        keep = (np.arange(6)[None, :] >= 3) & (np.arange(6)[None, :] < lengths[:, None])
        per = ((Y - y) ** 2).mean(axis=2) * weights[:, None]
        expected = per[keep].sum() / (weights[:, None] * keep).sum()
    assert loss == pytest.approx(expected, rel=1e-12)
    numeric = naive.finite_difference_grad(
        lambda: net.loss_and_grad_vector(X, y, lengths, output=output, sample_weight=weights, loss_start=3)[0],
        {"params": net.params}, eps=1e-5,
    )["params"]
    assert relative_error(flat, numeric) < 1e-6
    with pytest.raises(ValueError, match="no target positions"):
        net.loss_and_grad(X, y, lengths, output=output, loss_start=6)


def test_dropout_gradient_and_determinism():
    net, X, y, lengths, _ = make_problem("lstm", hidden_sizes=(4, 3), bidirectional=True, lengths=[5, 2, 4])
    kwargs = dict(dropout=0.4, random_state=7)
    loss, flat, _ = net.loss_and_grad_vector(X, y, lengths, **kwargs)
    again = net.loss_and_grad_vector(X, y, lengths, **kwargs)
    np.testing.assert_array_equal(flat, again[1])
    assert net.loss_and_grad_vector(X, y, lengths, dropout=0.4, random_state=8)[0] != loss
    plain = net.loss_and_grad_vector(X, y, lengths)
    assert net.loss_and_grad_vector(X, y, lengths, dropout=0.0, random_state=7)[0] == plain[0]
    numeric = naive.finite_difference_grad(
        lambda: net.loss_and_grad_vector(X, y, lengths, **kwargs)[0], {"params": net.params}, eps=1e-5
    )["params"]
    assert relative_error(flat, numeric) < 1e-6
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        net.loss_and_grad(X, y, lengths, dropout=1.0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradient_flow_is_the_gradient_reaching_each_state(cell):
    """``flow[t] = ||d loss / d h_t||``, checked by differentiating the loss of
    the rest of the sequence w.r.t. the state it starts from."""
    net, X, y, _, _ = make_problem(cell, hidden_sizes=(4,), n_outputs=1, n_steps=6, lengths=None)
    y = y[:, :1]
    flow = net.gradient_flow(X, y)
    assert flow.shape == (1, 1, 6)
    for t in range(5):
        _, state = net.forward(X[:, : t + 1])
        parts = list(state[0]) if cell == "lstm" else [state[0]]
        h = parts[0]

        def rest_loss():
            full = (h, parts[1]) if cell == "lstm" else h
            return net.loss_and_grad(X[:, t + 1 :], y, state=[full])[0]

        numeric = naive.finite_difference_grad(rest_loss, {"h": h}, eps=1e-6)["h"]
        assert flow[0, 0, t] == pytest.approx(np.linalg.norm(numeric), rel=1e-6)


@pytest.mark.parametrize("output", ["last", "sequence"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_loss_without_gradient_equals_loss_and_grad(output, loss):
    net, X, y, lengths, weights = make_problem("lstm", output=output, loss=loss, lengths=[5, 2, 4])
    expected = net.loss_and_grad(X, y, lengths, loss=loss, output=output, sample_weight=weights)[0]
    got = net.loss(X, y, lengths, loss=loss, output=output, sample_weight=weights)
    assert got == pytest.approx(expected, rel=1e-12)


def _assert_matches_the_reference(net, X, y, lengths, output, truncate, result):
    """``result`` of `Network._backprop` (with the input gradient) and the forward pass against the naive reference."""
    value, grads, dX = naive.naive_loss_and_grad(
        net.get_weights(), X, y, lengths, **_model(net), output=output, truncate=truncate
    )
    assert result.loss == pytest.approx(value, rel=1e-12)
    assert relative_error(result.grad, np.concatenate([grads[k].ravel() for k in net.parameter_shapes])) < 1e-10
    assert relative_error(result.input_grad, dX) < 1e-10
    Y, _ = net.forward(X, lengths, output=output)
    Y_ref, _ = naive.naive_forward(net.get_weights(), X, lengths, **_model(net), output=output)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize(
    "cell, hidden_sizes, bidirectional, output, truncate",
    [
        ("lstm", (200,), False, "last", None),
        ("gru", (240, 6), True, "sequence", None),
        ("rnn", (400,), False, "sequence", 2),
        ("lstm", (5, 200), False, "last", 3),
    ],
)
def test_large_weights_take_the_whole_batch_plan_and_agree(cell, hidden_sizes, bidirectional, output, truncate):
    """Beyond the L2 cache the input projection and the weight gradients are
    whole-batch GEMMs split between the threads, around the kernels: the
    results, the input gradient included, agree with the reference and
    across thread counts, in stacks that mix large and small layers."""
    net, X, y, lengths, _ = make_problem(
        cell, hidden_sizes=hidden_sizes, bidirectional=bidirectional, output=output, n_samples=6, n_steps=5,
        lengths=[5, 3, 5, 2, 4, 5],
    )
    assert max(w.nbytes for name, w in net.get_weights().items() if name.startswith("weight_hh")) > LARGE_WEIGHTS
    previous = numba.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            results.append(
                net._backprop(X, y, lengths, "mse", output, truncate, None, None, 0, 0.0, None, need_input_grad=True)
            )
    finally:
        numba.set_num_threads(previous)
    one, two = results
    assert relative_error(one.grad, two.grad) < 1e-10
    _assert_matches_the_reference(net, X, y, lengths, output, truncate, two)


@pytest.mark.parametrize(
    "cell, hidden_sizes, bidirectional, output, truncate",
    [("lstm", (48,), False, "last", None), ("gru", (56,), True, "sequence", None), ("rnn", (96,), False, "last", 2)],
)
def test_recurrent_weights_in_panels_agree_with_the_reference(cell, hidden_sizes, bidirectional, output, truncate):
    """Weights short of large (float64 here), packed in panels on one thread, past L1."""
    net, X, y, lengths, _ = make_problem(
        cell, hidden_sizes=hidden_sizes, bidirectional=bidirectional, output=output, n_samples=6, n_steps=5,
        lengths=[5, 3, 5, 2, 4, 5],
    )
    w_hh = net.get_weights()["weight_hh_l0"]
    assert 32 << 10 < w_hh.nbytes <= LARGE_WEIGHTS
    result = net._backprop(X, y, lengths, "mse", output, truncate, None, None, 0, 0.0, None, need_input_grad=True)
    _assert_matches_the_reference(net, X, y, lengths, output, truncate, result)


def test_reused_buffers_never_leak_between_calls_or_threads():
    import threading

    net, X, y, lengths, _ = make_problem("gru", hidden_sizes=(5, 4), n_samples=9, n_steps=8, lengths=None)
    lengths = np.array([8, 3, 5, 8, 1, 7, 8, 2, 6])
    expected = net.loss_and_grad_vector(X, y, lengths, truncate=3)
    net.loss_and_grad_vector(X[:4, :6], y[:4])  # other shapes in between
    np.testing.assert_array_equal(net.loss_and_grad_vector(X, y, lengths, truncate=3)[1], expected[1])
    results = []

    def work():
        for _ in range(20):
            results.append(np.array_equal(net.loss_and_grad_vector(X, y, lengths, truncate=3)[1], expected[1]))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 60 and all(results)


@pytest.mark.parametrize(
    "cell, hidden_sizes, bidirectional", [("lstm", (5,), False), ("gru", (4, 3), False), ("rnn", (3,), True)]
)
def test_rollout_is_forward_one_step_at_a_time(cell, hidden_sizes, bidirectional):
    net = Network(2, hidden_sizes, cell=cell, n_outputs=2, bidirectional=bidirectional, random_state=0)
    rng = np.random.default_rng(0)
    first = rng.normal(size=2)
    _, state = net.forward(rng.normal(size=(1, 6, 2)), output="sequence")
    outputs, final = net._rollout(first, state, 7)
    x, expected = first, []
    for _ in range(7):
        Y, state = net.forward(x[None, None, :], state=state, output="sequence")
        x = Y[0, 0]
        expected.append(x)
    np.testing.assert_array_equal(outputs, np.array(expected))
    for got, want in zip(final, state):
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="n_outputs == n_features"):
        Network(2, (3,), n_outputs=1)._rollout(first, None, 2)


@pytest.mark.parametrize(
    "n_features, hidden_sizes, need_input_grad, blas_threads",
    [
        (3, (4,), False, None),  # every product the kernels' own: BLAS left as it is
        (3, (4,), True, 1),  # the input gradient is a BLAS product
        (3, (4, 5), False, 1),  # so is the gradient passed down to layer 0
        (NARROW_GRADIENT + 1, (4,), False, 1),  # a weight gradient over wide inputs
        (3, (NARROW_GRADIENT + 1,), False, 1),  # or wide states
    ],
)
def test_training_sets_blas_threads_only_where_kernels_call_blas(
    monkeypatch, n_features, hidden_sizes, need_input_grad, blas_threads
):
    sections = []
    real = network.kernel_section

    def recording(threads=1):
        sections.append(threads)
        return real(threads)

    monkeypatch.setattr(network, "kernel_section", recording)
    net = Network(n_features, hidden_sizes, cell="rnn", random_state=0)
    X = np.random.default_rng(0).normal(size=(2, 3, n_features))
    result = net._backprop(X, np.zeros((2, 1)), None, "mse", "last", None, None, None, 0, 0.0, None, need_input_grad)
    assert sections == [blas_threads]
    assert np.isfinite(result.grad).all()


def test_the_engine_does_not_import_scikit_learn():
    """Importing scikit-learn takes seconds: the engine alone must not pay for it."""
    code = (
        "import sys, numpy as np\n"
        "from bptt_numba import Network, train\n"
        "net = Network(2, (4,), random_state=0)\n"
        "train(net, np.zeros((4, 3, 2)), np.zeros((4, 1)), max_iter=1)\n"
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
