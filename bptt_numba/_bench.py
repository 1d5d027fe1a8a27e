"""Head-to-head training step and inference latency against PyTorch on the CPU.

Usage::

    bptt-numba bench [--threads N] [--repeat R] [--quick | --scaling]
    python benchmarks/compare_torch.py [--threads N] [--repeat R] [--quick | --scaling]

The same step on both sides: forward, MSE on the last step, backward through
time, global-norm gradient clipping (1.0), one Adam update; float32; the same
thread count for both (Numba threads for ours, ``torch.set_num_threads`` for
torch; BLAS held to one thread on our side, as the package does itself).
After a warm-up, each process times the median of ``--repeat`` steps per
case; the sides run in ``--rounds`` alternating pairs of fresh processes, and
the table reports each case's best median over the rounds (this machine's
neighbours slow whole processes down by up to 2x at random), with the ratio
torch/ours (above 1: we are faster), our GFLOP/s counted as
``6 * G * H * (D + H) * B * T`` per step (G = 4/3/1 for LSTM/GRU/RNN), and the
machine's float32 GEMM rate at the same thread count as the ceiling.  Torch
is optional: without it only our side is measured.

``--scaling`` times one larger case instead at 1, 2, 4, ... threads up to
``--threads``, with each side's speed-up and our parallel efficiency, beside
what the machine allows (`product_ms`).
"""

import argparse
import json
import platform
import subprocess
import sys
import time

import numba
import numpy as np
from numba import prange

from ._config import kernel
from ._kernels import optim
from ._kernels._products import packed, panel_matmul
from ._kernels.layers import _buffer
from .network import Network
from .training import _Adam

