"""Fused in-place optimizer updates and gradient clipping on the flat vector.

Every network parameter lives in one contiguous vector, so each optimizer
step is a single serial pass over it (and over its gradient and state
vectors of the same shape): no temporaries, and the same result on any
thread count.  The vectors are 1e4 to 1e6 long, where one pass is bound by
memory bandwidth, so threads would buy little and would make the norms
depend on how the sum is split.

An update is all or nothing.  Each update kernel writes the old values to
a caller's ``undo`` scratch as it overwrites them and, if any new value is
not finite, puts them all back and returns False, so that a step the
training loop skips leaves no trace in the parameters or in the
optimizer's state.  They are put back with ``_recurrence.copy``: an array
assignment makes Numba compile the formatting of its shape error, 2.7 s of
a cold first fit.  The undo costs three write streams more than a plain
update.  Timed alone, the kernels took less than the parameters' copy and
norm that they replaced (2.1M float32 parameters: Adam 3.56-4.40 against
3.87-4.54 ms).  Inside `Trainer._step`, penalty and clipping included, the
step took 1.01-1.09x as long at 2.1M parameters, 1.05-1.35x at 1.3M, where
the extra vectors push the step's data out of a 32 MB L3, and 1.09-1.38x
(4-13 us) at 25K (Adam, in-process A/B).  That is at most 1.5% of an LSTM
H=512 training step and 0.4% of an H=64 one.

Scalar hyper-parameters arrive as Python floats (float64 in Numba) and are
cast to the parameters' dtype at the top of each kernel, and every constant
is built in that dtype: a bare ``1.0`` is float64 in Numba and would
silently promote the whole float32 loop to float64.  The only float64
arithmetic in a float32 build is in the two reductions, `global_norm` and
`l2_penalty`, which accumulate in float64 on purpose: each is one scalar,
and a float32 sum of 1e6 squares would lose the digits that the
non-finite-gradient and early-stopping tests look at.
"""

import numpy as np

from .._config import kernel
from ._recurrence import copy


@kernel
def sgd_update(params, grad, velocity, undo, lr, momentum, nesterov):
    """SGD with (Nesterov) momentum, scikit-learn ``MLPRegressor`` style.

    ``velocity = momentum * velocity - lr * grad``, then
    ``params += momentum * velocity - lr * grad`` with ``nesterov`` or
    ``params += velocity`` without.  ``momentum=0`` is plain SGD.

    Parameters
    ----------
    params : ndarray of shape (P,)
        Updated in place.
    grad : ndarray of shape (P,)
    velocity : ndarray of shape (P,)
        Momentum buffer (zeros before the first step), updated in place.
    undo : ndarray of shape (2, P)
        Scratch for the old ``params`` and ``velocity``.
    lr, momentum : float
    nesterov : bool

    Returns
    -------
    bool
        Whether the update was made: one that would write a non-finite
        value anywhere leaves ``params`` and ``velocity`` as they were.
    """
    dtype = params.dtype.type
    lr = dtype(lr)
    momentum = dtype(momentum)
    inf = dtype(np.inf)
    finite = True
    # The branch sits outside the loops so that each loop stays a plain
    # streaming pass that LLVM can vectorise.
    if nesterov:
        for i in range(params.shape[0]):
            p, vel = params[i], velocity[i]
            undo[0, i], undo[1, i] = p, vel
            step = lr * grad[i]
            vel = momentum * vel - step
            p += momentum * vel - step
            params[i], velocity[i] = p, vel
            finite &= (abs(p) < inf) & (abs(vel) < inf)
    else:
        for i in range(params.shape[0]):
            p, vel = params[i], velocity[i]
            undo[0, i], undo[1, i] = p, vel
            vel = momentum * vel - lr * grad[i]
            p += vel
            params[i], velocity[i] = p, vel
            finite &= (abs(p) < inf) & (abs(vel) < inf)
    if not finite:
        copy(undo[0], params)
        copy(undo[1], velocity)
    return finite


