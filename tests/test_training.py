"""The training layer: updates, TBPTT windows, the gradient toolkit, the loop,
and evidence that it learns."""

import copy
import os
import signal
import threading
import warnings

import numba
import numpy as np
import pytest

import naive
from bptt_numba import Network, datasets
from bptt_numba._compat import ConvergenceWarning
from bptt_numba.training import Trainer, make_streams, train
from problems import relative_error


def _quiet_train(net, X, y, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return train(net, X, y, **options)


def _toy(cell="gru", n_samples=40, n_steps=12, output="last", dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_steps, 2))
    y = X.sum(axis=2).cumsum(axis=1)[..., None] * 0.1
    if output == "last":
        y = y[:, -1]
    lengths = rng.integers(n_steps // 2, n_steps + 1, size=n_samples)
    net = Network(2, (6,), cell=cell, dtype=dtype, random_state=seed)
    return net, X, y, lengths


# ----------------------------------------------------------------- one update
@pytest.mark.parametrize("solver", ["sgd", "adam", "adamw", "rmsprop"])
def test_one_step_matches_the_numpy_update(solver):
    net, X, y, lengths = _toy()
    start = net.params.copy()
    loss, grad, _ = net.loss_and_grad_vector(X[:8], y[:8], lengths[:8])
    trainer = Trainer(net, solver=solver, learning_rate_init=0.05, batch_size=8, shuffle=False, max_iter=1,
                      momentum=0.5, nesterovs_momentum=False, alpha=0.3)
    batch = trainer._check_data(X[:8], y[:8], lengths[:8], None)
    (reported, norm), = list(trainer._train_batch(batch, 1, 1))
    mask = net.weight_mask
    g = grad + 0.3 / 8 * start * mask
    assert reported == pytest.approx(loss + 0.5 * 0.3 * np.sum(start[mask] ** 2) / 8, rel=1e-12)
    assert norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    if solver == "sgd":
        expected = start - 0.05 * g
    elif solver == "rmsprop":
        expected = start - 0.05 * g / (np.sqrt(0.1 * g**2) + 1e-8)
    else:
        decay = 1 - 0.05 * 0.01 if solver == "adamw" else 1.0
        m_hat, v_hat = g, g**2  # one step: bias corrections undo (1 - beta)
        expected = start * decay - 0.05 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(net.params, expected, rtol=1e-10, atol=1e-12)


def test_l2_penalty_gradient_matches_finite_differences():
    net, X, y, lengths = _toy(n_samples=5)
    trainer = Trainer(net, alpha=0.7)
    mask = net.weight_mask

    def penalised():
        loss = net.loss_and_grad_vector(X, y, lengths)[0]
        return loss + 0.5 * 0.7 * np.sum(net.params[mask] ** 2) / 5

    captured = {}

    class Capture:
        undo_rows = 1

        def update(self, params, grad, lr, undo):
            captured["g"] = grad.copy()
            return True

    trainer._get_optimizer = Capture
    loss, grad, _ = net.loss_and_grad_vector(X, y, lengths)
    trainer._step(loss, grad, 5, 1, 1)
    numeric = naive.finite_difference_grad(penalised, {"p": net.params}, eps=1e-6)["p"]
    assert relative_error(captured["g"], numeric) < 1e-6


def test_clipping_by_norm_and_value():
    net, X, y, lengths = _toy()
    for options in ({"clip_norm": 1e-3}, {"clip_value": 1e-4}, {"clip_norm": 1e-4, "clip_value": 1e-4}):
        trainer = Trainer(net, solver="sgd", momentum=0.0, learning_rate_init=1.0, **options)
        before = net.params.copy()
        loss, grad, _ = net.loss_and_grad_vector(X, y, lengths)
        norm = np.linalg.norm(grad)
        # The norm recorded is the gradient's before any clipping.
        assert trainer._step(loss, grad, 40, 1, 1)[1] == pytest.approx(norm, rel=1e-12)
        step = before - net.params
        if "clip_norm" in options:
            # PyTorch's 1e-6 beside the norm shows when it is this small.
            rel = 1e-2 if "clip_value" in options else 1e-5
            assert np.linalg.norm(step) == pytest.approx(options["clip_norm"], rel=rel)
        if "clip_value" in options:
            assert np.abs(step).max() <= 1e-4 * (1 + 1e-12)
        if "clip_norm" not in options:
            assert np.abs(step).max() == pytest.approx(1e-4)


@pytest.mark.parametrize("solver", ["sgd", "adam", "rmsprop"])
def test_a_skipped_update_leaves_the_weights_and_the_optimizer_state(solver):
    """A step skipped for a non-finite update is as if it was never taken."""
    net, X, y, lengths = _toy(dtype="float32")
    trainer = Trainer(net, solver=solver, on_nonfinite="skip")
    loss, grad, _ = net.loss_and_grad_vector(X, y, lengths)
    assert trainer._step(loss, grad.copy(), 40, 1, 1) is not None
    optimizer = trainer._get_optimizer()
    before = copy.deepcopy((net.params, optimizer.__dict__))
    # Finite, but its square (Adam's, RMSprop's second moment) or its step
    # (SGD's, at this learning rate) is not.
    grad[0] = np.finfo(np.float32).max
    trainer.learning_rate_ = 4.0
    with pytest.warns(RuntimeWarning, match="non-finite update.*step skipped"):
        assert trainer._step(loss, grad, 40, 1, 2) is None
    params, state = before
    np.testing.assert_array_equal(net.params, params)
    assert optimizer.__dict__.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(getattr(optimizer, name), value, err_msg=name)


# ------------------------------------------------------------ TBPTT windows
def test_window_bounds():
    trainer = Trainer(Network(1, (2,)), truncate=(3, 5))
    assert trainer._window_bounds(10) == [(0, 3, 0), (1, 6, 3), (4, 9, 6), (5, 10, 9)]
    trainer = Trainer(Network(1, (2,)), truncate=4)
    assert trainer._window_bounds(10) == [(0, 4, 0), (4, 8, 4), (6, 10, 8)]
    assert Trainer(Network(1, (2,)), truncate=20)._window_bounds(10) == [(0, 10, 0)]
    with pytest.raises(ValueError, match="k2 >= k1"):
        Trainer(Network(1, (2,)), truncate=(5, 3))


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_truncate_at_least_length_equals_full_bptt(output):
    results = []
    for truncate in (None, 12, 40):
        net, X, y, lengths = _toy(output=output)
        _quiet_train(net, X, y, lengths=lengths, output=output, truncate=truncate, max_iter=3, batch_size=8,
                     random_state=1)
        results.append(net.params.copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


class _Recorder:
    """Stands in for the optimizer step: records each window, changes nothing."""

    def __init__(self, trainer, net):
        self.calls = []
        self.batches = {}
        window_batch, backprop_batch = net._valid_batch, net._backprop_batch

        def recording_batch(X, lengths, state):
            batch = window_batch(X, lengths, state)
            self.batches[id(batch)] = dict(X=X, lengths=lengths, state=state)
            return batch

        def recording(batch, targets, weights, loss, output, window, loss_start, *args):
            result = backprop_batch(batch, targets, weights, loss, output, window, loss_start, *args)
            self.calls.append(dict(self.batches[id(batch)], grad=result.grad, loss_start=loss_start))
            return result

        net._valid_batch, net._backprop_batch = recording_batch, recording
        trainer._step = lambda loss, grad, *args: (loss, 0.0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("windows", [(3, 3), (3, 5), (2, 7)])
def test_tbptt_carries_the_exact_state_and_gradients_match_reference(cell, windows):
    """With the weights held, each window starts from the state of an uncut
    forward pass, and its gradient is TBPTT(k1, k2)'s: loss on its last k1
    steps back-propagated through its k2 steps, checked against the NumPy
    reference."""
    net, X, y, lengths = _toy(cell, n_samples=5, n_steps=13, output="sequence")
    trainer = Trainer(net, output="sequence", truncate=windows, batch_size=5, shuffle=False)
    recorder = _Recorder(trainer, net)
    batch = trainer._check_data(X, y, lengths, None)
    list(trainer._train_batch(batch, 1, 1))
    bounds = trainer._window_bounds(batch.n_steps)
    assert len(recorder.calls) == len(bounds)
    model = dict(cell=cell, hidden_sizes=(6,))
    for call, (start, stop, loss_from) in zip(recorder.calls, bounds):
        active = np.nonzero(lengths > start)[0]
        if start == 0:
            assert call["state"] is None
            state = None
        else:
            # The exact state: an uncut forward pass up to the window start.
            _, state = net.forward(X[active, :start], np.minimum(lengths[active], start), output="sequence")
            for got, want in zip(np.ravel(call["state"]), np.ravel(state)):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        assert call["loss_start"] == loss_from - start
        _, grads, _ = naive.naive_loss_and_grad(
            net.get_weights(), X[active, start:stop], y[active, start:stop],
            np.clip(lengths[active] - start, 1, stop - start), **model, output="sequence",
            state=state, loss_start=loss_from - start,
        )
        expected = np.concatenate([grads[name].ravel() for name in net.parameter_shapes])
        assert relative_error(call["grad"], expected) < 1e-10


def test_a_whole_batch_window_is_a_view_and_its_weights_a_copy():
    net, X, y, lengths = _toy(n_samples=6, output="sequence")
    trainer = Trainer(net, output="sequence", batch_size=6)
    batch = trainer._check_data(X, y, lengths, None)
    rows = np.arange(batch.n_samples)
    window = batch.window(rows, 0, batch.n_steps)
    assert np.shares_memory(window.X, batch.X) and np.shares_memory(window.y, batch.y)
    assert not np.shares_memory(window.weights, batch.weights)
    np.testing.assert_array_equal(window.lengths, batch.lengths)
    # Some rows, some steps: copies, the lengths cut to the window.
    part = batch.window(rows[1:4], 2, 5)
    np.testing.assert_array_equal(part.X, batch.X[1:4, 2:5])
    np.testing.assert_array_equal(part.lengths, np.minimum(batch.lengths[1:4] - 2, 3))


def test_stateful_streams_of_one_long_series():
    series = np.arange(103.0)
    X, y = make_streams(series, 4)
    assert X.shape == (4, 25, 1) and y.shape == (4, 25, 1)
    np.testing.assert_array_equal(X[1, :, 0], np.arange(25, 50))
    np.testing.assert_array_equal(y[1, :, 0], np.arange(26, 51))
    with pytest.raises(ValueError, match="too short"):
        make_streams(np.arange(3.0), 4)


# ------------------------------------------------------------- the loop
def test_same_seed_same_weights_and_thread_count_does_not_matter():
    runs = []
    for threads in (1, 2, 2):
        if threads > numba.config.NUMBA_NUM_THREADS:
            pytest.skip("needs 2 Numba threads")
        net, X, y, lengths = _toy("lstm", n_samples=33)
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _quiet_train(net, X, y, lengths=lengths, max_iter=3, batch_size=8, dropout=0.0, random_state=5,
                         truncate=(4, 6))
        finally:
            numba.set_num_threads(previous)
        runs.append(net.params.copy())
    np.testing.assert_array_equal(runs[1], runs[2])
    assert relative_error(runs[0], runs[1]) < 1e-10


def test_history_schedules_and_early_stopping():
    net, X, y, lengths = _toy(n_samples=60)
    trainer = _quiet_train(net, X, y, lengths=lengths, max_iter=4, batch_size=16, learning_rate="invscaling",
                           power_t=0.5, learning_rate_init=0.1, random_state=0)
    assert trainer.n_iter_ == 4 and trainer.t_ == 240
    assert trainer.learning_rate_ == pytest.approx(0.1 / 241**0.5)
    assert len(trainer.loss_curve_) == len(trainer.grad_norm_curve_) == len(trainer.epoch_times_) == 4
    assert trainer.best_loss_ == min(trainer.loss_curve_)

    # A tolerance nothing can meet after the first epoch (which improves on
    # an infinite best loss): adaptive divides the rate by 5 each time
    # n_iter_no_change + 1 epochs fail to improve; constant stops there.
    trainer = _quiet_train(net, X, y, lengths=lengths, max_iter=7, learning_rate="adaptive", tol=1e9,
                           n_iter_no_change=2, learning_rate_init=0.01, random_state=0)
    assert trainer.n_iter_ == 7 and trainer.learning_rate_ == pytest.approx(0.01 / 5 / 5)
    trainer = train(net, X, y, lengths=lengths, max_iter=50, tol=1e9, n_iter_no_change=2, random_state=0)
    assert trainer.n_iter_ == 4

    trainer = _quiet_train(net, X, y, lengths=lengths, max_iter=30, early_stopping=True, validation_fraction=0.2,
                           n_iter_no_change=3, learning_rate_init=0.05, random_state=0)
    assert len(trainer.validation_scores_) == trainer.n_iter_
    best = int(np.argmax(trainer.validation_scores_))
    assert trainer.best_validation_score_ == trainer.validation_scores_[best]
    assert trainer.n_iter_ <= best + 1 + 4


def test_early_stopping_restores_the_best_weights():
    net, X, y, lengths = _toy(n_samples=50)
    snapshots = []
    trainer = Trainer(net, max_iter=12, early_stopping=True, validation_fraction=0.3, n_iter_no_change=20,
                      learning_rate_init=0.3, random_state=0)
    original = trainer._end_of_epoch

    def snapshot(validation):
        stop = original(validation)
        snapshots.append(net.params.copy())
        return stop

    trainer._end_of_epoch = snapshot
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        trainer.fit(X, y, lengths)
    best = int(np.argmax(trainer.validation_scores_))
    np.testing.assert_array_equal(net.params, snapshots[best])


def test_exploding_training_stops_with_a_clear_error_and_keeps_finite_weights():
    series = datasets.make_sine_series(1500, noise=0.05, random_state=0)
    X, y = datasets.make_windows(series, 60)
    net = Network(1, (32,), cell="lstm", dtype="float64", random_state=0)
    with pytest.raises(FloatingPointError, match=r"at epoch \d+, batch \d+.*clip_norm.*learning_rate_init"):
        train(net, X, y, solver="sgd", learning_rate_init=0.3, momentum=0.9, batch_size=64, random_state=0)
    assert np.isfinite(net.params).all()
    assert np.isfinite(net.forward(X[:5])[0]).all()

    net = Network(1, (32,), cell="lstm", dtype="float64", random_state=0)
    with pytest.warns(RuntimeWarning, match="step skipped"):
        _quiet_train(net, X, y, solver="sgd", learning_rate_init=0.3, momentum=0.9, batch_size=64, max_iter=8,
                     on_nonfinite="skip", random_state=0)
    assert np.isfinite(net.params).all()


def test_clipping_prevents_divergence():
    """The same set-up diverges without clipping and learns with it."""
    series = datasets.make_sine_series(3000, noise=0.05, random_state=0)
    X, y = datasets.make_windows(series, 60)
    options = dict(solver="sgd", learning_rate_init=0.3, momentum=0.9, batch_size=64, max_iter=6,
                   random_state=0, on_nonfinite="skip")
    net = Network(1, (32,), cell="lstm", random_state=0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        unclipped = _quiet_train(net, X, y, **options)
    net = Network(1, (32,), cell="lstm", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        clipped = _quiet_train(net, X, y, clip_norm=0.25, **options)
    assert np.all(np.isfinite(clipped.loss_curve_))
    assert clipped.loss_curve_[-1] < 0.01 < unclipped.loss_curve_[-1] or not np.isfinite(unclipped.loss_curve_[-1])
    persistence = np.mean((X[:, -1, 0] - y) ** 2)
    assert clipped.loss_curve_[-1] < persistence / 5


def test_lbfgs_fits_a_small_problem():
    net, X, y, lengths = _toy(n_samples=30)
    before = net.loss(X, y, lengths)
    trainer = _quiet_train(net, X, y, lengths=lengths, solver="lbfgs", max_iter=60)
    assert net.loss(X, y, lengths) < before / 5
    assert trainer.n_iter_ == len(trainer.loss_curve_) > 5
    with pytest.raises(ValueError, match="truncate or dropout"):
        train(net, X, y, solver="lbfgs", truncate=3)


def test_group_by_length_makes_batches_of_similar_lengths():
    lengths = np.random.default_rng(0).integers(1, 100, size=400)
    trainer = Trainer(Network(1, (2,)), batch_size=20, group_by_length=True, random_state=0)
    batches = trainer._batches(lengths)
    assert sorted(np.concatenate(batches)) == list(range(400))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)


def test_dropout_trains_and_is_off_at_prediction():
    net, X, y, lengths = _toy("lstm", n_samples=40)
    net2 = Network(2, (6, 6), cell="lstm", dtype="float64", random_state=0)
    before = net2.forward(X)[0]
    np.testing.assert_array_equal(net2.forward(X)[0], before)  # no randomness at prediction
    trainer = _quiet_train(net2, X, y, lengths=lengths, dropout=0.3, max_iter=15, learning_rate_init=0.02,
                           random_state=0)
    assert trainer.loss_curve_[-1] < trainer.loss_curve_[0]


def test_ctrl_c_stops_after_the_current_batch():
    net, X, y, lengths = _toy("lstm", n_samples=64)
    trainer = Trainer(net, max_iter=10_000, batch_size=4, random_state=0)
    # What was installed before, not Python's default: a process started in
    # the background inherits SIGINT ignored.
    previous = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.warns(RuntimeWarning, match="interrupted"):
            trainer.fit(X, y, lengths)
    finally:
        timer.cancel()
    assert trainer.interrupted_ and trainer.n_iter_ < 10_000
    assert np.isfinite(net.params).all()
    assert signal.getsignal(signal.SIGINT) is previous


def test_bad_options_raise_clear_errors():
    net = Network(1, (2,))
    for options, match in [
        (dict(solver="lamb"), "solver must be one of"),
        (dict(learning_rate="cosine"), "learning_rate must be one of"),
        (dict(learning_rate_init=0), "learning_rate_init must be a positive number"),
        (dict(alpha=-1), "alpha must be a non-negative number"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(clip_norm=-1.0), "clip_norm must be a positive number"),
        (dict(truncate=(1, 2, 3)), "truncate must be k or"),
        (dict(on_nonfinite="ignore"), "on_nonfinite must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            Trainer(net, **options)


# ------------------------------------------------- evidence that it learns
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_adding_problem_is_solved(cell):
    """Hochreiter & Schmidhuber's adding problem, T = 50: predicting 1 scores
    about 0.167; a trained network gets below 0.01 on fresh data."""
    X, y = datasets.make_adding_problem(2000, 50, random_state=0)
    X_test, y_test = datasets.make_adding_problem(500, 50, random_state=1)
    net = Network(2, (32,), cell=cell, random_state=0)
    _quiet_train(net, X, y, learning_rate_init=1e-2, max_iter=25, clip_norm=1.0, random_state=0,
                 n_iter_no_change=25)
    assert np.mean((1.0 - y_test) ** 2) > 0.15
    assert net.loss(X_test, y_test) < 0.01


def test_noisy_sine_forecast_with_tbptt_on_one_long_series_beats_persistence():
    series = datasets.make_sine_series(6000, periods=(20.0, 37.0), noise=0.05, random_state=0)
    fit_part, test_part = series[:5000], series[5000:]
    X, y = make_streams(fit_part, 10)
    net = Network(1, (32,), cell="gru", random_state=0)
    _quiet_train(net, X, y, output="sequence", batch_size=10, shuffle=False, truncate=(25, 50),
                 learning_rate_init=5e-3, max_iter=25, random_state=0)
    Y, _ = net.forward(test_part[None, :-1, None], output="sequence")
    mse = np.mean((Y[0, :, 0] - test_part[1:]) ** 2)
    persistence = np.mean((test_part[:-1] - test_part[1:]) ** 2)
    assert mse < persistence / 3


def test_verbose_progress_lines_or_bar(capsys, monkeypatch):
    net, X, y, lengths = _toy(n_samples=16)
    _quiet_train(net, X, y, lengths=lengths, max_iter=2, verbose=True, random_state=0)
    out = capsys.readouterr().out
    assert "Epoch 1: loss" in out and "Epoch 2: loss" in out and "grad norm" in out
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    trainer = _quiet_train(net, X, y, lengths=lengths, max_iter=2, verbose=True, random_state=0)
    err = capsys.readouterr().err
    assert "training" in err and "2/2" in err and "loss" in err
    assert trainer._bar is None  # closed, and the trainer still pickles