GRID = [
    ("lstm", 32, 32, 100, 8),
    ("lstm", 64, 64, 28, 28),
    ("lstm", 128, 32, 100, 32),
    ("lstm", 512, 16, 25, 512),
    ("lstm", 512, 64, 100, 128),
    ("gru", 64, 16, 200, 4),
    ("gru", 256, 32, 100, 32),
    ("rnn", 64, 32, 100, 8),
    ("rnn", 256, 32, 100, 32),
    ("lstm", 64, 1, 500, 4),
]
QUICK_GRID = [row for row in GRID if row[1] * row[2] * row[3] <= 64 * 64 * 100]
#: The case whose training step is timed at 1, 2, 4, ... threads (``--scaling``).
SCALING_CASE = ("lstm", 128, 256, 100, 32)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def median_ms(step, repeat, warmup=2):
    """Median wall time of ``step()`` in milliseconds after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def ours(cell, hidden, batch, steps, features, seed=0):
    """One bptt-numba training step (and a forward-only call) for a case."""
    rng = np.random.default_rng(seed)
    net = Network(features, (hidden,), cell=cell, random_state=seed)
    X = rng.standard_normal((batch, steps, features)).astype(np.float32)
    y = rng.standard_normal((batch, 1)).astype(np.float32)
    adam = _Adam(net.params, 0.9, 0.999, 1e-8, 0.0)

    def step():
        _, grad, _ = net.loss_and_grad_vector(X, y)
        optim.clip_by_norm(grad, 1.0)
        # The update's scratch as `Trainer._step` takes it.
        undo = _buffer(net._workspace(), ("undo",), (adam.undo_rows, net.params.size), net.params.dtype)
        adam.update(net.params, grad, 1e-3, undo)

    return step, lambda: net.forward(X)


def theirs(torch, cell, hidden, batch, steps, features, seed=0):
    """The same step in PyTorch (nn.LSTM/GRU/RNN + Linear, Adam)."""
    torch.manual_seed(seed)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    rnn = module(features, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, 1)
    parameters = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(parameters, lr=1e-3)
    X = torch.randn(batch, steps, features)
    y = torch.randn(batch, 1)

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = rnn(X)
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        opt.step()

    def forward():
        with torch.inference_mode():
            out, _ = rnn(X)
            head(out[:, -1])

    return step, forward


def gemm_gflops(threads, n=2048, repeat=10):
    """The machine's float32 GEMM rate with ``threads`` BLAS threads.

    The best of ``repeat`` products, not their median: it is a ceiling, and
    a neighbour's load here once halved the median.
    """
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - start)
    return 2 * n**3 / min(seconds) / 1e9


def measure(side, threads, repeat, grid, with_latency=True):
    """Timings of one side, in this process: (step ms per row, latency ms per cell if ``with_latency``)."""
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
        # Our kernels flush denormals; without this torch's steps slowed down
        # 2-17x here as training produced them, which would flatter us.
        torch.set_flush_denormal(True)
        build = lambda *case: theirs(torch, *case)  # noqa: E731
    else:
        # Only here: starting Numba's thread pool in torch's process slowed
        # torch's GRU and RNN steps down several times.
        numba.set_num_threads(threads)
        build = ours
    steps = []
    for cell, hidden, batch, n_steps, features in grid:
        flops = 6 * GATES[cell] * hidden * (features + hidden) * batch * n_steps
        steps.append(median_ms(build(cell, hidden, batch, n_steps, features)[0], max(3, min(repeat, int(2e10 / flops)))))
    latency = {cell: median_ms(build(cell, 64, 1, 100, 8)[1], repeat) for cell in GATES} if with_latency else {}
    return {"steps": steps, "latency": latency, "layer": numba.threading_layer() if side == "ours" else None}


def run_side(side, args, threads=None):
    """`measure` in a fresh process (at ``threads``, default ``args.threads``); None if that side cannot run."""
    command = [sys.executable, "-m", "bptt_numba._bench", "--side", side,
               "--threads", str(threads or args.threads), "--repeat", str(args.repeat)]
    if args.quick:
        command.append("--quick")
    if args.scaling:
        command.append("--scaling")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        if side == "torch" and "No module named 'torch'" in result.stderr:
            return None
        raise RuntimeError(f"{side} side failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _best_of_rounds(args, threads=None):
    """Both sides in ``args.rounds`` alternating processes (at ``threads``, default ``args.threads``).

    Returns
    -------
    mine, other : dict
        As from `measure`, with each case's best median over the rounds
        (``other`` is None without torch).
    """
    runs = {"ours": [], "torch": []}
    for _ in range(args.rounds):
        for side, results in runs.items():
            if results != [None]:  # [None]: torch is not installed
                results.append(run_side(side, args, threads))
    return _best(runs["ours"]), _best(runs["torch"])


def _best(results):
    """Each case's fastest median over several `measure` results (None if absent)."""
    if results == [None]:
        return None
    steps = np.min([r["steps"] for r in results], axis=0).tolist()
    latency = {cell: min(r["latency"][cell] for r in results) for cell in results[0]["latency"]}
    return {"steps": steps, "latency": latency, "layer": results[0]["layer"]}


def add_arguments(parser):
    """The benchmark's command-line options (shared with ``bptt-numba bench``)."""
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS, help="threads for both sides")
    parser.add_argument("--repeat", type=int, default=20, help="timed steps per case (median reported)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating processes per side (best median kept)")
    parser.add_argument("--quick", action="store_true", help="only the small rows")
    parser.add_argument("--scaling", action="store_true",
                        help="time one case (LSTM H=128 B=256 T=100 D=32) at 1, 2, 4, ... up to --threads threads")
    parser.add_argument("--side", choices=["ours", "torch"], help=argparse.SUPPRESS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def run(args):
    """Measure both sides (each in its own process) and print the table."""
    grid = QUICK_GRID if args.quick else GRID
    if args.side:
        if args.scaling:
            grid = [SCALING_CASE]
        print(json.dumps(measure(args.side, args.threads, args.repeat, grid, with_latency=not args.scaling)))
        return
    if args.scaling:
        print_scaling(args)
        return
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba calls: list it too)
    from threadpoolctl import threadpool_info

    blas = ", ".join(f"{i['internal_api']} {i['version']} {i.get('architecture', '')}" for i in threadpool_info())
    mine, other = _best_of_rounds(args)
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "absent"
    print(f"# {platform.machine()}, {args.threads} threads, best of {args.rounds} rounds; "
          f"numba {numba.__version__} ({mine['layer']} layer), "
          f"numpy {np.__version__}, torch {torch_version}; BLAS: {blas}")
    print(f"# float32 GEMM ceiling at {args.threads} threads: {gemm_gflops(args.threads):.0f} GFLOP/s")
    print(f"{'cell':5} {'H':>4} {'B':>4} {'T':>4} {'D':>4} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'GFLOP/s':>8}")
    for index, (cell, hidden, batch, steps, features) in enumerate(grid):
        flops = 6 * GATES[cell] * hidden * (features + hidden) * batch * steps
        ms = mine["steps"][index]
        theirs_ms = other["steps"][index] if other else float("nan")
        print(f"{cell:5} {hidden:4d} {batch:4d} {steps:4d} {features:4d} {ms:9.2f} {theirs_ms:9.2f} "
              f"{theirs_ms / ms:6.2f} {flops / ms / 1e6:8.1f}")
    print("# inference latency, one sequence (B=1, T=100, H=64, D=8), ms")
    for cell in GATES:
        ms = mine["latency"][cell]
        theirs_ms = other["latency"][cell] if other else float("nan")
        print(f"{cell:5} ours {ms:7.3f}  torch {theirs_ms:7.3f}  ratio {theirs_ms / ms:5.2f}")


