"""The one interface every classifier in lcasc offers (the CNN, ensembles, every baseline).

scikit-learn style: ``fit`` on training features (validation features where the model selects
hyper-parameters or stops early), ``predict_proba`` on features. Features are float32 log-mel arrays of
shape ``(N, 40, 51)``; labels are integer class indices into ``classes``. Evaluation, ensembling and
reports only ever call these.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Classifier(Protocol):
    classes: list[str]

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> Classifier:
        """Train on ``X`` (N, 40, 51) float32 with labels ``y`` (N,) int; returns self."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) float32 -> (N, n_classes) float probabilities, rows sum to 1."""


def predict(clf: Classifier, X: np.ndarray) -> np.ndarray:
    """Class indices of the most probable class."""
    return np.asarray(clf.predict_proba(X)).argmax(axis=1)
