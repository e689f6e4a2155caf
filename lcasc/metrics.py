"""Metrics of the paper and the DCASE challenge on class probabilities.

- accuracy: fraction of segments whose most probable class is right;
- class-averaged accuracy: mean of per-class recall (the trace of the row-normalised confusion matrix / C),
  as in the authors' scripts (METHOD-NOTES §6);
- log-loss: scikit-learn's multi-class ``log_loss`` on the probabilities.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss


def _norm(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def scores(probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Accuracy, class-averaged accuracy and log-loss of (N, C) probabilities against (N,) labels."""
    probs, y = _norm(probs), np.asarray(y)
    if len(y) == 0:
        raise ValueError("no labelled segments to evaluate")
    conf = confusion_matrix(y, probs.argmax(1), labels=np.arange(n_classes))
    present = conf.sum(1) > 0
    recall = np.diag(conf)[present] / conf.sum(1)[present]
    return {"accuracy": float(np.mean(probs.argmax(1) == y)), "class_avg_accuracy": float(recall.mean()),
            "log_loss": float(log_loss(y, probs, labels=np.arange(n_classes)))}


def recording_probs(probs: np.ndarray, recording: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities per recording: returns (recording ids, (R, C) probabilities)."""
    ids, inverse = np.unique(recording, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return ids, sums / np.bincount(inverse)[:, None]


def evaluate(probs: np.ndarray, y: np.ndarray, classes: list[str], devices: np.ndarray | None = None,
             recording: np.ndarray | None = None) -> dict:
    """Everything the report shows for one classifier on one split."""
    probs, y, n = _norm(probs), np.asarray(y), len(classes)
    out = scores(probs, y, n)
    pred = probs.argmax(1)
    conf = confusion_matrix(y, pred, labels=np.arange(n))
    out["n_segments"] = int(len(y))
    out["per_class"] = {c: {"n": int(conf[i].sum()), "accuracy": float(conf[i, i] / conf[i].sum())
                            if conf[i].sum() else None} for i, c in enumerate(classes)}
    if devices is not None:
        out["per_device"] = {str(d): {"n": int((devices == d).sum()), **scores(probs[devices == d],
                                                                              y[devices == d], n)}
                             for d in sorted(set(devices.tolist()))}
    if recording is not None:
        ids, rec_probs = recording_probs(probs, recording)
        first = {r: i for i, r in reversed(list(enumerate(recording.tolist())))}
        rec_y = np.array([y[first[r]] for r in ids.tolist()])
        out["recording_accuracy"] = float(np.mean(rec_probs.argmax(1) == rec_y))
        out["n_recordings"] = int(len(ids))
    out["confusion"] = conf.tolist()
    return out
