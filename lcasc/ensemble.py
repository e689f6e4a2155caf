"""Which members an ensemble has: paper Table 3's subsets, and the best subset of members within a
parameter/MAC budget (the mean itself: :func:`lcasc.classifier.mean_probabilities`)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from lcasc import metrics
from lcasc.classifier import mean_probabilities
from lcasc.complexity import DCASE_MAX_MACS, DCASE_MAX_PARAMS, Complexity, total


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
            scores = metrics.scores(mean_probabilities([val_probs[n] for n in subset]), y_val, n_classes)
            if best is None or scores["log_loss"] < best[1]["log_loss"]:
                best = (subset, scores)
    return best
