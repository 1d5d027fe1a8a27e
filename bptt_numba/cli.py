"""The ``bptt-numba`` command (also ``python -m bptt_numba``).

Sub-commands: ``demo`` (train on an embedded dataset, compare with a naive
baseline, write plots), ``train`` and ``predict`` (the user's data, models
saved in the pickle-free ``.npz`` format), ``bench`` (the head-to-head
against PyTorch) and ``info`` (versions, threads, BLAS, cache).

Data files for ``train``/``predict``:

- a long series to forecast: a CSV file (rows are time steps, columns are
  features; a header line is skipped) or a ``.npy`` file holding a 1-D or
  2-D array (n_timesteps[, n_features]);
- windowed sequences with targets: an ``.npz`` file with ``X``
  (n_samples, n_timesteps[, n_features]), ``y`` (n_samples[, n_outputs]) and
  optionally ``lengths`` (n_samples,) when sequences are padded; for
  ``predict``, ``y`` may be absent.
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, datasets, persistence
from ._compat import ConvergenceWarning
from .estimators import RNNClassifier, RNNForecaster, RNNRegressor


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, without the usage block."""

    def error(self, message):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def build_parser():
    """The argument parser of the ``bptt-numba`` command."""
    parser = _Parser(prog="bptt-numba", description="Train recurrent networks with BPTT on the CPU (Numba).")
    parser.add_argument("--version", action="version", version=f"bptt-numba {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="train on an embedded dataset and plot the results")
    demo.add_argument("--out", default="bptt-numba-demo", help="folder for the plots (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")

    train = commands.add_parser("train", help="train on your data and save the model")
    train.add_argument("data", help="a series (.csv/.npy) or windowed sequences (.npz with X, y[, lengths])")
    train.add_argument("--model", required=True, help="where to save the model (.npz)")
    train.add_argument("--classify", action="store_true", help="y holds class labels (windowed data only)")
    train.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    train.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden units per layer")
    train.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    train.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    train.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: auto)")
    train.add_argument("--solver", choices=["adam", "adamw", "sgd", "rmsprop", "lbfgs"], default="adam")
    train.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty on the weights")
    train.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this global norm")
    train.add_argument("--truncate", type=int, nargs="+", default=None, help="TBPTT window: k, or k1 k2")
    train.add_argument("--early-stopping", action="store_true", help="stop on a held-out validation split")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")

    predict = commands.add_parser("predict", help="predict with a saved model")
    predict.add_argument("model", help="a model saved by 'bptt-numba train' (.npz)")
    predict.add_argument("data", nargs="?", help="sequences (.npz/.npy), or a history series for a forecaster")
    predict.add_argument("--out", default="-", help="output file (.csv or .npy; default: standard output)")
    predict.add_argument("--horizon", type=int, default=10, help="steps to forecast (forecasters)")

    bench = commands.add_parser("bench", help="head-to-head training step against PyTorch (ours only without it)")
    from . import _bench

    _bench.add_arguments(bench)

    commands.add_parser("info", help="versions, threading layer, threads, BLAS and cache directory")
    return parser


def main(argv=None):
    """Run the command; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"bptt-numba: warning: {message}\n"
    try:
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args) or 0
    except _UsageError as error:
        print(f"bptt-numba: error: {error} (see bptt-numba --help)", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, KeyError, FloatingPointError) as error:
        print(f"bptt-numba: error: {error}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------- demo
def _demo(args):
    """Next-step forecasting of a noisy two-tone sine, against persistence."""
    series = datasets.make_sine_series(3000, periods=(20.0, 53.0), noise=0.05, random_state=0)
    X, y = datasets.make_windows(series, 40)
    split = int(0.8 * len(X))
    print(f"bptt-numba demo: next-step forecast of a noisy sine, {split} training windows of 40 steps")
    model = RNNRegressor(hidden_layer_sizes=(32,), max_iter=args.epochs, learning_rate_init=5e-3, batch_size=64,
                         clip_norm=1.0, random_state=0, verbose=not args.quiet)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[:split], y[:split])
    predicted = model.predict(X[split:])
    mse = float(np.mean((predicted - y[split:]) ** 2))
    baseline = float(np.mean((X[split:, -1, 0] - y[split:]) ** 2))
    print(f"trained in {time.perf_counter() - start:.1f} s (compilation included)")
    print(f"test MSE {mse:.5f}  vs  persistence baseline {baseline:.5f}  ({baseline / mse:.1f}x better)")
    flow = model.network_.gradient_flow(X[:64], y[:64])[0, 0]
    written = _demo_plots(Path(args.out), model.loss_curve_, y[split:], predicted, flow)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("matplotlib is not installed: no plots (pip install 'bptt-numba[plot]')")
    return 0


def _demo_plots(folder, loss_curve, truth, predicted, flow):
    """Loss curve, predictions against truth, gradient flow; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "loss_curve.png": (range(1, len(loss_curve) + 1), loss_curve, "epoch", "training loss (MSE)", "log"),
        "gradient_flow.png": (range(len(flow)), flow, "time step t", "||dLoss/dh_t||", "log"),
    }
    written = []
    for name, (xs, ys, xlabel, ylabel, scale) in figures.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(list(xs), ys)
        ax.set(xlabel=xlabel, ylabel=ylabel, yscale=scale)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(truth[:200], label="truth")
    ax.plot(predicted[:200], label="prediction")
    ax.set(xlabel="test step", ylabel="value")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "predictions.png", dpi=100)
    plt.close(fig)
    written.append(folder / "predictions.png")
    return written


