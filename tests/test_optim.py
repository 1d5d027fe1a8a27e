"""The optimizer and clipping kernels against NumPy references and torch.optim."""

import re

import numba
import numpy as np
import pytest

from bptt_numba import _config
from bptt_numba._kernels import optim

SIZE = 1000
N_STEPS = 5
DTYPES = [np.float64, np.float32]


def _tolerances(dtype):
    """(rtol, atol) for comparing a kernel with its reference in ``dtype``."""
    return (1e-12, 1e-14) if dtype == np.float64 else (2e-5, 2e-6)


def _start(dtype, seed=0):
    """Parameters and N_STEPS fresh gradients of SIZE elements in ``dtype``."""
    rng = np.random.default_rng(seed)
    params = rng.normal(size=SIZE).astype(dtype)
    grads = [rng.normal(size=SIZE).astype(dtype) for _ in range(N_STEPS)]
    return params, grads


def _undo(params, rows):
    """An update kernel's scratch for the ``rows`` vectors it overwrites."""
    return np.empty((rows, params.shape[0]), params.dtype)


# Plain NumPy references: each is one step, written as loop-free expressions.


def _sgd_reference(params, grad, velocity, lr, momentum, nesterov):
    velocity = momentum * velocity - lr * grad
    update = momentum * velocity - lr * grad if nesterov else velocity
    return params + update, velocity


