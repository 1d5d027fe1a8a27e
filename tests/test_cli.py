"""The ``bptt-numba`` command and the examples, driven as a user would (subprocesses)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bptt_numba import datasets

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None, timeout=300):
    """``python -m bptt_numba ARGS``; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "bptt_numba", *map(str, args)], capture_output=True, text=True, cwd=cwd,
        timeout=timeout,
    )


def test_demo_trains_beats_the_baseline_and_writes_plots(tmp_path):
    result = run("demo", "--out", tmp_path / "plots", "--epochs", "8")
    assert result.returncode == 0, result.stderr
    assert "Epoch 8: loss" in result.stdout
    line = next(l for l in result.stdout.splitlines() if l.startswith("test MSE"))
    mse, baseline = float(line.split()[2]), float(line.split()[6])
    assert mse < baseline / 3
    pytest.importorskip("matplotlib")
    for name in ("loss_curve.png", "predictions.png", "gradient_flow.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_train_then_predict_round_trip(tmp_path):
    series = datasets.make_sine_series(600, random_state=0)
    csv = tmp_path / "series.csv"
    np.savetxt(csv, series, delimiter=",", header="value", comments="")
    result = run("train", csv, "--model", tmp_path / "forecaster.npz", "--epochs", "3", "--hidden", "8", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "trained a forecaster" in result.stdout
    result = run("predict", tmp_path / "forecaster.npz", "--horizon", "5")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 5

    X, y = datasets.make_adding_problem(120, 12, random_state=0)
    lengths = np.random.default_rng(0).integers(6, 13, size=120)
    npz = tmp_path / "windows.npz"
    np.savez(npz, X=X, y=y, lengths=lengths)
    result = run("train", npz, "--model", tmp_path / "regressor.npz", "--epochs", "3", "--cell", "gru",
                 "--truncate", "4", "8", "--clip-norm", "1.0", "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "predictions.npy"
    result = run("predict", tmp_path / "regressor.npz", npz, "--out", out)
    assert result.returncode == 0, result.stderr
    from bptt_numba import load

    model = load(tmp_path / "regressor.npz")
    expected = model.predict([x[:n] for x, n in zip(X, lengths)])
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.csv", "--model", "m.npz"], "no such file: missing.csv"),
        (["train", "data.txt", "--model", "m.npz"], "unknown data format '.txt'"),
        (["train", "bad.csv", "--model", "m.npz"], "not a CSV of numbers"),
        (["train", "empty.npz", "--model", "m.npz"], "needs arrays 'X' and 'y'"),
        (["predict", "bad.csv", "bad.csv"], "not a readable bptt-numba model file"),
        (["train", "--frobnicate"], "unrecognized arguments|required"),
        (["fly"], "invalid choice"),
        (["train", "series.npy", "--model", "m.npz", "--epochs", "0", "--quiet"], "max_iter must be >= 1"),
    ],
)
def test_bad_files_and_flags_get_one_clear_line(tmp_path, args, message):
    (tmp_path / "data.txt").write_text("1,2\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    np.savez(tmp_path / "empty.npz", Z=np.zeros(3))
    np.save(tmp_path / "series.npy", np.sin(np.arange(50.0)))
    result = run(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("bptt-numba: error:")
    import re

    assert re.search(message, lines[0]), lines[0]


def test_info_names_threads_blas_and_cache():
    result = run("info")
    assert result.returncode == 0, result.stderr
    for word in ("threading layer:", "threads:", "BLAS:", "NUMBA_CACHE_DIR"):
        assert word in result.stdout


def test_bench_runs_our_side_quickly():
    result = run("bench", "--quick", "--repeat", "1", "--rounds", "1", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "inference latency" in result.stdout and "lstm" in result.stdout


def test_bench_scaling_prints_a_row_per_thread_count():
    import numba

    from bptt_numba._bench import thread_counts

    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    result = run("bench", "--scaling", "--threads", threads, "--repeat", "1", "--rounds", "1", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:1] == " "]
    assert [int(row[0]) for row in rows] == thread_counts(threads)
    ours_ms, efficiency, machine = (np.array([float(row[i]) for row in rows]) for i in (1, 5, 7))
    assert np.all(ours_ms > 0) and efficiency[0] == 1.0 and np.all(machine > 0)


@pytest.mark.parametrize("counts", [(1, [1]), (2, [1, 2]), (12, [1, 2, 4, 8, 12]), (16, [1, 2, 4, 8, 16])])
def test_thread_counts_double_up_to_the_limit(counts):
    from bptt_numba._bench import thread_counts

    limit, expected = counts
    assert thread_counts(limit) == expected


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_examples_run(script, tmp_path):
    if script == "classify_digits.py":
        pytest.importorskip("sklearn")
    result = subprocess.run([sys.executable, ROOT / "examples" / script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