# ---------------------------------------------------------- train, predict
def _read_data(path):
    """A series (2-D array) or a dict of arrays from a CSV, .npy or .npz file."""
    path = Path(path)
    if not path.exists():
        raise OSError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            values = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=_header_lines(path))
        except ValueError as error:
            raise ValueError(f"{path}: not a CSV of numbers ({error})") from None
        return values
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: unknown data format {suffix!r}; use .csv, .npy or .npz")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable {suffix} file of numeric arrays ({error})") from None
    if suffix == ".npy":
        return loaded
    with loaded as archive:
        return {key: archive[key] for key in archive.files}


def _header_lines(path):
    with open(path) as handle:
        first = handle.readline()
    try:
        [float(v) for v in first.split(",")]
    except ValueError:
        return 1
    return 0


def _train(args):
    data = _read_data(args.data)
    truncate = None if args.truncate is None else (args.truncate[0] if len(args.truncate) == 1 else tuple(args.truncate))
    common = dict(hidden_layer_sizes=tuple(args.hidden), cell=args.cell, max_iter=args.epochs, learning_rate_init=args.lr,
                  solver=args.solver, alpha=args.alpha, clip_norm=args.clip_norm, random_state=args.seed,
                  verbose=not args.quiet)
    if isinstance(data, dict):
        if "X" not in data or "y" not in data:
            raise ValueError(f"{args.data}: a sequences file needs arrays 'X' and 'y'; found {sorted(data)}")
        estimator = (RNNClassifier if args.classify else RNNRegressor)(
            **common, truncate=truncate, early_stopping=args.early_stopping,
            batch_size="auto" if args.batch_size is None else args.batch_size,
        )
        X = _unpad(data["X"], data.get("lengths"))
        estimator.fit(X, data["y"])
        kind = "classifier" if args.classify else "regressor"
    else:
        if args.classify:
            raise ValueError("--classify needs windowed sequences with labels (.npz with X and y), not a series")
        estimator = RNNForecaster(**common, **({} if truncate is None else {"truncate": truncate}))
        estimator.fit(data)
        kind = "forecaster"
    persistence.save(estimator, args.model)
    print(f"trained a {kind} for {estimator.n_iter_} epochs (final loss {estimator.loss_curve_[-1]:.6g}); "
          f"saved to {args.model}")
    return 0


def _unpad(X, lengths):
    """Padded sequences and their lengths as a list (or X itself without lengths)."""
    if lengths is None:
        return X
    lengths = np.asarray(lengths)
    if lengths.shape != (len(X),):
        raise ValueError(f"'lengths' must have one entry per sequence ({len(X)}); got shape {lengths.shape}")
    return [x[: int(n)] for x, n in zip(X, lengths)]


def _predict(args):
    model = persistence.load(args.model)
    if isinstance(model, RNNForecaster):
        history = None if args.data is None else _read_data(args.data)
        if isinstance(history, dict):
            raise ValueError("a forecaster's history is a series (.csv or .npy), not an .npz of sequences")
        result = model.predict(args.horizon, history=history)
    else:
        if args.data is None:
            raise ValueError("predict needs a data file for this model")
        data = _read_data(args.data)
        X = _unpad(data["X"], data.get("lengths")) if isinstance(data, dict) else data
        result = model.predict(X)
        if isinstance(result, list):
            raise ValueError("per-step predictions of ragged sequences: save them from Python (model.predict)")
    _write(np.asarray(result), args.out)
    return 0


def _write(values, out):
    if out == "-":
        np.savetxt(sys.stdout, values.reshape(len(values), -1), delimiter=",", fmt="%s")
    elif out.endswith(".npy"):
        np.save(out, values)
    else:
        np.savetxt(out, values.reshape(len(values), -1), delimiter=",", fmt="%s")
        print(f"wrote {len(values)} predictions to {out}", file=sys.stderr)


# ------------------------------------------------------------- bench, info
def _bench(args):
    from . import _bench as bench

    bench.run(args)
    return 0


def _info(args):
    import numba
    import scipy
    from threadpoolctl import threadpool_info

    from ._config import kernel_section
    from .network import Network

    Network(1, (1,)).forward(np.zeros((1, 1, 1)))  # start the threading layer so it can be named
    with kernel_section():
        pass
    print(f"bptt-numba {__version__}  (Python {sys.version.split()[0]})")
    print(f"numba {numba.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"threading layer: {numba.threading_layer()}; threads: {numba.get_num_threads()} "
          f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})")
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            print(f"BLAS: {lib['internal_api']} {lib['version']} ({lib.get('architecture')}), "
                  f"{lib['num_threads']} threads, {lib['filepath']}")
    cache = os.environ.get("NUMBA_CACHE_DIR") or "(unset: __pycache__ next to the package)"
    print(f"compile cache: NUMBA_CACHE_DIR={cache}")
    try:
        import sklearn

        print(f"scikit-learn {sklearn.__version__}")
    except ImportError:
        print("scikit-learn: not installed (optional)")
    return 0


_COMMANDS = {"demo": _demo, "train": _train, "predict": _predict, "bench": _bench, "info": _info}
