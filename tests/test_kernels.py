"""The kernels and their thin wrappers, one by one, against the reference."""

import re

import numba
import numpy as np
import pytest

import naive
from bptt_numba._kernels import activations, elman, gru, losses, lstm
from problems import relative_error

CELL_KERNELS = {"lstm": lstm, "gru": gru, "rnn": elman}


def _layer_case(cell, reverse, seed=0):
    rng = np.random.default_rng(seed)
    n_steps, batch, n_in, hidden = 6, 4, 3, 5
    n_gates = CELL_KERNELS[cell].N_GATES
    params = naive.CellParams(
        rng.uniform(-0.7, 0.7, (n_gates * hidden, n_in)),
        rng.uniform(-0.7, 0.7, (n_gates * hidden, hidden)),
        rng.uniform(-0.5, 0.5, n_gates * hidden),
        rng.uniform(-0.5, 0.5, n_gates * hidden),
    )
    x = rng.normal(size=(n_steps, batch, n_in))
    lengths = np.array([6, 1, 4, 6], dtype=np.int64)
    state0 = tuple(rng.normal(size=(batch, hidden)) for _ in range(CELL_KERNELS[cell].N_STATE))
    return params, x, lengths, state0


def _reference_layer(cell, params, x, lengths, state0, reverse, nonlinearity):
    """Outputs (T, B, H) and final states of one layer, by the reference steps."""
    n_steps, batch, _ = x.shape
    outputs = np.zeros((n_steps, batch, params.W_hh.shape[1]))
    finals = []
    for b in range(batch):
        state = tuple(s[b] for s in state0)
        for t in naive.processing_order(lengths[b], reverse):
            state, _ = naive.cell_step(cell, params, x[t, b], state, nonlinearity)
            outputs[t, b] = state[0]
        finals.append(state)
    return outputs, finals


@pytest.mark.parametrize("cell, nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_wrapper_matches_reference_steps(cell, nonlinearity, reverse):
    params, x, lengths, state0 = _layer_case(cell, reverse)
    gates = np.ascontiguousarray(x @ params.W_ih.T + params.b_ih)
    tape = CELL_KERNELS[cell].forward(
        gates, params.W_hh, params.b_hh, state0, lengths, reverse, nonlinearity == "relu"
    )
    outputs, finals = _reference_layer(cell, params, x, lengths, state0, reverse, nonlinearity)
    h = tape[0][:-1] if reverse else tape[0][1:]
    valid = np.arange(x.shape[0])[:, None] < lengths[None, :]
    np.testing.assert_allclose(h[valid], outputs[valid], rtol=1e-12, atol=1e-13)
    final_slot = 0 if reverse else x.shape[0]
    for b, final in enumerate(finals):
        for buffer, expected in zip(tape, final):
            np.testing.assert_allclose(buffer[final_slot, b], expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("truncate", [0, 2])
def test_backward_wrapper_matches_reference(cell, reverse, truncate):
    """Weight gradients formed from the kernel's outputs equal the reference's."""
    params, x, lengths, state0 = _layer_case(cell, reverse, seed=1)
    module = CELL_KERNELS[cell]
    gates = np.ascontiguousarray(x @ params.W_ih.T + params.b_ih)
    tape = module.forward(gates, params.W_hh, params.b_hh, state0, lengths, reverse)
    dh_out = np.random.default_rng(2).normal(size=tape[0][1:].shape)
    dh_out[np.arange(x.shape[0])[:, None] >= lengths[None, :]] = 0.0
    blocks = module.backward(gates, params.W_hh, tape, lengths, reverse, truncate, 0, dh_out)
    rows = x.shape[0] * x.shape[1]
    h_prev = (tape[0][1:] if reverse else tape[0][:-1]).reshape(rows, -1)
    g_w_ih = gates.reshape(rows, -1).T @ x.reshape(rows, -1)
    g_w_hh = np.zeros_like(params.W_hh)
    for start, stop, block in blocks:
        g_w_hh[start:stop] = block.reshape(rows, -1).T @ h_prev

    # Reference: the one-layer network whose loss is sum(dh_out * outputs).
    expected_ih, expected_hh = np.zeros_like(params.W_ih), np.zeros_like(params.W_hh)
    for b in range(x.shape[1]):
        caches, states = [], [tuple(s[b] for s in state0)]
        order = naive.processing_order(lengths[b], reverse)
        for t in order:
            state, cache = naive.cell_step(cell, params, x[t, b], states[-1])
            caches.append(cache)
            states.append(state)
        d_state = tuple(np.zeros_like(s) for s in states[0])
        for t, cache in zip(reversed(order), reversed(caches)):
            d_state = (d_state[0] + dh_out[t, b],) + d_state[1:]
            _, d_state, grads = naive.cell_step_backward(cell, params, cache, d_state)
            expected_ih += grads.W_ih
            expected_hh += grads.W_hh
            if truncate and naive.crosses_border(t, lengths[b], reverse, truncate):
                d_state = tuple(np.zeros_like(s) for s in d_state)
    assert relative_error(g_w_ih, expected_ih) < 1e-12
    assert relative_error(g_w_hh, expected_hh) < 1e-12


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


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float32_kernels_do_no_float64_arithmetic(cell):
    """float32 gate math must not be silently promoted to float64.

    Cached dispatchers cannot show their IR, so the kernels' source is
    compiled afresh (serial, uncached) and its LLVM IR searched for
    floating-point arithmetic on doubles; the float64 build shows that the
    search would find them.
    """
    pattern = re.compile(r"= (?:fadd|fsub|fmul|fdiv|fcmp \w+)[^\n]* double ")
    module = CELL_KERNELS[cell]
    prefix = module.__name__.rsplit(".", 1)[1]
    params, x, lengths, state0 = _layer_case(cell, False)
    for dtype in (np.float32, np.float64):
        forward = numba.njit(getattr(module, f"{prefix}_forward").py_func)
        backward = numba.njit(getattr(module, f"{prefix}_backward").py_func)
        w_hh, b_hh, gates = (a.astype(dtype) for a in (params.W_hh, params.b_hh, x @ params.W_ih.T))
        n_steps, batch, hidden = x.shape[0], x.shape[1], w_hh.shape[1]
        h = np.zeros((n_steps + 1, batch, hidden), dtype)
        aux = np.zeros((n_steps + 1, batch, hidden), dtype)  # c (lstm), W_hn h (gru)
        dh_out = np.ones((n_steps, batch, hidden), dtype)
        middle = (False,) if cell == "rnn" else (aux,)
        forward(gates, w_hh, b_hh, h, *middle, lengths, False)
        backward(gates, w_hh, h, *middle, lengths, False, 0, 0, dh_out)
        for kernel in (forward, backward):
            (ir,) = kernel.inspect_llvm().values()
            assert bool(pattern.search(ir)) == (dtype == np.float64), (kernel.__name__, dtype)
