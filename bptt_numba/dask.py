"""Data-parallel training of one model over Dask workers.

``fit(estimator, X, y, client=client)`` trains an `RNNRegressor` or
`RNNClassifier` with its shards of the data persisted on the workers.  Each
step every worker computes the loss and gradient of its share of the global
mini-batch with the same parameters; the client sums them weighted by each
share's normaliser (so the result is the gradient of the whole batch) and
applies one optimizer update.  The result equals single-process training with
the same global batches, up to rounding.  ``averaging="model"`` is the
cheaper-communication alternative: each worker takes ``sync_every`` local
steps on its own shard, then the parameters are averaged weighted by sample
counts; it is *not* equivalent to single-process training.

Dask is an optional extra (``pip install "bptt-numba[dask]"``); grid and
randomized searches run on a cluster through joblib's Dask backend, and
``partial_fit`` works under dask-ml's ``Incremental`` wrapper, without
anything from this module.
"""

import copy

import numpy as np

from . import _validation as val
from .network import Network

AVERAGING = ("gradient", "model")


def fit(estimator, X, y, *, client, sample_weight=None, averaging="gradient", sync_every=10):
    """Train ``estimator`` on data spread over the workers of ``client``.

    Parameters
    ----------
    estimator : RNNRegressor or RNNClassifier
        Its parameters set the model and the training, TBPTT windows
        (``truncate``) included: each worker carries the state of its own
        sequences across the windows.  Dropout masks are drawn on the
        workers, so with ``dropout`` the result is not the single-process one.
    X : array-like or dask array of shape (n_samples, n_timesteps[, n_features])
    y : array-like or dask array
    client : distributed.Client
    sample_weight : array-like of shape (n_samples,), optional
    averaging : {"gradient", "model"}, default="gradient"
    sync_every : int, default=10
        Local steps between parameter averages (``averaging="model"``).

    Returns
    -------
    estimator
        Fitted; the same object.
    """
    val.check_choice("averaging", averaging, AVERAGING)
    X = X.compute() if hasattr(X, "compute") else X  # dask arrays; lists of sequences stay lists
    y = y.compute() if hasattr(y, "compute") else y
    # Validate and encode locally, as the estimator's own fit does.
    local = copy.deepcopy(estimator)
    X_arr, lengths, _ = local._sequences(X, reset=True)
    targets, local.n_outputs_ = local._targets(y, lengths, X_arr.shape[1], reset=True, classes=None)
    weights = local._sample_weight(sample_weight, targets, lengths)
    if weights is None:
        weights = np.ones(len(lengths), dtype=X_arr.dtype)
    network = Network(
        X_arr.shape[2], estimator.hidden_layer_sizes, cell=estimator.cell, n_outputs=local.n_outputs_,
        bidirectional=estimator.bidirectional, nonlinearity=estimator.nonlinearity, dtype=estimator.dtype,
        random_state=val.as_generator(estimator.random_state),
    )
    trainer = estimator._make_trainer(network, len(lengths))
    shards = _scatter(client, X_arr, targets, lengths, weights)
    if averaging == "gradient":
        _gradient_averaging(client, trainer, shards, lengths, estimator)
    else:
        _model_averaging(client, trainer, shards, lengths, estimator, val.check_positive_int("sync_every", sync_every))
    local.trainer_ = trainer
    local.network_ = trainer.network
    local.loss_curve_ = list(trainer.loss_curve_)
    local.n_iter_ = trainer.n_iter_
    local.t_ = trainer.t_
    local.best_loss_ = trainer.best_loss_
    estimator.__dict__.update({k: v for k, v in vars(local).items() if k.endswith("_") or k.startswith("_")})
    return estimator


class _Shard:
    """One worker's rows of the training set: futures and the global row numbers."""

    def __init__(self, worker, rows, futures):
        self.worker, self.rows, self.futures = worker, rows, futures


def _scatter(client, X, y, lengths, weights):
    """Split the rows over the workers and persist each part on its worker."""
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError("the Dask client has no workers")
    parts = np.array_split(np.arange(len(lengths)), len(workers))
    shards = []
    for worker, rows in zip(workers, parts):
        if len(rows) == 0:
            continue
        data = (X[rows], y[rows], lengths[rows], weights[rows])
        futures = client.scatter(list(data), workers=[worker], broadcast=False)
        shards.append(_Shard(worker, rows, futures))
    return shards


#: The TBPTT windows of the batch shares a worker is training, by fit and worker.
_WINDOWS = {}


def _window_share(network, X, y, lengths, weights, local_rows, key, index, n_steps, trainer):
    """On a worker: window ``index`` of its share of a global batch.

    Returns the loss and gradient sums and their normaliser (zeros when the
    share scores nothing in this window), and the share's active samples.
    The window's state stays on the worker for the next window.
    """
    from distributed import get_worker

    from .training import _Data, _Windows

    slot = (key, get_worker().address)
    if index == 0:
        share = _Data(X, y, lengths, weights, trainer.output == "sequence").take(local_rows)
        # As `Trainer.fit` checks its data: the windows go to the network unchecked.
        share = trainer._check_data(share.X, share.y, share.lengths, share.weights)
        _WINDOWS[slot] = _Windows(trainer, share, n_steps)
    windows = _WINDOWS[slot]
    result = windows.gradient(network, index)
    if index == len(windows.bounds) - 1:
        del _WINDOWS[slot]
    loss, grad, n_active, normaliser = result
    if grad is None:
        return 0.0, None, 0.0, n_active
    return loss * normaliser, grad * grad.dtype.type(normaliser), normaliser, n_active


