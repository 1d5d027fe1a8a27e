"""Kernel-level suites: one training step (forward + BPTT), the forward pass, the optimizer step."""

import numba
import numpy as np

from bptt_numba._bench import SCALING_CASE
from bptt_numba.training import Trainer

from .common import make_batch, make_network, warm_up


class TrainingStep:
    """Forward, MSE on the last step and full backward through time."""

    params = (["lstm", "gru", "rnn"], [32, 128], ["float32", "float64"])
    param_names = ["cell", "hidden", "dtype"]

    def setup(self, cell, hidden, dtype):
        self.net = make_network(cell, hidden, n_features=32, dtype=dtype)
        self.X, self.y = make_batch(32, 100, 32, dtype=dtype)
        warm_up(self.net)

    def time_loss_and_grad(self, cell, hidden, dtype):
        self.net.loss_and_grad_vector(self.X, self.y)

    def time_forward(self, cell, hidden, dtype):
        self.net.forward(self.X)

    def peakmem_loss_and_grad(self, cell, hidden, dtype):
        self.net.loss_and_grad_vector(self.X, self.y)


class Shapes:
    """LSTM step over batch size and sequence length (H = 64, D = 8)."""

    params = ([1, 8, 64], [25, 200])
    param_names = ["batch", "n_steps"]

    def setup(self, batch, n_steps):
        self.net = make_network("lstm", 64, n_features=8)
        self.X, self.y = make_batch(batch, n_steps, 8)
        warm_up(self.net)

    def time_loss_and_grad(self, batch, n_steps):
        self.net.loss_and_grad_vector(self.X, self.y)

    def time_forward(self, batch, n_steps):
        self.net.forward(self.X)


class TruncatedStep:
    """A long sequence under truncated BPTT: time and memory per window size."""

    params = ([None, 25, 100], [1000])
    param_names = ["truncate", "n_steps"]

    def setup(self, truncate, n_steps):
        self.net = make_network("lstm", 64, n_features=8)
        self.X, self.y = make_batch(16, n_steps, 8)
        warm_up(self.net, truncate)

    def time_loss_and_grad(self, truncate, n_steps):
        self.net.loss_and_grad_vector(self.X, self.y, truncate=truncate)

    def peakmem_loss_and_grad(self, truncate, n_steps):
        self.net.loss_and_grad_vector(self.X, self.y, truncate=truncate)


class OptimizerStep:
    """What `fit` does with a batch's gradient: L2 penalty, global-norm clip, one update.

    LSTM H=64 D=28 (25K parameters) and H=512 D=128 (1.3M), float32.  The
    gradient is reused: the penalty and the clip keep it finite.
    """

    params = (["adam", "sgd", "rmsprop"], [64, 512])
    param_names = ["solver", "hidden"]

    def setup(self, solver, hidden):
        self.net = make_network("lstm", hidden, n_features=28 if hidden == 64 else 128)
        self.trainer = Trainer(self.net, solver=solver, alpha=1e-4, clip_norm=1.0)
        self.grad = np.random.default_rng(0).standard_normal(self.net.params.size).astype(self.net.dtype)
        self.trainer._step(0.0, self.grad, 32, 1, 1)

    def time_step(self, solver, hidden):
        self.trainer._step(0.0, self.grad, 32, 1, 1)


class Threads:
    """The head-to-head's scaling case (LSTM H=128 B=256 T=100 D=32) over Numba threads.

    Thread counts beyond the machine's are skipped.
    """

    params = ([1, 2, 4, 8, 16],)
    param_names = ["threads"]

    def setup(self, threads):
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError(f"{threads} threads: this machine allows {numba.config.NUMBA_NUM_THREADS}")
        numba.set_num_threads(threads)
        cell, hidden, batch, n_steps, n_features = SCALING_CASE
        self.net = make_network(cell, hidden, n_features)
        self.X, self.y = make_batch(batch, n_steps, n_features)
        warm_up(self.net)

    def time_loss_and_grad(self, threads):
        self.net.loss_and_grad_vector(self.X, self.y)
