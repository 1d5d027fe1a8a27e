"""The kernels and their thin wrappers, one by one, against the reference."""

import re

import numba
import numpy as np
import pytest

import naive
from bptt_numba import _config
from bptt_numba._kernels import _products, _recurrence, activations, head, layers, losses
from problems import relative_error

def _layer_case(cell, seed=0, n_steps=6):
    """One layer's weights and a batch of 4 samples in 2 chunks of 2."""
    rng = np.random.default_rng(seed)
    batch, n_in, hidden = 4, 3, 5
    n_gates = layers.CELLS[cell].N_GATES
    params = naive.CellParams(
        rng.uniform(-0.7, 0.7, (n_gates * hidden, n_in)),
        rng.uniform(-0.7, 0.7, (n_gates * hidden, hidden)),
        rng.uniform(-0.5, 0.5, n_gates * hidden),
        rng.uniform(-0.5, 0.5, n_gates * hidden),
    )
    x = rng.normal(size=(batch, n_steps, n_in))
    lengths = np.array([n_steps, 1, 4, n_steps], dtype=np.int64)
    state0 = tuple(rng.normal(size=(batch, hidden)) for _ in range(layers.CELLS[cell].N_STATE))
    return params, x, lengths, state0


def _chunked(a):
    """(B, T, ...) -> (K, T, C, ...) with C = 2; (B, H) states -> (K, C, H)."""
    a = a.reshape((2, 2) + a.shape[1:])
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3)) if a.ndim == 4 else a


def _unchunked(a):
    """Inverse of `_chunked` for (K, T, C, ...) buffers."""
    return a.transpose(0, 2, 1, 3).reshape((4,) + a.shape[1:2] + a.shape[3:])


def _run_forward(cell, nonlinearity, params, x, lengths, state0, reverse, tape=True):
    return layers.forward(
        cell, _chunked(x), params.W_ih, params.b_ih, params.W_hh, params.b_hh,
        tuple(_chunked(s) for s in state0), lengths, reverse, nonlinearity == "relu", tape=tape,
    )