@kernel
def adam_update(params, grad, m, v, undo, lr, beta1, beta2, eps, step, weight_decay):
    """Adam, or AdamW with ``weight_decay > 0``, as ``torch.optim`` does it.

    With ``g = grad``: ``params *= 1 - lr * weight_decay`` (decoupled decay,
    AdamW; a no-op for 0), ``m = beta1 m + (1 - beta1) g``,
    ``v = beta2 v + (1 - beta2) g**2`` and
    ``params -= lr * (m / (1 - beta1**step)) / (sqrt(v / (1 - beta2**step)) + eps)``.

    Parameters
    ----------
    params : ndarray of shape (P,)
        Updated in place.
    grad : ndarray of shape (P,)
    m, v : ndarray of shape (P,)
        First and second moment estimates (zeros before the first step),
        updated in place.
    undo : ndarray of shape (3, P)
        Scratch for the old ``params``, ``m`` and ``v``.
    lr, beta1, beta2, eps, weight_decay : float
    step : int
        1-based count of updates, this one included.

    Returns
    -------
    bool
        Whether the update was made: one that would write a non-finite
        value anywhere (``v`` overflows first, at ``|g| > 1.8e19`` in
        float32) leaves ``params``, ``m`` and ``v`` as they were.
    """
    dtype = params.dtype.type
    one = dtype(1.0)
    lr = dtype(lr)
    beta1 = dtype(beta1)
    beta2 = dtype(beta2)
    eps = dtype(eps)
    n = dtype(step)
    inf = dtype(np.inf)
    # Bias corrections 1 - beta**step, once per call.  Written as
    # -expm1(step * log(beta)) because the plain form cancels: in float32,
    # 1 - beta2**2 with beta2 = 0.999 keeps only 4 correct digits, this
    # keeps all of them (and beta = 0 gives exactly 1, as it should).
    correction1 = -np.expm1(n * np.log(beta1))
    correction2 = -np.expm1(n * np.log(beta2))
    step_size = lr / correction1
    inv_sqrt_correction2 = one / np.sqrt(correction2)
    # Multiplying by exactly 1 when there is no decay keeps one branch-free
    # loop and leaves the parameters bit-for-bit as plain Adam would.
    decay = one - lr * dtype(weight_decay)
    keep1 = beta1
    keep2 = beta2
    take1 = one - beta1
    take2 = one - beta2
    finite = True
    for i in range(params.shape[0]):
        p, mi, vi = params[i], m[i], v[i]
        undo[0, i], undo[1, i], undo[2, i] = p, mi, vi
        g = grad[i]
        mi = keep1 * mi + take1 * g
        vi = keep2 * vi + take2 * g * g
        # sqrt(v / c2) as sqrt(v) / sqrt(c2), with 1 / sqrt(c2) hoisted:
        # PyTorch's own order of operations.
        p = p * decay - step_size * mi / (np.sqrt(vi) * inv_sqrt_correction2 + eps)
        params[i], m[i], v[i] = p, mi, vi
        finite &= (abs(p) < inf) & (abs(mi) < inf) & (vi < inf)
    if not finite:
        copy(undo[0], params)
        copy(undo[1], m)
        copy(undo[2], v)
    return finite


@kernel
def rmsprop_update(params, grad, square_avg, undo, lr, rho, eps):
    """RMSprop as ``torch.optim.RMSprop(alpha=rho, momentum=0, centered=False)``.

    ``square_avg = rho square_avg + (1 - rho) g**2`` and
    ``params -= lr * g / (sqrt(square_avg) + eps)``.

    Parameters
    ----------
    params : ndarray of shape (P,)
        Updated in place.
    grad : ndarray of shape (P,)
    square_avg : ndarray of shape (P,)
        Running mean of squared gradients (zeros before the first step),
        updated in place.
    undo : ndarray of shape (2, P)
        Scratch for the old ``params`` and ``square_avg``.
    lr, rho, eps : float

    Returns
    -------
    bool
        Whether the update was made: one that would write a non-finite
        value anywhere leaves ``params`` and ``square_avg`` as they were.
    """
    dtype = params.dtype.type
    one = dtype(1.0)
    lr = dtype(lr)
    rho = dtype(rho)
    eps = dtype(eps)
    inf = dtype(np.inf)
    take = one - rho
    finite = True
    for i in range(params.shape[0]):
        p, s = params[i], square_avg[i]
        undo[0, i], undo[1, i] = p, s
        g = grad[i]
        s = rho * s + take * g * g
        p -= lr * g / (np.sqrt(s) + eps)
        params[i], square_avg[i] = p, s
        finite &= (abs(p) < inf) & (s < inf)
    if not finite:
        copy(undo[0], params)
        copy(undo[1], square_avg)
    return finite


