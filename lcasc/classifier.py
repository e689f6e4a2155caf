"""The one interface every classifier in lcasc offers, and the ensemble built on it.

Every classifier a run can name — the CNN (:class:`lcasc.models.cnn.CNNClassifier`), the INT8 and ONNX
runners (:mod:`lcasc.runtimes`), the fused ensemble (:mod:`lcasc.fused`), every baseline
(:mod:`lcasc.models.baselines`) and :class:`EnsembleClassifier` — has ``classes`` and ``predict_proba`` on
features; the trainable ones also ``fit``, scikit-learn style (validation features where the model selects
hyper-parameters or stops early). Features are float32 log-mel arrays of shape ``(N, n_mels, n_frames)``;
labels are integer indices into ``classes``. Evaluation, ensembles, ``lcasc predict`` and the report only
ever call these; :mod:`lcasc.registry` finds the classifier behind each name of a run.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Classifier(Protocol):
    classes: list[str]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) float32 -> (N, n_classes) float probabilities, rows sum to 1."""


def predict(clf: Classifier, X: np.ndarray) -> np.ndarray:
    """Class indices of the most probable class."""
    return np.asarray(clf.predict_proba(X)).argmax(axis=1)


def mean_probabilities(member_probs: list[np.ndarray]) -> np.ndarray:
    """Equal-weight mean (paper §3) of (N, C) member probabilities, summed in float64, as float32. Every
    ensemble (the ensemble stage, its budget search, ``lcasc predict``) averages with this, so that an
    ensemble of INT8 members gives bit-identical probabilities everywhere."""
    return np.mean([np.asarray(p, np.float64) for p in member_probs], axis=0).astype(np.float32)


class EnsembleClassifier:
    """The equal-weight mean of the members' ``predict_proba``; members are any classifiers with the same
    class order. ``fit`` fits every member."""

    def __init__(self, members: list, names: list[str] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        classes = [list(m.classes) for m in members]
        if any(c != classes[0] for c in classes):
            raise ValueError("ensemble members disagree on the class order")
        self.members, self.classes = list(members), classes[0]
        self.names = names or [f"member{i}" for i in range(len(members))]

    def fit(self, X, y, X_val=None, y_val=None) -> EnsembleClassifier:
        for m in self.members:
            m.fit(X, y, X_val, y_val)
        return self

    def predict_proba(self, X) -> np.ndarray:
        return mean_probabilities([m.predict_proba(X) for m in self.members])