@pytest.mark.parametrize("cell, nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("keep_gates, n_steps", [(True, 6), (False, 6), (False, 19)])
def test_forward_wrapper_matches_reference_steps(cell, nonlinearity, reverse, keep_gates, n_steps, monkeypatch):
    monkeypatch.setattr(layers, "ROLLING_GATES", 0)  # roll these small gates too
    params, x, lengths, state0 = _layer_case(cell, n_steps=n_steps)
    tape = _run_forward(cell, nonlinearity, params, x, lengths, state0, reverse, keep_gates)
    assert tape[0].shape[1] == (n_steps if keep_gates else min(n_steps, _recurrence.PROJECTED_STEPS))
    h = _unchunked(tape[1])
    for b in range(x.shape[0]):
        state = tuple(s[b] for s in state0)
        for t in naive.processing_order(lengths[b], reverse):
            state, _ = naive.cell_step(cell, params, x[b, t], state, nonlinearity)
            np.testing.assert_allclose(h[b, t if reverse else t + 1], state[0], rtol=1e-12, atol=1e-13)
        final_slot = 0 if reverse else x.shape[1]
        for buffer, expected in zip(tape[1:1 + len(state)], state):
            np.testing.assert_allclose(_unchunked(buffer)[b, final_slot], expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell, nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("truncate", [0, 2])
def test_backward_wrapper_matches_reference(cell, nonlinearity, reverse, truncate):
    """Gradients of ``sum(dh_out * outputs)`` against the reference steps."""
    params, x, lengths, state0 = _layer_case(cell, seed=1)
    tape = _run_forward(cell, nonlinearity, params, x, lengths, state0, reverse)
    dh_out = np.random.default_rng(2).normal(size=(4, x.shape[1], params.W_hh.shape[1]))
    dh_out[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0.0
    # Added to what the gradients hold.
    grads = tuple(np.ones_like(p) for p in (params.W_ih, params.W_hh, params.b_ih, params.b_hh))
    dx = layers.backward(
        cell, _chunked(x), params.W_ih, params.W_hh, tape, lengths, reverse, truncate, 0, _chunked(dh_out),
        True, grads, nonlinearity == "relu",
    )
    expected = [np.zeros_like(p) for p in (params.W_ih, params.W_hh, params.b_ih, params.b_hh)]
    expected_dx = np.zeros_like(x)
    for b in range(x.shape[0]):
        caches, state = [], tuple(s[b] for s in state0)
        order = naive.processing_order(lengths[b], reverse)
        for t in order:
            state, cache = naive.cell_step(cell, params, x[b, t], state, nonlinearity)
            caches.append(cache)
        d_state = tuple(np.zeros_like(s) for s in state)
        for t, cache in zip(reversed(order), reversed(caches)):
            d_state = (d_state[0] + dh_out[b, t],) + d_state[1:]
            expected_dx[b, t], d_state, step = naive.cell_step_backward(cell, params, cache, d_state, nonlinearity)
            for total, part in zip(expected, (step.W_ih, step.W_hh, step.b_ih, step.b_hh)):
                total += part
            if truncate and naive.crosses_border(t, lengths[b], reverse, truncate):
                d_state = tuple(np.zeros_like(s) for s in d_state)
    for got, want in zip(grads, expected):
        assert relative_error(got - 1, want) < 1e-12
    assert relative_error(_unchunked(dx), expected_dx) < 1e-12


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "cross_entropy"])
def test_loss_kernels_match_reference(loss):
    rng = np.random.default_rng(0)
    out = rng.normal(scale=3.0, size=(7, 3))
    weight = rng.uniform(0.5, 2.0, size=7)
    if loss == "cross_entropy":
        target = rng.integers(0, 3, size=7)
        scale = 1.0 / weight.sum()
    else:
        target = rng.uniform(size=(7, 3)) if loss == "binary_cross_entropy" else rng.normal(size=(7, 3))
        scale = 1.0 / (3 * weight.sum())
    grad = np.empty_like(out)
    value = getattr(losses, loss)(out, target, weight, scale, grad)
    expected, expected_grad = naive.loss_and_output_grad(
        out, target, np.ones(7, np.int64), "last", loss, sample_weight=weight
    )
    assert value == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


def test_float32_tanh_is_accurate_and_bounded():
    from numba import njit

    @njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = activations.tanh(x[i])

    x = np.linspace(-20, 20, 400_001).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert np.abs(out - exact).max() <= 1e-6 * np.abs(exact).max()
    nonzero = exact != 0
    assert np.abs((out - exact)[nonzero] / exact[nonzero]).max() < 1e-6
    assert np.abs(out).max() <= 1.0
    np.testing.assert_array_equal(out[::-1], -out)  # exactly odd


@numba.njit(fastmath=set(_config.FASTMATH), error_model=_config.ERROR_MODEL)
def _block_activations(x, y):
    activations.sigmoid_block(x)
    activations.tanh_block(y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_activations_match_numpy_and_keep_nan(dtype):
    exact = np.linspace(-30, 30, 1001)
    exact[500] = np.nan
    x, y = exact.astype(dtype), exact.astype(dtype)
    _block_activations(x, y)
    tolerance = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(x, 1 / (1 + np.exp(-exact)), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(y, np.tanh(exact), rtol=tolerance, atol=tolerance)
    assert np.isnan(x[500]) and np.isnan(y[500])


#: Arithmetic on doubles, or a float widened to double.  (Comparisons are
#: left out: Numba's reshape compares sizes converted to double.)
_DOUBLE_ARITHMETIC = re.compile(r"= (?:fadd|fsub|fmul|fdiv)[^\n]* double |= fpext float ")


def _fresh_kernels_ir(monkeypatch, cell, dtype, backward=True):
    """LLVM IR of fresh (serial, uncached) compilations of a cell's layer kernels for ``dtype``.

    Cached dispatchers cannot show their IR, so the wrappers are made to run
    fresh compilations of the kernels' source.
    """
    fresh = {}

    def fresh_kernel(key):
        def run(*args):
            if key not in fresh:
                fresh[key] = numba.njit(error_model="numpy")(original[key].py_func)
            return fresh[key](*args)

        return run

    original = dict(layers.KERNELS)
    for key in original:
        monkeypatch.setitem(layers.KERNELS, key, fresh_kernel(key))
    params, x, lengths, state0 = _layer_case(cell)
    cast = naive.CellParams(*(p.astype(dtype) for p in params))
    tape = _run_forward(cell, "tanh", cast, x.astype(dtype), lengths, tuple(s.astype(dtype) for s in state0), False)
    if backward:
        dh_out = np.ones(tape[1][:, 1:].shape, dtype)
        grads = tuple(np.zeros_like(p) for p in (cast.W_ih, cast.W_hh, cast.b_ih, cast.b_hh))
        layers.backward(cell, _chunked(x.astype(dtype)), cast.W_ih, cast.W_hh, tape, lengths, False, 0, 0, dh_out, True, grads)
    assert len(fresh) == (2 if backward else 1)
    return {key: next(iter(kernel.inspect_llvm().values())) for key, kernel in fresh.items()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float32_kernels_do_no_float64_arithmetic(cell, monkeypatch):
    """float32 gate math must not be silently promoted to float64."""
    for key, ir in _fresh_kernels_ir(monkeypatch, cell, np.float32).items():
        assert not _DOUBLE_ARITHMETIC.search(ir), key


def test_the_search_for_float64_arithmetic_finds_it(monkeypatch):
    # The check above would see doubles: in a float64 build (one kernel,
    # the cheapest: each fresh compilation took 4-10 s of the suite).
    (ir,) = _fresh_kernels_ir(monkeypatch, "rnn", np.float64, backward=False).values()
    assert _DOUBLE_ARITHMETIC.search(ir)


def test_denormals_are_flushed_inside_kernels_only():
    import platform

    from bptt_numba._kernels._fpu import flush_denormals, restore_fpu

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("flush-to-zero is set on x86-64 only")

    @numba.njit
    def products(a, b, c):
        previous = flush_denormals()
        inside = a[0] * b[0]
        restore_fpu(previous)
        outside = a[0] * c[0]
        return inside, outside

    tiny = np.array([1e-20], np.float32)
    inside, outside = products(tiny, np.array([1e-20], np.float32), np.array([2e-20], np.float32))
    assert inside == 0.0  # 1e-40 is denormal in float32: flushed
    assert outside == np.float32(1e-20) * np.float32(2e-20) != 0.0


@pytest.mark.parametrize("n_chunks", [2, 3, 16])
def test_sum_shares_adds_in_chunk_order_on_any_thread_count(n_chunks):
    rng = np.random.default_rng(n_chunks)
    sizes = (2 * _recurrence.SUM_BLOCK + 37, 5, _recurrence.SUM_BLOCK)
    shares = tuple(rng.standard_normal((n_chunks, size)).astype(np.float32) for size in sizes)
    initial = tuple(rng.standard_normal(size).astype(np.float32) for size in sizes)
    expected = []
    for array, start in zip(shares, initial):
        total = array[0].copy()
        for share in array[1:]:
            total += share
        expected.append(start + total)
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            totals = tuple(start.copy() for start in initial)
            work = tuple(array.copy() for array in shares)
            _recurrence.sum_shares(work, totals)
            for result, total, array in zip(totals, expected, shares):
                np.testing.assert_array_equal(result, total)
            for result, array in zip(work, shares):
                np.testing.assert_array_equal(result[1:], array[1:])
    finally:
        numba.set_num_threads(previous)


@numba.njit
def _compiled_gradient_matmul(d, x, out):
    _products.gradient_matmul(d, x, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 13, 5), (300, 40, 10), (600, 96, 4), (260, 203, 33)])
def test_gradient_product_matches_numpy(shape, dtype):
    # Rows past a block of GRADIENT_ROWS, outputs past whole vectors and
    # columns past whole tiles: every path of the product.
    n_rows, n_out, n_cols = shape
    rng = np.random.default_rng(n_rows)
    d = rng.standard_normal((n_rows, n_out)).astype(dtype)
    x = rng.standard_normal((n_rows, n_cols)).astype(dtype)
    out = np.full((n_out, n_cols), np.nan, dtype)
    _compiled_gradient_matmul(d, x, out)
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out, d.astype(np.float64).T @ x.astype(np.float64), rtol=tolerance, atol=tolerance)


@numba.njit
def _compiled_affine(a, b, bias, out):
    _products.affine(a, b, bias, out)


# Shapes with rows left over from the blocks of 4 and inner sizes with and
# without a remainder of 4; for the panels, a last panel full or partly
# empty, and panels that the rows left over take in whole groups of
# `ROW_PANELS` (96 columns), with some left, or none; for `affine`, columns
# in wide tiles only, with one-vector tiles or scalars left over, and
# more rows than one block (`AFFINE_ROWS`).
MATMUL_SHAPES = [
    (1, 1, 1), (5, 7, 3), (16, 64, 256), (3, 130, 9), (9, 33, 51), (7, 0, 12), (6, 129, 130), (5, 16, 96),
    (135, 5, 48),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", MATMUL_SHAPES)
def test_affine_matches_numpy_with_any_remainders(shape, dtype):
    m, k, n = shape
    rng = np.random.default_rng(k)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    _compiled_affine(a, b, bias, out)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    expected = a.astype(np.float64) @ b.astype(np.float64) + bias
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


@numba.njit
def _compiled_panel_matmul(a, panels, out, backwards):
    _products.panel_matmul(a, panels, out, backwards)


def _panel_product(a, b, parallel=False, backwards=False):
    """``a @ b`` through the recurrent product, ``b`` packed first; the padded columns too."""
    # A transposed b (F-ordered) is packed from its transpose, as W_hh.T is.
    transposed = not b.flags.c_contiguous
    panels = _products.packed(b.T if transposed else b, transposed, parallel)
    out = np.full((a.shape[0], panels.shape[0] * panels.shape[2]), np.nan, a.dtype)
    _compiled_panel_matmul(a, panels, out, backwards)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", MATMUL_SHAPES)
@pytest.mark.parametrize("transposed", [False, True])
def test_panel_product_matches_numpy_from_either_layout(shape, dtype, transposed):
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T if transposed else rng.standard_normal((k, n)).astype(dtype)
    out = _panel_product(a, b)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out[:, :n], expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(out[:, n:], 0)
    np.testing.assert_array_equal(_panel_product(a, b, parallel=True), out)
    np.testing.assert_array_equal(_panel_product(a, b, backwards=True), out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_weights_and_kept_buffers_start_on_a_vector(dtype):
    """Where NumPy would leave them 16 bytes past a boundary as often as not."""
    for size in (1, 3, 1000, 100003):
        assert _products.aligned_empty(size, np.dtype(dtype)).ctypes.data % _products.VECTOR_BYTES == 0
        w = np.ones((size % 97 + 1, 7), dtype)
        for parallel in (False, True):
            for transposed in (False, True):
                panels = _products.packed(w, transposed, parallel)
                assert panels.ctypes.data % _products.VECTOR_BYTES == 0 and panels.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", MATMUL_SHAPES)
@pytest.mark.parametrize("product", ["affine", "panels"])
def test_products_give_a_row_the_same_bits_alone_or_anywhere_in_a_block(shape, dtype, product):
    # Alone a row takes the one-row path; among others a block of 4 or the
    # rows left over: the bits must not change.
    m, k, n = shape
    rng = np.random.default_rng(k)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)

    def run(rows):
        if product == "panels":
            return _panel_product(np.ascontiguousarray(rows), b)
        out = np.empty((rows.shape[0], n), dtype)
        _compiled_affine(np.ascontiguousarray(rows), b, np.linspace(-1, 1, n).astype(dtype), out)
        return out

    together = run(a)
    for i in range(m):
        alone = run(a[i : i + 1])
        np.testing.assert_array_equal(together[i], alone[0])
        np.testing.assert_array_equal(run(np.repeat(a[i : i + 1], 6, axis=0)), np.repeat(alone, 6, axis=0))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
def test_inference_states_equal_the_training_tapes_bitwise(cell, reverse, monkeypatch):
    monkeypatch.setattr(layers, "ROLLING_GATES", 0)
    params, x, lengths, state0 = _layer_case(cell, n_steps=19)
    x32 = x.astype(np.float32)
    params32 = type(params)(*(a.astype(np.float32) for a in params))
    state32 = tuple(s.astype(np.float32) for s in state0)
    kept = _run_forward(cell, "tanh", params32, x32, lengths, state32, reverse, tape=True)
    rolled = _run_forward(cell, "tanh", params32, x32, lengths, state32, reverse, tape=False)
    assert rolled[0].shape[1] == _recurrence.PROJECTED_STEPS
    np.testing.assert_array_equal(kept[1], rolled[1])
    if cell == "lstm":
        np.testing.assert_array_equal(kept[2], rolled[2])


@pytest.mark.parametrize("batch, kept", [(2, 20), (128, _recurrence.PROJECTED_STEPS)])
def test_inference_keeps_the_gates_of_small_batches_only(batch, kept):
    rng = np.random.default_rng(0)
    hidden, n_steps, n_in = 64, 20, 3
    x = rng.standard_normal((batch // 2, n_steps, 2, n_in)).astype(np.float32)
    w_ih, w_hh = (rng.standard_normal((4 * hidden, n)).astype(np.float32) * 0.1 for n in (n_in, hidden))
    bias = np.zeros(4 * hidden, np.float32)
    state = tuple(np.zeros((batch // 2, 2, hidden), np.float32) for _ in range(2))
    lengths = np.full(batch, n_steps, np.int64)
    gates = layers.forward("lstm", x, w_ih, bias, w_hh, bias, state, lengths, False, tape=False)[0]
    assert gates.shape[1] == kept


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_head_reads_each_sample_at_its_last_step(dtype, bidirectional):
    rng = np.random.default_rng(0)
    n_chunks, n_steps, chunk, hidden, n_outputs = 3, 6, 4, 5, 2
    h = rng.standard_normal((n_chunks, n_steps + 1, chunk, hidden)).astype(dtype)
    h_reverse = rng.standard_normal(h.shape).astype(dtype) if bidirectional else np.empty((0, 0, 0, 0), dtype)
    width = hidden * (2 if bidirectional else 1)
    weight = rng.standard_normal((n_outputs, width)).astype(dtype)
    bias = rng.standard_normal(n_outputs).astype(dtype)
    samples = np.array([0, 5, 11, 7, 2])
    slots = np.array([6, 1, 3, 6, 4])
    features = np.full((5, width), np.nan, dtype)
    out = np.full((5, n_outputs), np.nan, dtype)
    head.last_outputs(h, h_reverse, samples, slots, np.ascontiguousarray(weight.T), bias, features, out)
    k, i = np.divmod(samples, chunk)
    expected = h[k, slots, i]
    if bidirectional:
        expected = np.concatenate([expected, h_reverse[k, 0, i]], axis=1)
    np.testing.assert_array_equal(features, expected)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expected.astype(np.float64) @ weight.T + bias, rtol=tolerance, atol=tolerance)
    # The same rows through `linear`, and each alone: the same bits.
    np.testing.assert_array_equal(_linear(features, weight, bias), out)
    for n in range(5):
        np.testing.assert_array_equal(_linear(features[n : n + 1], weight, bias)[0], out[n])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("n_rows", [0, 5, 300])
def test_head_backward_matches_numpy(dtype, bidirectional, n_rows):
    rng = np.random.default_rng(n_rows)
    n_chunks, n_slots, chunk, hidden, n_outputs = 10, 7, 8, 5, 3
    width = hidden * (2 if bidirectional else 1)
    d_out = rng.standard_normal((n_rows, n_outputs)).astype(dtype)
    features = rng.standard_normal((n_rows, width)).astype(dtype)
    weight = rng.standard_normal((n_outputs, width)).astype(dtype)
    # Distinct places, as the rows of one batch are.
    place = rng.permutation(n_chunks * chunk * n_slots)[:n_rows]
    samples, steps = place // n_slots, place % n_slots
    g_weight, g_bias = rng.standard_normal((n_outputs, width)).astype(dtype), rng.standard_normal(n_outputs).astype(dtype)
    expected_weight = g_weight.astype(np.float64) + d_out.T.astype(np.float64) @ features
    expected_bias = g_bias + d_out.astype(np.float64).sum(axis=0)
    d_top = np.zeros((n_chunks, n_slots, chunk, hidden), dtype)
    d_top_reverse = np.zeros_like(d_top) if bidirectional else np.empty((0, 0, 0, 0), dtype)
    head.backward(d_out, features, weight, samples, steps, g_weight, g_bias, d_top, d_top_reverse)
    tolerance = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(g_weight, expected_weight, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(g_bias, expected_bias, rtol=tolerance, atol=tolerance)
    d_features = d_out.astype(np.float64) @ weight
    k, i = np.divmod(samples, chunk)
    for got, part in [(d_top, d_features[:, :hidden])] + ([(d_top_reverse, d_features[:, hidden:])] if bidirectional else []):
        expected = np.zeros(got.shape)
        expected[k, steps, i] = part
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def _linear(features, weight, bias):
    out = np.empty((features.shape[0], weight.shape[0]), features.dtype)
    head.linear(np.ascontiguousarray(features), np.ascontiguousarray(weight.T), bias, out)
    return out
