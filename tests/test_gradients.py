"""Central finite differences in float64 against the Network's gradients.

Every cell x {1, 2 layers} x {uni, bi} x {last, sequence} x {equal, mixed
lengths} x {full, truncated}, on every element of every parameter and of the
input.  Full BPTT is checked against differences of the Network's own loss;
truncated BPTT against differences of the truncation surrogate of the NumPy
reference (the loss with the state crossing each border held constant),
whose exact gradient the truncated gradient is.
"""

import itertools

import numpy as np
import pytest

import naive
from problems import CELLS, make_problem, relative_error

#: Loss used by each combination, rotated so that every loss meets every cell.
LOSSES = ["mse", "cross_entropy", "binary_cross_entropy"]
N_STEPS = 5
LENGTHS = {"equal": [5, 5, 5], "mixed": [5, 2, 4]}
TRUNCATE = {"full": None, "truncated": 2}
EPS = 1e-5  # central differences: error ~eps^2, rounding ~1e-16 / eps
TOL = 1e-6

CASES = list(
    itertools.product(CELLS, [(3,), (3, 2)], [False, True], ["last", "sequence"], LENGTHS, TRUNCATE)
)


@pytest.mark.parametrize(
    "cell_nl, hidden, bidirectional, output, lengths, truncate",
    CASES,
    ids=[f"{c[0]}-{c[1]}-{len(h)}L-{'bi' if b else 'uni'}-{o}-{ln}-{t}" for c, h, b, o, ln, t in CASES],
)
def test_gradient_matches_finite_differences(cell_nl, hidden, bidirectional, output, lengths, truncate):
    cell, nonlinearity = cell_nl
    index = CASES.index((cell_nl, hidden, bidirectional, output, lengths, truncate))
    loss = LOSSES[index % 3]
    net, X, y, lens, weights = make_problem(
        cell, nonlinearity, hidden, bidirectional, output, loss, LENGTHS[lengths], n_steps=N_STEPS, seed=index
    )
    k = TRUNCATE[truncate]
    config = dict(lengths=lens, loss=loss, output=output, sample_weight=weights)
    value, flat, _, _, input_grad, _ = net._backprop(
        X, y, lens, loss, output, k, None, weights, 0, 0.0, None, need_input_grad=True
    )
    analytic = dict(net.unflatten(flat), X=input_grad)

    views = net.unflatten(net.params)
    if k is None:
        def objective():
            return net.loss_and_grad_vector(X, y, **config)[0]
    else:
        model = dict(cell=cell, hidden_sizes=hidden, bidirectional=bidirectional, nonlinearity=nonlinearity)
        borders = naive.record_border_states(views, X, lens, **model, truncate=k)
        assert borders, "the truncated case must cross at least one border"

        def objective():
            return naive.surrogate_loss(
                views, X, y, lens, **model, output=output, loss=loss, sample_weight=weights,
                truncate=k, border_states=borders,
            )
        assert objective() == pytest.approx(value, rel=1e-12)

    numeric = naive.finite_difference_grad(objective, dict(views, X=X), eps=EPS)
    for name, expected in numeric.items():
        assert relative_error(analytic[name], expected) < TOL, name
    # The padded steps of X cannot matter.
    mask = np.arange(N_STEPS)[None, :] >= lens[:, None]
    assert np.all(input_grad[mask] == 0)
