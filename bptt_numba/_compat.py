"""The one place that imports scikit-learn, which is optional.

With scikit-learn installed, its base classes and mixins are used, so that
``clone``, pipelines, searches and its estimator checks recognise ours;
without it, small stand-ins keep ``fit``/``predict``/``score`` and
``get_params``/``set_params`` working.
"""

import inspect

import numpy as np

try:
    import sklearn  # noqa: F401
except ImportError:  # scikit-learn is an optional extra
    HAVE_SKLEARN = False
else:
    HAVE_SKLEARN = True

if HAVE_SKLEARN:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    from sklearn.utils.validation import _check_feature_names as _sk_check_feature_names

    def check_feature_names(estimator, X, *, reset):
        """Set or check ``feature_names_in_`` the way scikit-learn does."""
        # An array has no names, so against a model fitted without any there
        # is nothing to check; scikit-learn's check of it took 50 of the 280
        # us of Python in a one-sequence prediction here.
        if not reset and isinstance(X, np.ndarray) and not hasattr(estimator, "feature_names_in_"):
            return
        _sk_check_feature_names(estimator, X, reset=reset)

else:

    from ._validation import ConvergenceWarning

    class DataConversionWarning(UserWarning):
        """Input data was converted (e.g. a column-vector y raveled)."""

    class NotFittedError(ValueError, AttributeError):
        """The estimator is used before ``fit``."""

    class BaseEstimator:
        """Stand-in: parameters are the arguments of ``__init__``."""

        @classmethod
        def _get_param_names(cls):
            signature = inspect.signature(cls.__init__)
            return sorted(p.name for p in signature.parameters.values() if p.name != "self")

        def get_params(self, deep=True):
            """Parameters of this estimator, by name."""
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            """Set parameters by name; returns self."""
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}")
                setattr(self, name, value)
            return self

        def __repr__(self):
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class RegressorMixin:
        """Stand-in: ``score`` is the coefficient of determination."""

        _estimator_type = "regressor"

        def score(self, X, y, sample_weight=None):
            """R^2 of ``predict(X)`` against ``y``."""
            return r2_score(y, self.predict(X), sample_weight=sample_weight)

    class ClassifierMixin:
        """Stand-in: ``score`` is the accuracy."""

        _estimator_type = "classifier"

        def score(self, X, y, sample_weight=None):
            """Mean accuracy of ``predict(X)`` against ``y``."""
            return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    def check_feature_names(estimator, X, *, reset):
        """Set or check ``feature_names_in_`` from a DataFrame's string columns."""
        columns = getattr(X, "columns", None)
        names = None
        if columns is not None and all(isinstance(c, str) for c in columns):
            names = np.asarray(list(columns), dtype=object)
        if reset:
            if names is not None:
                estimator.feature_names_in_ = names
            elif hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
            return
        fitted = getattr(estimator, "feature_names_in_", None)
        if fitted is not None and names is not None and list(fitted) != list(names):
            raise ValueError("The feature names should match those that were passed during fit.")


def check_is_fitted(estimator):
    """Raise NotFittedError unless ``estimator`` is fitted.

    Asks ``__sklearn_is_fitted__`` (scikit-learn's protocol) if it has one,
    else looks for fitted attributes.  Ours with scikit-learn too: its
    check, which looks up the estimator's tags first, took 2.5 us here
    (8 us before our estimators had ``__sklearn_is_fitted__``), this one
    0.3 us, and a prediction makes one.
    """
    is_fitted = getattr(estimator, "__sklearn_is_fitted__", None)
    if is_fitted is not None:
        fitted = is_fitted()
    else:
        fitted = any(k.endswith("_") and not k.startswith("__") for k in vars(estimator))
    if not fitted:
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with appropriate "
            "arguments before using this estimator."
        )


def r2_score(y_true, y_pred, sample_weight=None):
    """Coefficient of determination, uniform average over outputs."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    weights = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    mean = np.average(y_true, axis=0, weights=weights)
    residual = (weights[:, None] * (y_true - y_pred) ** 2).sum(axis=0)
    total = (weights[:, None] * (y_true - mean) ** 2).sum(axis=0)
    scores = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), np.where(residual > 0, 0.0, 1.0))
    return float(scores.mean())


def accuracy_score(y_true, y_pred, sample_weight=None):
    """Fraction (weighted) of exact matches."""
    hits = np.asarray(y_true) == np.asarray(y_pred)
    return float(np.average(hits, weights=sample_weight))


__all__ = [
    "HAVE_SKLEARN",
    "BaseEstimator",
    "ClassifierMixin",
    "ConvergenceWarning",
    "DataConversionWarning",
    "NotFittedError",
    "RegressorMixin",
    "accuracy_score",
    "check_feature_names",
    "check_is_fitted",
    "r2_score",
]
