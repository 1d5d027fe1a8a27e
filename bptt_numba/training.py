"""The training loop: optimizers, schedules, truncated BPTT, the gradient toolkit.

`Trainer` fits a `Network` with mini-batch first-order solvers (SGD with
momentum or Nesterov momentum, Adam, AdamW, RMSprop) or full-batch L-BFGS,
with scikit-learn's MLP meanings for the shared options (``learning_rate``,
``tol``, ``n_iter_no_change``, ``early_stopping``, ``alpha`` ...).  `train`
is the one-call form.

Long sequences are trained with Williams & Peng's TBPTT(k1, k2): every k1
steps one update that back-propagates through the last k2 steps, the state
carried exactly across the windows of the same sequences and reset between
epochs.  `make_streams` cuts one very long series into parallel streams so
that batch parallelism still applies.
"""

import math
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np

from . import _validation as val
from ._config import kernel_section
from ._kernels import optim
from ._kernels.layers import _buffer

SOLVERS = ("adam", "adamw", "sgd", "rmsprop", "lbfgs")
SCHEDULES = ("constant", "invscaling", "adaptive")
ON_NONFINITE = ("raise", "skip")


class _Momentum:
    """SGD with (Nesterov) momentum, scikit-learn's MLP semantics."""

    #: Vectors an update overwrites: its ``undo`` scratch has a row for each.
    undo_rows = 2

    def __init__(self, params, momentum, nesterov):
        self.velocity = np.zeros_like(params)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def update(self, params, grad, lr, undo):
        """One update in place; False, with nothing changed, if it is not finite."""
        return optim.sgd_update(params, grad, self.velocity, undo, lr, self.momentum, self.nesterov)


class _Adam:
    """Adam, or AdamW with decoupled ``weight_decay`` (PyTorch semantics)."""

    undo_rows = 3

    def __init__(self, params, beta_1, beta_2, epsilon, weight_decay):
        self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.weight_decay = float(weight_decay)
        self.step = 0

    def update(self, params, grad, lr, undo):
        """One update in place; False, with nothing changed, if it is not finite."""
        made = optim.adam_update(
            params, grad, self.m, self.v, undo, lr, self.beta_1, self.beta_2, self.epsilon, self.step + 1,
            self.weight_decay,
        )
        self.step += made
        return made


class _RMSprop:
    """RMSprop without momentum (PyTorch semantics, ``alpha`` = ``rho``)."""

    undo_rows = 2

    def __init__(self, params, rho, epsilon):
        self.square_avg = np.zeros_like(params)
        self.rho, self.epsilon = float(rho), float(epsilon)

    def update(self, params, grad, lr, undo):
        """One update in place; False, with nothing changed, if it is not finite."""
        return optim.rmsprop_update(params, grad, self.square_avg, undo, lr, self.rho, self.epsilon)