@kernel(parallel=True)
def _repeated_products(a, b, out, repeat):
    """Each task repeats one chunk's recurrent product on its own data."""
    for k in prange(a.shape[0]):
        for r in range(repeat):
            panel_matmul(a[k], b, out[k], r % 2 == 1)


def product_ms(threads, repeat=400):
    """Time of `_repeated_products` with one task per thread (best of 10, ms).

    The task is the time loop's product of an LSTM H=128 chunk, (16, 128) @
    (128, 512), on data in the core's cache: no memory traffic, no
    synchronisation but the region's end.  ``product_ms(1) / product_ms(n)``
    is the parallel efficiency this machine allows at ``n`` threads (1.0 when
    ``n`` busy cores each run as fast as one alone; turbo clocks and shared
    cores lower it).
    """
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((threads, 16, 128)).astype(np.float32)
        b = packed(rng.standard_normal((128, 512)).astype(np.float32), False, False)
        out = np.empty((threads, 16, b.shape[0] * b.shape[2]), dtype=np.float32)
        _repeated_products(a, b, out, repeat)
        seconds = []
        for _ in range(10):
            start = time.perf_counter()
            _repeated_products(a, b, out, repeat)
            seconds.append(time.perf_counter() - start)
        return 1e3 * min(seconds)
    finally:
        numba.set_num_threads(previous)


def thread_counts(limit):
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself."""
    counts = [1 << k for k in range(limit.bit_length()) if 1 << k < limit]
    return counts + [limit]


def print_scaling(args):
    """The scaling curve of `SCALING_CASE`: each side's best median per thread count.

    Beside it, ``machine``: the efficiency `product_ms` measures at each
    thread count, the most a compute-bound kernel can reach there.
    """
    cell, hidden, batch, steps, features = SCALING_CASE
    print(f"# {cell} H={hidden} B={batch} T={steps} D={features}, best of {args.rounds} rounds; "
          f"numba {numba.__version__}, {platform.machine()}")
    print(f"{'threads':>7} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'ours x':>7} {'eff':>5} {'torch x':>8} "
          f"{'machine':>8}")
    base = {}
    for threads in thread_counts(args.threads):
        mine, other = _best_of_rounds(args, threads)
        ms = {"ours": mine["steps"][0], "torch": other["steps"][0] if other else float("nan")}
        base = base or ms
        speedup = base["ours"] / ms["ours"]
        print(f"{threads:7d} {ms['ours']:9.2f} {ms['torch']:9.2f} {ms['torch'] / ms['ours']:6.2f} "
              f"{speedup:7.2f} {speedup / threads:5.2f} {base['torch'] / ms['torch']:8.2f} "
              f"{product_ms(1) / product_ms(threads):8.2f}", flush=True)


if __name__ == "__main__":
    main()
