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


def pruning_effect(entries: list[dict], path: str | Path, criterion: str) -> None:
    """Paper Figure 3 analogue: accuracy and log-loss of each pruned network before and after fine-tuning."""
    names = [e["pruned_layers"] for e in entries]
    x = np.arange(len(names))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, label in ((a, "accuracy", "test accuracy (%)"), (b, "log_loss", "test log-loss")):
        scale = 100 if key == "accuracy" else 1
        ax.bar(x - 0.2, [scale * e["before_finetune"][key] for e in entries], 0.4, label="pruned, before fine-tuning")
        ax.bar(x + 0.2, [scale * e[key] for e in entries], 0.4, label="after fine-tuning")
        ax.set_xticks(x, names)
        ax.set_xlabel("pruned layers")
        ax.set_ylabel(label)
    a.legend(fontsize=8)
    fig.suptitle(f"{criterion} pruning: before and after fine-tuning")
    _save(fig, path)


def accuracy_vs_macs(networks: list[dict], ensembles: list[dict], path: str | Path, max_macs: float) -> None:
    """Every network and ensemble: test accuracy against MACs, with the DCASE MAC limit drawn."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"float32": ("o", "C0"), "int8": ("s", "C1")}
    for n in networks:
        marker, color = styles.get(n["precision"], ("^", "C2"))
        ax.scatter(n["macs"] / 1e6, 100 * n["accuracy"], marker=marker, color=color, s=30)
        ax.annotate(n["name"], (n["macs"] / 1e6, 100 * n["accuracy"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    for e in ensembles:
        ax.scatter(e["macs"] / 1e6, 100 * e["accuracy"], marker="*", color="C3", s=70)
        ax.annotate(e["name"].replace("ensemble_", "E:"), (e["macs"] / 1e6, 100 * e["accuracy"]), fontsize=6,
                    xytext=(3, -7), textcoords="offset points")
    ax.axvline(max_macs / 1e6, color="red", ls="--", lw=1, label=f"DCASE limit {max_macs / 1e6:.0f} M MACs")
    for label, (marker, color) in styles.items():
        ax.scatter([], [], marker=marker, color=color, label=f"network ({label})")
    ax.scatter([], [], marker="*", color="C3", s=70, label="ensemble")
    ax.set_xlabel("MACs per second of audio (M)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def method_accuracies(entries: list[dict], path: str | Path) -> None:
    """Paper Figure 4 analogue: test accuracy of every method, as bars."""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(entries)), 3.5))
    colors = ["C7" if e.get("kind") == "baseline" else "C3" if e.get("kind") == "ensemble" else "C0"
              for e in entries]
    bars = ax.bar(range(len(entries)), [100 * e["accuracy"] for e in entries], color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(entries)), [e["name"].replace("ensemble_", "E:") for e in entries], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    _save(fig, path)
