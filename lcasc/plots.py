"""PNG figures for the report (matplotlib, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lcasc.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def confusion(conf: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per class on the diagonal), counts in the cells."""
    conf = np.asarray(conf)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.55 * len(classes)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall")
    _save(fig, path)


def training_curves(history: list[dict], path: str | Path, title: str) -> None:
    """Training loss and validation log-loss / accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    a.plot(epochs, [h["val_log_loss"] for h in history], label="validation log-loss")
    best = min(history, key=lambda h: h["val_log_loss"])
    a.axvline(best["epoch"], color="grey", ls=":", label=f"kept (epoch {best['epoch']})")
    a.set_xlabel("epoch")
    a.legend(fontsize=8)
    b.plot(epochs, [h["val_accuracy"] for h in history], color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy")
    fig.suptitle(title)
    _save(fig, path)