@kernel
def global_norm(grad):
    """Euclidean norm of the whole gradient vector.

    Accumulated in float64 whatever the dtype (one scalar; see the module
    docstring).  NaN and inf propagate to the result, so a non-finite
    gradient anywhere shows as a non-finite norm.

    Parameters
    ----------
    grad : ndarray of shape (P,)

    Returns
    -------
    float
    """
    total = 0.0
    for i in range(grad.shape[0]):
        g = np.float64(grad[i])
        total += g * g
    return np.sqrt(total)


@kernel
def clip_by_norm(grad, max_norm):
    """Rescale ``grad`` in place to norm ``max_norm`` if it is longer.

    PyTorch's ``clip_grad_norm_``: when ``norm > max_norm``, every element is
    multiplied by ``max_norm / (norm + 1e-6)``.  A non-finite norm leaves
    ``grad`` untouched, so the caller sees the NaN/inf it has to handle
    instead of a vector of NaN.

    Parameters
    ----------
    grad : ndarray of shape (P,)
        Clipped in place.
    max_norm : float

    Returns
    -------
    float
        The norm before clipping.
    """
    norm = global_norm(grad)
    if np.isfinite(norm) and norm > max_norm:
        # The factor comes from the float64 norm; it is cast once, so the
        # loop itself runs in the gradient's dtype.
        scale = grad.dtype.type(max_norm / (norm + 1e-6))
        for i in range(grad.shape[0]):
            grad[i] *= scale
    return norm


@kernel
def clip_by_value(grad, limit):
    """Clip every element of ``grad`` in place to ``[-limit, limit]``.

    NaN stays NaN (as with ``torch.clamp``), so clipping by value never
    hides a non-finite gradient from the caller's checks.

    Parameters
    ----------
    grad : ndarray of shape (P,)
        Clipped in place.
    limit : float
        Non-negative.
    """
    high = grad.dtype.type(limit)
    low = -high
    for i in range(grad.shape[0]):
        # Comparisons with NaN are false: a NaN element is left as it is.
        g = grad[i]
        if g > high:
            grad[i] = high
        elif g < low:
            grad[i] = low


@kernel
def add_l2(grad, params, mask, coef):
    """Add the gradient of an L2 penalty on the masked parameters.

    ``grad[i] += coef * params[i]`` where ``mask[i]``: the gradient of
    ``coef / 2 * l2_penalty(params, mask)``.

    Parameters
    ----------
    grad : ndarray of shape (P,)
        Updated in place.
    params : ndarray of shape (P,)
    mask : ndarray of shape (P,), bool
        True on weights, False on biases (which are not penalised).
    coef : float
    """
    coef = grad.dtype.type(coef)
    zero = grad.dtype.type(0.0)
    # A select, not a branch: LLVM vectorises the loop, 4.2 to 2.2 ms for an
    # LSTM H=512's 2.1M parameters here, with the same bits.
    for i in range(grad.shape[0]):
        grad[i] += coef * params[i] if mask[i] else zero


@kernel
def l2_penalty(params, mask):
    """Sum of the squared masked parameters, accumulated in float64.

    Parameters
    ----------
    params : ndarray of shape (P,)
    mask : ndarray of shape (P,), bool

    Returns
    -------
    float
    """
    total = 0.0
    # The mask as a factor, not a branch (nor a select, which LLVM kept
    # scalar): the loop is vectorised, 2.3 to 1.1 ms for an LSTM H=512's
    # 2.1M parameters here.  A factor of the parameter, not of its square:
    # a large finite bias squared may overflow.
    for i in range(params.shape[0]):
        p = np.float64(params[i]) * np.float64(mask[i])
        total += p * p
    return total