class Trainer:
    """Fit a `Network` by backpropagation through time.

    Parameters
    ----------
    network : Network
        Trained in place: ``network.params`` is updated.
    loss : {"mse", "cross_entropy", "binary_cross_entropy"}, default="mse"
    output : {"last", "sequence"}, default="last"
    solver : {"adam", "adamw", "sgd", "rmsprop", "lbfgs"}, default="adam"
        ``"lbfgs"`` is full-batch L-BFGS through ``scipy.optimize``, for
        small problems (no mini-batches, windows or dropout).
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        scikit-learn's schedules: ``invscaling`` divides
        ``learning_rate_init`` by ``(t_ + 1) ** power_t`` after each epoch;
        ``adaptive`` divides the rate by 5 each time ``n_iter_no_change``
        epochs fail to improve by ``tol``, and stops below 1e-6.  Applied to
        every first-order solver.
    learning_rate_init : float, default=1e-3
    power_t : float, default=0.5
    batch_size : int, default=32
        Clipped to the number of samples.
    max_iter : int, default=200
        Epochs (L-BFGS: iterations).
    shuffle : bool, default=True
        Shuffle the samples each epoch.
    random_state : None, int or numpy.random.Generator
        Seeds shuffling, the validation split and dropout.
    tol : float, default=1e-4
    n_iter_no_change : int, default=10
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the samples (or use the
        ``validation_data`` given to `fit`), stop when its score stops
        improving, and restore the best weights.
    validation_fraction : float, default=0.1
    alpha : float, default=0.0
        L2 penalty on the weights (not the biases), as in scikit-learn's
        MLP: ``0.5 * alpha * ||W||^2 / batch_size`` is added to each batch
        loss (and shows in ``loss_curve_``).
    weight_decay : float, default=0.01 for "adamw", else 0
        Decoupled weight decay of AdamW (ignored by the other solvers).
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
    beta_1, beta_2, epsilon : float
        Adam's moment decays and denominator guard.
    rho : float, default=0.9
        RMSprop's squared-gradient decay.
    clip_norm : float, optional
        Rescale each gradient whose global L2 norm exceeds it.
    clip_value : float, optional
        Clip each gradient element to ``[-clip_value, clip_value]``.
    truncate : int or (int, int), optional
        Truncated BPTT: ``k`` or ``(k1, k2)`` with ``k2 >= k1``.  Every
        ``k1`` steps of each batch, one update back-propagates through the
        last ``k2`` steps (only the last ``k1`` of them carry loss); the
        state is carried across the windows.  None: one update per batch,
        full BPTT.
    dropout : float, default=0.0
        Inverted dropout between layers while training.
    group_by_length : bool, default=False
        Form batches of sequences of similar length (less padding).
    on_nonfinite : {"raise", "skip"}, default="raise"
        A non-finite loss, gradient or update either stops training with a
        FloatingPointError (the weights and the optimizer's state stay those
        of the last finite step) or skips the step with a warning, leaving
        both as they were.
    verbose : bool, default=False
        A progress bar (tqdm, when installed) or one line per epoch.
    score : callable, optional
        ``score(network, X, y, lengths, sample_weight) -> float``, higher is
        better, for early stopping; defaults to minus the validation loss.

    Attributes
    ----------
    loss_curve_ : list of float
        Mean training loss (with the L2 penalty) of each epoch.
    validation_scores_ : list of float
        Validation score of each epoch (early stopping only).
    best_loss_ : float
    best_validation_score_ : float
    n_iter_ : int
        Epochs run.
    t_ : int
        Training samples seen.
    grad_norm_curve_ : list of float
        Mean global gradient norm (before clipping) of each epoch.
    epoch_times_ : list of float
        Seconds per epoch.
    learning_rate_ : float
        The current learning rate.
    interrupted_ : bool
        Training was stopped by Ctrl-C.
    """

    def __init__(
        self,
        network,
        *,
        loss="mse",
        output="last",
        solver="adam",
        learning_rate="constant",
        learning_rate_init=1e-3,
        power_t=0.5,
        batch_size=32,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        alpha=0.0,
        weight_decay=None,
        momentum=0.9,
        nesterovs_momentum=True,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        rho=0.9,
        clip_norm=None,
        clip_value=None,
        truncate=None,
        dropout=0.0,
        group_by_length=False,
        on_nonfinite="raise",
        verbose=False,
        score=None,
    ):
        self.network = network
        self.loss = val.check_choice("loss", loss, val.LOSSES)
        self.output = val.check_choice("output", output, val.OUTPUTS)
        self.solver = val.check_choice("solver", solver, SOLVERS)
        self.learning_rate = val.check_choice("learning_rate", learning_rate, SCHEDULES)
        self.learning_rate_init = val.check_positive_float("learning_rate_init", learning_rate_init)
        self.power_t = float(power_t)
        self.batch_size = val.check_positive_int("batch_size", batch_size)
        self.max_iter = val.check_positive_int("max_iter", max_iter)
        self.shuffle = bool(shuffle)
        self.rng = val.as_generator(random_state)
        self.tol = float(tol)
        self.n_iter_no_change = val.check_positive_int("n_iter_no_change", n_iter_no_change)
        self.early_stopping = bool(early_stopping)
        self.validation_fraction = val.check_fraction("validation_fraction", validation_fraction)
        self.alpha = val.check_non_negative_float("alpha", alpha)
        if weight_decay is None:
            weight_decay = 0.01 if solver == "adamw" else 0.0
        self.weight_decay = val.check_non_negative_float("weight_decay", weight_decay)
        self.momentum, self.nesterovs_momentum = float(momentum), bool(nesterovs_momentum)
        self.beta_1, self.beta_2, self.epsilon, self.rho = float(beta_1), float(beta_2), float(epsilon), float(rho)
        self.clip_norm = None if clip_norm is None else val.check_positive_float("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else val.check_positive_float("clip_value", clip_value)
        self.windows = val.check_windows(truncate)
        self.dropout = val.check_fraction("dropout", dropout)
        self.group_by_length = bool(group_by_length)
        self.on_nonfinite = val.check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
        self.verbose = bool(verbose)
        self.score = score
        self._weight_mask = network.weight_mask
        self._optimizer = None
        self._reset_history()

    # ----------------------------------------------------------------- public
    def fit(self, X, y, lengths=None, sample_weight=None, validation_data=None):
        """Train from the network's current weights for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features)
        y : array-like
            Targets as for `Network.loss_and_grad`.
        lengths : array-like of shape (n_samples,), optional
        sample_weight : array-like of shape (n_samples,), optional
        validation_data : tuple, optional
            ``(X_val, y_val)`` or ``(X_val, y_val, lengths_val)`` scored each
            epoch instead of a held-out split (with ``early_stopping``).

        Returns
        -------
        self
        """
        data = self._check_data(X, y, lengths, sample_weight)
        self._reset_history()
        self._optimizer = None
        validation = None
        if self.early_stopping:
            data, validation = self._validation_split(data, validation_data)
        if self.solver == "lbfgs":
            with kernel_section():
                self._fit_lbfgs(data)
            self.network._trim_workspace()
            return self
        # One section for the whole fit (see kernel_section).
        with _interruptible() as interrupted, kernel_section():
            for _ in range(self.max_iter):
                self._epoch(data, interrupted)
                if interrupted():
                    break
                if self._end_of_epoch(validation):
                    break
            else:
                _warn_not_converged(
                    f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached and the optimization "
                    "hasn't converged yet.",
                    stacklevel=3,
                )
        self._close_progress()
        self.interrupted_ = interrupted()
        if self.interrupted_:
            warnings.warn(
                f"training interrupted (Ctrl-C) after {self.n_iter_} epochs; the model keeps the weights of the "
                "last completed step",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.early_stopping and self._best_params is not None:
            self.network.params[:] = self._best_params
        self.network._trim_workspace()
        return self

    def partial_fit(self, X, y, lengths=None, sample_weight=None):
        """One epoch over the given data, continuing the optimizer's state.

        Returns
        -------
        self
        """
        if self.solver == "lbfgs":
            raise ValueError("partial_fit needs a stochastic solver, not 'lbfgs'")
        data = self._check_data(X, y, lengths, sample_weight)
        with _interruptible() as interrupted, kernel_section():
            self._epoch(data, interrupted)
        self._end_of_epoch(None)
        return self

    # ------------------------------------------------------------------ epoch
    def _epoch(self, data, interrupted):
        """One pass over ``data`` in mini-batches; appends to the history."""
        start = time.perf_counter()
        losses, weights, norms = [], [], []
        for number, rows in enumerate(self._batches(data.lengths)):
            batch = data.take(rows)
            for loss, norm in self._train_batch(batch, epoch=self.n_iter_ + 1, number=number + 1):
                losses.append(loss)
                weights.append(len(rows))
                norms.append(norm)
            if interrupted():
                break
        self.t_ += data.lengths.shape[0]
        self.n_iter_ += 1
        self.loss_curve_.append(float(np.average(losses, weights=weights)) if losses else math.nan)
        self.grad_norm_curve_.append(float(np.mean(norms)) if norms else math.nan)
        self.epoch_times_.append(time.perf_counter() - start)
        if self.learning_rate == "invscaling":
            self.learning_rate_ = self.learning_rate_init / (self.t_ + 1) ** self.power_t

    def _batches(self, lengths):
        """Row indices of each mini-batch of an epoch."""
        n_samples = lengths.shape[0]
        size = min(self.batch_size, n_samples)
        order = self.rng.permutation(n_samples) if self.shuffle else np.arange(n_samples)
        if self.group_by_length:
            # Sort within pools of 50 batches, then shuffle the batches: batches
            # of similar lengths, still in random order.
            pool = 50 * size
            order = np.concatenate(
                [p[np.argsort(lengths[p], kind="stable")] for p in np.array_split(order, -(-n_samples // pool))]
            )
            batches = [order[i : i + size] for i in range(0, n_samples, size)]
            return [batches[i] for i in (self.rng.permutation(len(batches)) if self.shuffle else range(len(batches)))]
        return [order[i : i + size] for i in range(0, n_samples, size)]

    def _train_batch(self, batch, epoch, number):
        """Updates for one batch, one per TBPTT window; yields (loss, grad norm)."""
        windows = _Windows(self, batch, batch.n_steps)
        for index in range(len(windows.bounds)):
            loss, grad, n_active, _ = windows.gradient(self.network, index)
            if grad is None:
                continue
            step = self._step(loss, grad, n_active, epoch, number)
            if step is not None:
                yield step

    def _window_bounds(self, n_steps):
        """``(start, stop, loss_from)`` of each TBPTT window of ``n_steps`` steps.

        Windows end every ``k1`` steps (the last at ``n_steps``), reach back
        ``k2`` steps, and score only the steps after the previous end.
        """
        if not self.windows:
            return [(0, n_steps, 0)]
        k1, k2 = self.windows
        stops = [min(stop, n_steps) for stop in range(k1, n_steps + k1, k1)]
        return [(max(0, stop - k2), stop, (stop - 1) // k1 * k1) for stop in stops]

    def _step(self, loss, grad, n_batch, epoch, number):
        """Penalty, checks, clipping and one optimizer update; (loss, norm) or None."""
        params = self.network.params
        if self.alpha:
            loss += 0.5 * self.alpha * optim.l2_penalty(params, self._weight_mask) / n_batch
            optim.add_l2(grad, params, self._weight_mask, self.alpha / n_batch)
        if self.clip_norm is not None and self.clip_value is None:
            # The norm from the pass that clips: a second pass over the
            # gradient took 0.7 ms for an LSTM H=512's 2.1M parameters here.
            # A non-finite norm clips nothing.
            norm = optim.clip_by_norm(grad, self.clip_norm)
        else:
            norm = optim.global_norm(grad)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return self._nonfinite("loss or gradient", epoch, number)
        if self.clip_value is not None:
            optim.clip_by_value(grad, self.clip_value)
            if self.clip_norm is not None:
                optim.clip_by_norm(grad, self.clip_norm)
        optimizer = self._get_optimizer()
        # The network's scratch, so that it is kept between steps (no page
        # faults), left out of pickles and trimmed at the end of a fit.
        undo = _buffer(self.network._workspace(), ("undo",), (optimizer.undo_rows, params.size), params.dtype)
        if not optimizer.update(params, grad, self.learning_rate_, undo):
            return self._nonfinite("update", epoch, number)
        return loss, norm

    def _nonfinite(self, what, epoch, number):
        message = (
            f"non-finite {what} at epoch {epoch}, batch {number} (learning rate {self.learning_rate_:g}): "
            "the gradients are exploding; set clip_norm (e.g. 1.0) or a smaller learning_rate_init"
        )
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                message + "; the weights and the optimizer's state are those of the last finite step"
            )
        warnings.warn(message + "; step skipped", RuntimeWarning, stacklevel=4)
        return None

    def _get_optimizer(self):
        if self._optimizer is None:
            params = self.network.params
            if self.solver == "sgd":
                self._optimizer = _Momentum(params, self.momentum, self.nesterovs_momentum)
            elif self.solver == "rmsprop":
                self._optimizer = _RMSprop(params, self.rho, self.epsilon)
            else:
                decay = self.weight_decay if self.solver == "adamw" else 0.0
                self._optimizer = _Adam(params, self.beta_1, self.beta_2, self.epsilon, decay)
        return self._optimizer

    # --------------------------------------------------- convergence bookkeeping
    def _end_of_epoch(self, validation):
        """Early-stopping and schedule logic (scikit-learn's); True to stop."""
        if validation is not None:
            score = self._validation_score(validation)
            self.validation_scores_.append(score)
            improved = score > self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self.network.params.copy()
        else:
            loss = self.loss_curve_[-1]
            improved = loss < self.best_loss_ - self.tol
        if math.isfinite(self.loss_curve_[-1]) and self.loss_curve_[-1] < self.best_loss_:
            self.best_loss_ = self.loss_curve_[-1]
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1
        self._report()
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        if self.learning_rate == "adaptive" and self.learning_rate_ > 1e-6:
            self.learning_rate_ /= 5.0
            self._no_improvement_count = 0
            return False
        return True

    def _validation_score(self, validation):
        if self.score is not None:
            return float(self.score(self.network, validation.X, validation.y, validation.lengths, validation.weights))
        return -self.network.loss(
            validation.X, validation.y, validation.lengths, self.loss, self.output, sample_weight=validation.weights
        )

    def _report(self):
        """Progress: a tqdm bar on a terminal, else one line per epoch (logs)."""
        if not self.verbose:
            return
        values = {"loss": f"{self.loss_curve_[-1]:.6g}"}
        if self.validation_scores_:
            values["validation score"] = f"{self.validation_scores_[-1]:.6g}"
        values["grad norm"] = f"{self.grad_norm_curve_[-1]:.3g}"
        bar = self._progress_bar()
        if bar is not None:
            bar.set_postfix(values, refresh=False)
            bar.update(1)
            return
        line = ", ".join(f"{key} {value}" for key, value in values.items())
        print(f"Epoch {self.n_iter_}: {line}, {self.epoch_times_[-1]:.2f} s", flush=True)

    def _progress_bar(self):
        """The epoch bar, created on first use when stderr is a terminal."""
        if getattr(self, "_bar", None) is None and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.max_iter, unit="epoch", desc="training", leave=True)
        return getattr(self, "_bar", None)

    def _close_progress(self):
        if getattr(self, "_bar", None) is not None:
            self._bar.close()
            self._bar = None

    def _reset_history(self):
        self.loss_curve_, self.validation_scores_ = [], []
        self.grad_norm_curve_, self.epoch_times_ = [], []
        self.best_loss_ = math.inf
        self.best_validation_score_ = -math.inf
        self.n_iter_ = 0
        self.t_ = 0
        self.learning_rate_ = self.learning_rate_init
        self.interrupted_ = False
        self._no_improvement_count = 0
        self._best_params = None

    # ------------------------------------------------------------------- data
    def _check_data(self, X, y, lengths, sample_weight):
        net = self.network
        X = val.check_sequences(X, net.n_features, net.dtype)
        lengths = val.check_lengths(lengths, X.shape[0], X.shape[1])
        y = val.check_targets(y, self.loss, self.output, lengths, X.shape[1], net.n_outputs, net.dtype)
        weights = val.check_sample_weight(sample_weight, X.shape[0], net.dtype)
        return _Data(X, y, lengths, weights, self.output == "sequence")

    def _validation_split(self, data, validation_data):
        if validation_data is not None:
            X_val, y_val, *rest = validation_data
            return data, self._check_data(X_val, y_val, rest[0] if rest else None, None)
        n_samples = data.lengths.shape[0]
        n_validation = max(1, int(round(self.validation_fraction * n_samples)))
        if n_validation >= n_samples:
            raise ValueError(
                f"early_stopping needs more samples: {n_samples} leave none for training "
                f"with validation_fraction={self.validation_fraction}"
            )
        order = self.rng.permutation(n_samples)
        return data.take(np.sort(order[n_validation:])), data.take(np.sort(order[:n_validation]))

    # ------------------------------------------------------------------ L-BFGS
    def _fit_lbfgs(self, data):
        """Full-batch L-BFGS over the flat parameter vector (scipy)."""
        from scipy.optimize import minimize

        net = self.network
        if self.windows or self.dropout:
            raise ValueError("solver='lbfgs' trains full batches: it takes no truncate or dropout")
        n_samples = data.lengths.shape[0]
        start = time.perf_counter()

        def objective(flat):
            net.params[:] = flat
            loss, grad, _ = net.loss_and_grad_vector(
                data.X, data.y, data.lengths, self.loss, self.output, sample_weight=data.weights
            )
            if self.alpha:
                loss += 0.5 * self.alpha * optim.l2_penalty(net.params, self._weight_mask) / n_samples
                optim.add_l2(grad, net.params, self._weight_mask, self.alpha / n_samples)
            if not (math.isfinite(loss) and math.isfinite(optim.global_norm(grad))):
                raise FloatingPointError("non-finite loss or gradient in L-BFGS; try a smaller problem scale")
            return loss, grad.astype(np.float64)

        def record(intermediate_result):
            self.loss_curve_.append(float(intermediate_result.fun))

        initial = net.params.astype(np.float64)
        result = minimize(
            objective,
            initial,
            jac=True,
            method="L-BFGS-B",
            callback=record,
            options={"maxiter": self.max_iter, "gtol": self.tol},
        )
        net.params[:] = result.x
        self.n_iter_ = int(result.nit)
        self.t_ = n_samples * self.n_iter_
        self.best_loss_ = float(result.fun)
        self.epoch_times_.append(time.perf_counter() - start)
        if result.status == 1:
            _warn_not_converged(f"lbfgs failed to converge (status=1): {result.message}", stacklevel=4)


def _warn_not_converged(message, stacklevel):
    """Warn with scikit-learn's ConvergenceWarning when scikit-learn is loaded.

    Otherwise with the package's stand-in: importing scikit-learn costs about
    2 s, which users of the engine alone should not pay, and a process that
    has not loaded it cannot be filtering its warnings.
    """
    exceptions = sys.modules.get("sklearn.exceptions")
    category = val.ConvergenceWarning if exceptions is None else exceptions.ConvergenceWarning
    warnings.warn(message, category, stacklevel=stacklevel)


class _Windows:
    """TBPTT(k1, k2) over one batch: its windows, and the state carried across them.

    `gradient` gives each window's loss and gradient with the weights of the
    moment (the caller updates between windows) and carries the state on, as
    a stateful TBPTT does; the state at the start of an overlapping window is
    computed before that update.  A worker of a distributed fit holds one of
    these for its share of a global batch (``bptt_numba.dask``).
    """

    def __init__(self, trainer, batch, n_steps):
        self.trainer, self.batch = trainer, batch
        self.bounds = trainer._window_bounds(n_steps)
        self.state = None  # zeros: every batch starts its sequences afresh

    def gradient(self, network, index):
        """``(loss, grad, n_active, normaliser)`` of window ``index``.

        ``grad`` is None when the window scores nothing here; ``n_active``
        (the sequences still running, which scale the L2 penalty) is counted
        all the same.
        """
        trainer, batch = self.trainer, self.batch
        start, stop, loss_from = self.bounds[index]
        active = np.nonzero(batch.lengths > start)[0]
        if active.size == 0:
            return 0.0, None, 0, 0.0
        window = batch.window(active, start, stop)
        window_state = _take_state(self.state, active)
        if trainer.output == "last":
            # Only sequences ending inside the loss region are scored.
            ends = batch.lengths[active] - 1
            window.weights[(ends < loss_from) | (ends >= stop)] = 0
        has_next = index + 1 < len(self.bounds)
        next_start = self.bounds[index + 1][0] if has_next else stop
        # The state at this window's end goes on to a next window starting
        # there or later; after the last window nothing reads it, so it is
        # neither computed nor copied.
        carry_final = has_next and next_start >= stop
        carried = None
        if next_start < stop:
            # TBPTT(k1, k2 > k1): the next window re-unrolls part of this one.
            carried = window_state
            if next_start > start:
                head = np.minimum(window.lengths, next_start - start)
                carried = network._final_state(
                    network._valid_batch(window.X[:, : next_start - start], head, window_state)
                )
        result = (0.0, None, len(active), 0.0)
        scores = window.weights.sum() > 0
        if scores or carry_final:
            # `fit` validated the data, and the state is the network's own:
            # the window goes in unchecked, its final state chunked until needed.
            chunked = network._valid_batch(window.X, window.lengths, window_state)
        if scores:
            backprop = network._backprop_batch(
                chunked, window.y, window.weights, trainer.loss, trainer.output, 0, loss_from - start,
                trainer.dropout, trainer.rng,
            )
            if carry_final:
                carried = network._user_state(backprop.chunked_state, backprop.n_samples)
            scored = window.weights if trainer.output == "last" else (
                window.weights * np.maximum(window.lengths - (loss_from - start), 0)
            )
            result = (backprop.loss, backprop.grad, len(active), float(scored.astype(np.float64).sum()))
        elif carry_final:
            carried = network._final_state(chunked)
        if carried is not None:  # None: still the zero initial state
            self.state = _put_state(self.state, active, carried, batch.n_samples)
        return result


def train(network, X, y, lengths=None, sample_weight=None, validation_data=None, **options):
    """Fit ``network`` in place; returns the fitted `Trainer` (its history).

    Parameters
    ----------
    network : Network
    X, y, lengths, sample_weight, validation_data
        As for `Trainer.fit`.
    **options
        `Trainer` parameters.

    Returns
    -------
    Trainer
    """
    return Trainer(network, **options).fit(X, y, lengths, sample_weight, validation_data)


def make_streams(series, n_streams, horizon=1):
    """Cut one long series into parallel streams for stateful TBPTT training.

    The classic language-model batching: the series is split into
    ``n_streams`` contiguous pieces trained side by side, so a single
    sequence of a million steps still fills a batch; with ``truncate``
    windows memory stays bounded by the window.

    Parameters
    ----------
    series : array-like of shape (n_steps,) or (n_steps, n_features)
    n_streams : int
    horizon : int, default=1
        Targets are the series ``horizon`` steps ahead.

    Returns
    -------
    X : ndarray of shape (n_streams, L, n_features)
    y : ndarray of shape (n_streams, L, n_features)
        For ``output="sequence"`` training.
    """
    series = np.asarray(series)
    if series.ndim == 1:
        series = series[:, None]
    if series.ndim != 2:
        raise ValueError(f"series must be 1-D or 2-D (n_steps, n_features); got shape {series.shape}")
    n_streams = val.check_positive_int("n_streams", n_streams)
    horizon = val.check_positive_int("horizon", horizon)
    length = (series.shape[0] - horizon) // n_streams
    if length < 1:
        raise ValueError(f"a series of {series.shape[0]} steps is too short for {n_streams} streams")
    inputs = series[: n_streams * length]
    targets = series[horizon : horizon + n_streams * length]
    shape = (n_streams, length, series.shape[1])
    return np.ascontiguousarray(inputs.reshape(shape)), np.ascontiguousarray(targets.reshape(shape))


# ----------------------------------------------------------------------- data
class _Data:
    """A validated training set (or one batch, or one window of it)."""

    def __init__(self, X, y, lengths, weights, per_step):
        self.X, self.y, self.lengths, self.weights = X, y, lengths, weights
        self.per_step = per_step  # y has a time axis ("sequence" output)

    @property
    def n_samples(self):
        return self.lengths.shape[0]

    @property
    def n_steps(self):
        """Steps of the longest sequence (the batch is trimmed to it)."""
        return int(self.lengths.max())

    def take(self, rows):
        """The given samples, trimmed to their longest sequence."""
        lengths = self.lengths[rows]
        steps = int(lengths.max())
        y = self.y[rows, :steps] if self.per_step else self.y[rows]
        return _Data(self.X[rows, :steps], y, lengths, self.weights[rows], self.per_step)

    def window(self, rows, start, stop):
        """Samples ``rows`` over steps ``start .. stop`` (their valid part).

        ``rows`` are sorted, distinct, and still running at ``start``.  With
        every sample the arrays are views, the weights (which the caller
        edits) excepted: the copy of ``X`` took 60-90 us of a 3.5 ms LSTM
        H=64 B=64 step of ``fit`` here, and the network copies it again into
        its chunk-major layout (``Network._valid_batch``).  ``np.clip`` for
        the lengths took another 40 us there.
        """
        if rows.shape[0] == self.n_samples:
            rows = slice(None)
        y = self.y[rows, start:stop] if self.per_step else self.y[rows]
        lengths = np.minimum(self.lengths[rows] - start, stop - start)
        return _Data(self.X[rows, start:stop], y, lengths, self.weights[rows].copy(), self.per_step)


def _take_state(state, rows):
    """The state of some samples (None stays None)."""
    if state is None:
        return None
    return [tuple(a[:, rows] for a in s) if isinstance(s, tuple) else s[:, rows] for s in state]


def _put_state(state, rows, part, n_samples):
    """Write the state of samples ``rows`` into the batch's state."""
    if state is None:
        state = [
            tuple(np.zeros((a.shape[0], n_samples, a.shape[2]), a.dtype) for a in p)
            if isinstance(p, tuple)
            else np.zeros((p.shape[0], n_samples, p.shape[2]), p.dtype)
            for p in part
        ]
    for whole, piece in zip(state, part):
        if isinstance(whole, tuple):
            for w, q in zip(whole, piece):
                w[:, rows] = q
        else:
            whole[:, rows] = piece
    return state


@contextmanager
def _interruptible():
    """Turn Ctrl-C into a flag the loop checks after each batch.

    Yields a callable telling whether Ctrl-C was pressed.  Only the main
    thread can install signal handlers; elsewhere Ctrl-C is not caught.
    """
    pressed = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
