"""Ensembles: the equal-weight mean of member probabilities (paper §3), and the search for the best subset
of members within a parameter/MAC budget."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from lcasc import metrics
from lcasc.complexity import DCASE_MAX_MACS, DCASE_MAX_PARAMS, Complexity, total


class EnsembleClassifier:
    """Mean of the members' ``predict_proba``; members are any classifiers with the same class order."""

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
        return np.mean([np.asarray(m.predict_proba(X), dtype=np.float64) for m in self.members], axis=0)


def paper_table3_subsets(names: list[str]) -> list[tuple[str, ...]]:
    """All members, then every leave-one-out subset (paper Table 3)."""
    subsets = [tuple(names)]
    if len(names) > 2:
        subsets += [tuple(n for n in names if n != left_out) for left_out in names]
    return subsets


def best_subset(val_probs: dict[str, np.ndarray], y_val: np.ndarray, costs: dict[str, Complexity],
                max_params: int = DCASE_MAX_PARAMS, max_macs: int = DCASE_MAX_MACS,
                max_members: int | None = None) -> tuple[tuple[str, ...], dict] | None:
    """The subset with the lowest validation log-loss among those within the budget (exhaustive search).

    ``val_probs``: member name -> (N, C) validation probabilities (computed once per member).
    Returns (names, validation scores) or None when no single member fits the budget.
    """
    names = sorted(val_probs)
    n_classes = next(iter(val_probs.values())).shape[1]
    best = None
    for k in range(1, (max_members or len(names)) + 1):
        for subset in combinations(names, k):
            cx = total([costs[n] for n in subset])
            if cx.params > max_params or cx.macs > max_macs:
                continue
            scores = metrics.scores(np.mean([val_probs[n] for n in subset], axis=0), y_val, n_classes)
            if best is None or scores["log_loss"] < best[1]["log_loss"]:
                best = (subset, scores)
    return best