def _gradient_averaging(client, trainer, shards, lengths, estimator):
    """One update per TBPTT window of each global batch, from the workers' shares."""
    owner = np.empty(len(lengths), dtype=np.int64)
    local_index = np.empty(len(lengths), dtype=np.int64)
    for number, shard in enumerate(shards):
        owner[shard.rows] = number
        local_index[shard.rows] = np.arange(len(shard.rows))
    light = copy.copy(trainer)  # what the workers need: options, not the optimizer's state
    light._optimizer = None
    for _ in range(trainer.max_iter):
        losses, norms, sizes = [], [], []
        for number, rows in enumerate(trainer._batches(lengths)):
            n_steps = int(lengths[rows].max())
            key = (id(trainer), trainer.n_iter_, number)
            holders = [(shard, local_index[rows[owner[rows] == i]]) for i, shard in enumerate(shards)]
            holders = [(shard, mine) for shard, mine in holders if mine.size]
            for index in range(len(trainer._window_bounds(n_steps))):
                futures = [
                    client.submit(
                        _window_share, trainer.network, *shard.futures, mine, key, index, n_steps,
                        light if index == 0 else None, workers=[shard.worker], allow_other_workers=False, pure=False,
                    )
                    for shard, mine in holders
                ]
                parts = _gather(client, futures, trainer.n_iter_ + 1, number + 1)
                n_active = sum(p[3] for p in parts)
                parts = [p for p in parts if p[1] is not None]
                normaliser = sum(p[2] for p in parts)
                if normaliser == 0:
                    continue
                grad = sum(p[1] for p in parts)
                grad /= grad.dtype.type(normaliser)
                step = trainer._step(sum(p[0] for p in parts) / normaliser, grad, n_active, trainer.n_iter_ + 1,
                                     number + 1)
                if step is not None:
                    losses.append(step[0])
                    norms.append(step[1])
                    sizes.append(len(rows))
        _end_epoch(trainer, losses, norms, sizes, len(lengths))
        if trainer._end_of_epoch(None):
            break


def _local_training(trainer, X, y, lengths, weights, n_steps, seed):
    """On a worker: ``n_steps`` mini-batch updates on its own shard.

    Returns the parameters and the mean loss of those steps.
    """
    trainer = copy.deepcopy(trainer)
    trainer.rng = np.random.default_rng(seed)
    # Checked once, as `Trainer.fit` does: the windows go to the network unchecked.
    data = trainer._check_data(X, y, lengths, weights)
    losses = []
    while len(losses) < n_steps:
        for rows in trainer._batches(lengths):
            losses.extend(loss for loss, _ in trainer._train_batch(data.take(rows), 1, len(losses) + 1))
            if len(losses) >= n_steps:
                break
    return trainer.network.params, float(np.mean(losses))


def _model_averaging(client, trainer, shards, lengths, estimator, sync_every):
    """Local steps on every worker, then parameters averaged by sample counts."""
    counts = np.array([len(s.rows) for s in shards], dtype=np.float64)
    steps_per_epoch = -(-len(lengths) // trainer.batch_size)
    rounds = max(1, trainer.max_iter * steps_per_epoch // sync_every)
    for round_number in range(rounds):
        seeds = trainer.rng.integers(2**31, size=len(shards))
        futures = [
            client.submit(_local_training, trainer, *shard.futures, sync_every, int(seeds[i]),
                          workers=[shard.worker], allow_other_workers=False, pure=False)
            for i, shard in enumerate(shards)
        ]
        results = _gather(client, futures, round_number + 1, sync_every)
        trainer.network.params[:] = sum(c * p for c, (p, _) in zip(counts, results)) / counts.sum()
        trainer.loss_curve_.append(float(np.average([loss for _, loss in results], weights=counts)))
        trainer.t_ += sync_every * trainer.batch_size
        trainer.n_iter_ = round_number + 1
    trainer.best_loss_ = min(trainer.loss_curve_)


#: Seconds a step may wait for its workers before training stops.
STEP_TIMEOUT = 300


def _gather(client, futures, epoch, step):
    """Results of a step's tasks, or a clear error if a worker was lost."""
    from distributed import wait

    try:
        wait(futures, timeout=STEP_TIMEOUT)
        return client.gather(futures)
    except Exception as error:  # KilledWorker, CommClosedError, lost data, time-out...
        raise RuntimeError(
            f"a Dask worker failed during epoch {epoch}, step {step} ({type(error).__name__}: {error}); "
            "the model keeps the weights of the last completed step"
        ) from error


def _end_epoch(trainer, losses, norms, sizes, n_samples):
    """The history a `Trainer` epoch records (see ``Trainer._epoch``)."""
    trainer.t_ += n_samples
    trainer.n_iter_ += 1
    trainer.loss_curve_.append(float(np.average(losses, weights=sizes)) if losses else float("nan"))
    trainer.grad_norm_curve_.append(float(np.mean(norms)) if norms else float("nan"))
    trainer.epoch_times_.append(float("nan"))
    if trainer.learning_rate == "invscaling":
        trainer.learning_rate_ = trainer.learning_rate_init / (trainer.t_ + 1) ** trainer.power_t
