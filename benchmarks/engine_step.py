"""First numbers of the engine: ms per training step and compile time.

Usage (from the repository root)::

    python benchmarks/engine_step.py [--cell lstm] [--hidden 128] [--batch 32]
        [--steps 100] [--features 32] [--dtype float32] [--repeat 30]

Prints the median wall time of ``Network.loss_and_grad_vector`` (forward,
MSE on the last step, full BPTT) and of ``Network.forward`` after a warm-up,
the import and the first ``RNNRegressor.fit`` in fresh processes with an empty
and with a warm Numba cache, and the peak memory of the first training step of a fresh
network (NumPy's allocations, traced) against what storing the activations
of the window takes.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import tracemalloc

import numpy as np

from bptt_numba._bench import median_ms
from bptt_numba._kernels import layers

# A batch of two chunks (`_config.batch_plan`), so that the fit compiles the sum of their gradient shares too.
FIRST_FIT = """
import time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import numpy as np
from bptt_numba import RNNRegressor
t1 = time.perf_counter()
X = np.random.default_rng(0).standard_normal((32, 3, {features})).astype({dtype!r})
model = RNNRegressor(({hidden},), cell={cell!r}, dtype={dtype!r}, batch_size=32, max_iter=1)
model.fit(X, X[:, -1, 0])
print(t1 - t0, time.perf_counter() - t1)
"""


def first_fit_seconds(args, cache_dir):
    """``(import, first fit)`` seconds in a fresh process using ``cache_dir``."""
    code = FIRST_FIT.format(**vars(args))
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return tuple(float(s) for s in out.stdout.split())


def activation_bytes(cell, hidden, batch, steps, itemsize):
    """Bytes of the tape backpropagation must keep: gates, states and the cell's extra buffer."""
    module = layers.CELLS[cell]
    kept = steps * module.N_GATES * hidden + (steps + 1) * hidden + math.prod(module.aux_shape(1, steps, 1, hidden, steps))
    return kept * batch * itemsize


def first_step_peak_bytes(net, X, y):
    """Peak traced memory of ``net``'s first training step (its buffers included)."""
    tracemalloc.start()
    try:
        net.loss_and_grad_vector(X, y)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache_dir:
        cold = first_fit_seconds(args, cache_dir)
        warm = first_fit_seconds(args, cache_dir)

    import numba

    from bptt_numba import Network

    rng = np.random.default_rng(0)
    net = Network(args.features, (args.hidden,), cell=args.cell, dtype=args.dtype, random_state=0)
    X = rng.standard_normal((args.batch, args.steps, args.features)).astype(args.dtype)
    y = rng.standard_normal((args.batch, 1)).astype(args.dtype)
    # Compile on another network first, with as many chunks (the shares' sum runs only with
    # several): the compiler's allocations are not the step's.
    Network(args.features, (args.hidden,), cell=args.cell, dtype=args.dtype).loss_and_grad_vector(X[:, :3], y)
    peak = first_step_peak_bytes(net, X, y)
    kept = activation_bytes(args.cell, args.hidden, args.batch, args.steps, np.dtype(args.dtype).itemsize)
    step = median_ms(lambda: net.loss_and_grad_vector(X, y), args.repeat)
    forward = median_ms(lambda: net.forward(X), args.repeat)
    flops = 6 * layers.CELLS[args.cell].N_GATES * args.hidden * (args.features + args.hidden) * args.batch * args.steps
    print(
        f"{args.cell} H={args.hidden} B={args.batch} T={args.steps} D={args.features} {args.dtype} "
        f"threads={numba.get_num_threads()} ({numba.threading_layer()}): "
        f"step {step:.2f} ms ({flops / step / 1e6:.1f} GFLOP/s), forward {forward:.2f} ms; "
        f"import + first fit: cold cache {cold[0]:.2f} + {cold[1]:.1f} s, warm cache {warm[0]:.2f} + {warm[1]:.2f} s; "
        f"first-step peak memory {peak / 2**20:.1f} MiB = {peak / kept:.2f}x the activations ({kept / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