def _adam_reference(params, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    params = params * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return params - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def _rmsprop_reference(params, grad, square_avg, lr, rho, eps):
    square_avg = rho * square_avg + (1 - rho) * grad**2
    return params - lr * grad / (np.sqrt(square_avg) + eps), square_avg


def _run_sgd(dtype, momentum, nesterov):
    params, grads = _start(dtype)
    velocity = np.zeros_like(params)
    for grad in grads:
        optim.sgd_update(params, grad, velocity, _undo(params, 2), 0.05, momentum, nesterov)
    return params, velocity


def _run_adam(dtype, weight_decay):
    params, grads = _start(dtype)
    m, v = np.zeros_like(params), np.zeros_like(params)
    for step, grad in enumerate(grads, 1):
        optim.adam_update(params, grad, m, v, _undo(params, 3), 0.01, 0.9, 0.999, 1e-8, step, weight_decay)
    return params, m, v


def _run_rmsprop(dtype):
    params, grads = _start(dtype)
    square_avg = np.zeros_like(params)
    for grad in grads:
        optim.rmsprop_update(params, grad, square_avg, _undo(params, 2), 0.01, 0.99, 1e-8)
    return params, square_avg


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.0, True)])
def test_sgd_matches_reference(dtype, momentum, nesterov):
    rtol, atol = _tolerances(dtype)
    params, grads = _start(dtype)
    expected, velocity_ref = params.copy(), np.zeros_like(params)
    velocity = np.zeros_like(params)
    for grad in grads:
        optim.sgd_update(params, grad, velocity, _undo(params, 2), 0.05, momentum, nesterov)
        expected, velocity_ref = _sgd_reference(expected, grad, velocity_ref, 0.05, momentum, nesterov)
        np.testing.assert_allclose(params, expected, rtol=rtol, atol=atol)
        np.testing.assert_allclose(velocity, velocity_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_reference(dtype, weight_decay):
    rtol, atol = _tolerances(dtype)
    params, grads = _start(dtype)
    expected, m_ref, v_ref = params.copy(), np.zeros_like(params), np.zeros_like(params)
    m, v = np.zeros_like(params), np.zeros_like(params)
    for step, grad in enumerate(grads, 1):
        optim.adam_update(params, grad, m, v, _undo(params, 3), 0.01, 0.9, 0.999, 1e-8, step, weight_decay)
        expected, m_ref, v_ref = _adam_reference(
            expected, grad, m_ref, v_ref, 0.01, 0.9, 0.999, 1e-8, step, weight_decay
        )
        np.testing.assert_allclose(params, expected, rtol=rtol, atol=atol)
        np.testing.assert_allclose(m, m_ref, rtol=rtol, atol=atol)
        np.testing.assert_allclose(v, v_ref, rtol=rtol, atol=atol)


def test_adam_bias_correction_late_steps():
    """Far into training the bias corrections are ~1 and must stay finite."""
    params, (grad, *_) = _start(np.float64)
    m, v = np.full_like(params, 0.1), np.full_like(params, 0.2)
    expected, m_ref, v_ref = _adam_reference(params, grad, m, v, 0.01, 0.9, 0.999, 1e-8, 100_000, 0.0)
    optim.adam_update(params, grad, m, v, _undo(params, 3), 0.01, 0.9, 0.999, 1e-8, 100_000, 0.0)
    np.testing.assert_allclose(params, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(m, m_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_matches_reference(dtype):
    rtol, atol = _tolerances(dtype)
    params, grads = _start(dtype)
    expected, square_ref = params.copy(), np.zeros_like(params)
    square_avg = np.zeros_like(params)
    for grad in grads:
        optim.rmsprop_update(params, grad, square_avg, _undo(params, 2), 0.01, 0.99, 1e-8)
        expected, square_ref = _rmsprop_reference(expected, grad, square_ref, 0.01, 0.99, 1e-8)
        np.testing.assert_allclose(params, expected, rtol=rtol, atol=atol)
        np.testing.assert_allclose(square_avg, square_ref, rtol=rtol, atol=atol)


def _update(name, params, state, grad):
    """One step of optimizer ``name`` at a learning rate of 4; whether it was made."""
    undo = _undo(params, 1 + len(state))
    if name == "adam":
        return optim.adam_update(params, grad, *state, undo, 4.0, 0.9, 0.999, 1e-8, 2, 0.01)
    if name == "rmsprop":
        return optim.rmsprop_update(params, grad, *state, undo, 4.0, 0.99, 1e-8)
    return optim.sgd_update(params, grad, *state, undo, 4.0, 0.9, name == "nesterov")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "rmsprop"])
def test_an_update_that_would_not_be_finite_changes_nothing(dtype, name):
    """All or nothing: one element out of range leaves every vector as it was.

    The largest finite gradient overflows each update somewhere: ``lr * g``
    for SGD, ``g**2`` in the second moments for Adam and RMSprop (whose
    parameters stay finite).
    """
    params, (first, grad, *_) = _start(dtype)
    state = [np.zeros_like(params) for _ in range(2 if name == "adam" else 1)]
    # A finite step first, so that the state is not its zeros.
    assert _update(name, params, state, first)
    before = [vector.copy() for vector in [params] + state]
    grad[SIZE // 2] = np.finfo(dtype).max
    assert not _update(name, params, state, grad)
    for vector, old in zip([params] + state, before):
        np.testing.assert_array_equal(vector, old)
    grad[SIZE // 2] = 0.0
    assert _update(name, params, state, grad)
    assert not np.array_equal(params, before[0])


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_updates_match_torch_optim(name):
    torch = pytest.importorskip("torch")
    params, grads = _start(np.float64)
    weight = torch.nn.Parameter(torch.from_numpy(params.copy()))
    if name == "RMSprop":
        opt = torch.optim.RMSprop([weight], lr=0.01, alpha=0.99, eps=1e-8)
        square_avg = np.zeros_like(params)
    else:
        decay = 0.01 if name == "AdamW" else 0.0
        opt = getattr(torch.optim, name)([weight], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=decay)
        m, v = np.zeros_like(params), np.zeros_like(params)
    for step, grad in enumerate(grads, 1):
        weight.grad = torch.from_numpy(grad.copy())
        opt.step()
        if name == "RMSprop":
            optim.rmsprop_update(params, grad, square_avg, _undo(params, 2), 0.01, 0.99, 1e-8)
        else:
            optim.adam_update(params, grad, m, v, _undo(params, 3), 0.01, 0.9, 0.999, 1e-8, step, decay)
        np.testing.assert_allclose(params, weight.detach().numpy(), rtol=1e-12, atol=1e-14)
    state = opt.state[weight]
    if name == "RMSprop":
        np.testing.assert_allclose(square_avg, state["square_avg"].numpy(), rtol=1e-12)
    else:
        np.testing.assert_allclose(m, state["exp_avg"].numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_norm(dtype):
    _, (grad, *_) = _start(dtype)
    norm = optim.global_norm(grad)
    assert isinstance(norm, float)
    # float64 accumulation: even the float32 vector's norm is exact to ~1e-15.
    assert norm == pytest.approx(np.linalg.norm(grad.astype(np.float64)), rel=1e-13)
    assert optim.global_norm(np.zeros(0, dtype)) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_global_norm_propagates_non_finite(dtype, bad):
    _, (grad, *_) = _start(dtype)
    grad[SIZE // 2] = bad
    norm = optim.global_norm(grad)
    assert not np.isfinite(norm)
    assert np.isnan(norm) == np.isnan(bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_clips_long_gradients(dtype):
    _, (grad, *_) = _start(dtype)
    grad *= 3  # norm about 95
    before = np.linalg.norm(grad.astype(np.float64))
    expected = grad.astype(np.float64) * (1.0 / (before + 1e-6))
    returned = optim.clip_by_norm(grad, 1.0)
    assert grad.dtype == dtype
    assert returned == pytest.approx(before, rel=1e-13)
    assert np.linalg.norm(grad.astype(np.float64)) == pytest.approx(1.0, rel=1e-6)
    rtol, atol = _tolerances(dtype)
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_leaves_short_gradients(dtype):
    _, (grad, *_) = _start(dtype)
    original = grad.copy()
    norm = np.linalg.norm(grad.astype(np.float64))
    assert optim.clip_by_norm(grad, norm * 1.01) == pytest.approx(norm, rel=1e-13)
    np.testing.assert_array_equal(grad, original)
    assert optim.clip_by_norm(grad, float(optim.global_norm(grad))) == pytest.approx(norm, rel=1e-13)
    np.testing.assert_array_equal(grad, original)  # norm == max_norm: not clipped


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_by_norm_leaves_non_finite_gradients(dtype, bad):
    _, (grad, *_) = _start(dtype)
    grad[3] = bad
    original = grad.copy()
    norm = optim.clip_by_norm(grad, 1.0)
    assert not np.isfinite(norm)
    np.testing.assert_array_equal(grad, original)  # NaN compares equal here


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_value(dtype):
    _, (grad, *_) = _start(dtype)
    grad[0] = np.nan
    grad[1] = np.inf
    grad[2] = -np.inf
    expected = np.clip(grad, -0.5, 0.5)  # NaN stays NaN, as in np.clip
    optim.clip_by_value(grad, 0.5)
    assert grad.dtype == dtype
    np.testing.assert_array_equal(grad, expected)
    assert np.isnan(grad[0]) and grad[1] == 0.5 and grad[2] == -0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_l2_and_l2_penalty(dtype):
    params, (grad, *_) = _start(dtype)
    mask = np.random.default_rng(1).random(SIZE) < 0.7
    expected = grad + np.where(mask, dtype(1e-3) * params, dtype(0))
    untouched = grad[~mask].copy()
    optim.add_l2(grad, params, mask, 1e-3)
    rtol, atol = _tolerances(dtype)
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(grad[~mask], untouched)
    penalty = optim.l2_penalty(params, mask)
    assert isinstance(penalty, float)
    assert penalty == pytest.approx(np.sum(params[mask].astype(np.float64) ** 2), rel=1e-13)
    assert optim.l2_penalty(params, np.zeros(SIZE, np.bool_)) == 0.0


@pytest.mark.parametrize(
    "run",
    [
        lambda dtype: _run_sgd(dtype, 0.9, True),
        lambda dtype: _run_sgd(dtype, 0.9, False),
        lambda dtype: _run_adam(dtype, 0.01),
        lambda dtype: _run_rmsprop(dtype),
    ],
    ids=["sgd-nesterov", "sgd-momentum", "adamw", "rmsprop"],
)
def test_float32_stays_float32_and_agrees_with_float64(run):
    single = run(np.float32)
    double = run(np.float64)
    for a, b in zip(single, double):
        assert a.dtype == np.float32
        # Values are O(1): atol is a few float32 ulps of them (the rtol alone
        # would fail on the few elements that pass near zero).
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


def test_float32_kernels_do_no_float64_arithmetic():
    """float32 updates must not be silently promoted to float64.

    Cached dispatchers cannot show their IR, so the kernels' source is
    compiled afresh (same options, no cache) and its LLVM IR searched for
    floating-point arithmetic on doubles or a float widened to double.  The
    float64 builds show that the search would find them.  The float64
    accumulators of `global_norm`, `l2_penalty` and so `clip_by_norm` are
    deliberate and left out.
    """
    pattern = re.compile(r"= (?:fadd|fsub|fmul|fdiv)[^\n]* double |= fpext float ")
    options = dict(fastmath=set(_config.FASTMATH), error_model=_config.ERROR_MODEL)

    def ir(dispatcher, *args):
        fresh = numba.njit(**options)(dispatcher.py_func)
        fresh(*args)
        (text,) = fresh.inspect_llvm().values()
        return text

    a, b, c, d = (np.ones(8, np.float32) for _ in range(4))
    mask = np.ones(8, np.bool_)
    calls = [
        (optim.sgd_update, (a, b, c, _undo(a, 2), 0.1, 0.9, True)),
        (optim.adam_update, (a, b, c, d, _undo(a, 3), 0.1, 0.9, 0.999, 1e-8, 1, 0.01)),
        (optim.rmsprop_update, (a, b, c, _undo(a, 2), 0.1, 0.99, 1e-8)),
        (optim.clip_by_value, (a, 0.5)),
        (optim.add_l2, (a, b, mask, 1e-3)),
    ]
    for dispatcher, args in calls:
        assert not pattern.search(ir(dispatcher, *args)), dispatcher.__name__
    # One float64 build (each fresh compile costs time) shows the search works.
    wide = [np.ones(8) for _ in range(4)]
    assert pattern.search(ir(optim.adam_update, *wide, _undo(wide[0], 3), 0.1, 0.9, 0.999, 1e-8, 1, 0.01))
