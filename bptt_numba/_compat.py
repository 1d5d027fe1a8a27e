"""The one place that imports scikit-learn, which is optional.

With scikit-learn installed, its classes are used, so that its tools
recognise ours; without it, small stand-ins keep the package working.
"""

try:
    from sklearn.exceptions import ConvergenceWarning
except ImportError:  # scikit-learn is an optional extra

    class ConvergenceWarning(UserWarning):
        """Training stopped at ``max_iter`` before the loss converged."""


__all__ = ["ConvergenceWarning"]
