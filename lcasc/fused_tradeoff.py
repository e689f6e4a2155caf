"""How much a fused ensemble saves and what it costs in accuracy: the trade-off over sharing thresholds
(``models/ensemble_fused/fused.json``, a PNG), and the comparison with the unfused ensemble."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lcasc import metrics
from lcasc.fused import FusedEnsemble, as_lists, build_fused, ensemble_proba, fused_complexity, unfused_complexity
from lcasc.models.cnn import LowComplexityCNN
from lcasc.similarity import DEFAULT_THRESHOLD, LAYERS, feature_map_mse


def tradeoff(members: Mapping[str, LowComplexityCNN], kept: Mapping | None, mse: Mapping,
             thresholds: Sequence[float], data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """For each threshold: the fused ensemble's cost and scores on each named split.

    ``data``: split name -> (X (N, n_mels, n_frames), y (N,) int). Returns a list of
    ``{"threshold", "params", "macs", "params_saved", "macs_saved", "distinct_maps": {layer: n},
    <split>: metrics.scores(...)}`` (saved = unfused minus fused; an infinite threshold, "share whatever
    has shared inputs", is reported as ``None`` so that the rows stay valid JSON).
    """
    names, nets, _ = as_lists(members, kept)
    base = unfused_complexity(nets)
    n_classes = nets[0].spec.n_classes
    rows = []
    for t in thresholds:
        fused = build_fused(members, kept, mse, t)
        cost = fused_complexity(fused)
        row = {"threshold": _json_threshold(t), "params": cost.params, "macs": cost.macs,
               "params_saved": base.params - cost.params, "macs_saved": base.macs - cost.macs,
               "distinct_maps": {layer: s["distinct_maps"] for layer, s in fused.sharing().items()}}
        for split, (X, y) in data.items():
            row[split] = metrics.scores(fused.predict_proba(X), y, n_classes)
        rows.append(row)
    return rows


def _json_threshold(t: float) -> float | None:
    return float(t) if np.isfinite(t) else None


def plot_tradeoff(rows: list[dict], path: str | Path, split: str = "test", unfused: dict | None = None) -> None:
    """MACs saved (M) against accuracy (%) on ``split``, one point per threshold, log-loss on a second axis."""
    from lcasc.plots import _save, plt

    saved = [r["macs_saved"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(saved, [100 * r[split]["accuracy"] for r in rows], "o-", color="C0", label="accuracy")
    labels: dict[tuple[float, float], list[str]] = {}  # thresholds that give the same point share one label
    for r, s in zip(rows, saved):
        labels.setdefault((s, 100 * r[split]["accuracy"]), []).append(
            "all" if r["threshold"] is None else f"{r['threshold']:g}")
    for i, ((s, acc), texts) in enumerate(labels.items()):  # staggered: nearby thresholds save similar MACs
        ax.annotate(", ".join(texts), (s, acc), fontsize=7, xytext=(3, -12 - 10 * (i % 3)), textcoords="offset points")
    ax.margins(x=0.08, y=0.2)
    if unfused is not None:
        ax.axhline(100 * unfused["accuracy"], color="C0", ls=":", lw=1, label="unfused ensemble")
    ax.set_xlabel("MACs saved per second of audio (M)")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(saved, [r[split]["log_loss"] for r in rows], "s--", color="C1", label="log-loss")
    ax2.set_ylabel(f"{split} log-loss")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="best")
    ax.set_title("fused ensemble: MACs saved vs accuracy (labels: MSE threshold)", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)


def fuse_and_evaluate(nets: dict[str, LowComplexityCNN], kept: dict[str, dict[str, list[int]]],
                      X_calib_for_mse: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, X_val: np.ndarray,
                      y_val: np.ndarray, thresholds: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
                      threshold: float = DEFAULT_THRESHOLD, figure_dir: Path | None = None,
                      mse: Mapping | None = None, batch_size: int = 512,
                      fused: FusedEnsemble | None = None) -> dict:
    """Fuse ``nets`` at ``threshold`` and compare with the ordinary ensemble; sweep ``thresholds``.

    MSE per map is measured on ``X_calib_for_mse`` (N, n_mels, n_frames; e.g.
    ``similarity.select_clips(validation)``) for C1, C2 and C3, unless ``mse`` (layer -> feature_map_mse
    result) is given. ``figure_dir``: writes ``fused_tradeoff.png`` there when given.

    ``fused``: the module built at ``threshold`` when the caller has it already.

    Returns ``{"threshold", "unfused": {...}, "fused": {...}, "saved": {"params", "macs"}, "tradeoff": [...],
    "figures": [...], "module": FusedEnsemble, "probabilities": {"test", "validate"}}``. ``unfused``/``fused``:
    ``params``, ``macs``, ``test`` and ``validate`` (:func:`lcasc.metrics.scores`); ``fused`` also
    ``sharing`` (per layer member maps, distinct maps, shared maps). ``tradeoff``: :func:`tradeoff` rows on
    test and validation. ``probabilities``: the fused module's on the test and validation features. All but
    ``module`` and ``probabilities`` is JSON-serialisable.
    """
    names = list(nets)
    members = [nets[n] for n in names]
    if mse is None:
        mse = {layer: feature_map_mse(nets, X_calib_for_mse, layer, batch_size,
                                      {n: kept.get(n, {}).get(layer) for n in names}, threshold)
               for layer in LAYERS}
    n_classes = members[0].spec.n_classes
    base = unfused_complexity(members)
    unfused = {"params": base.params, "macs": base.macs,
               "test": metrics.scores(ensemble_proba(members, X_test), y_test, n_classes),
               "validate": metrics.scores(ensemble_proba(members, X_val), y_val, n_classes)}
    fused = build_fused(nets, kept, mse, threshold) if fused is None else fused
    cost = fused_complexity(fused)
    probabilities = {"test": fused.predict_proba(X_test), "validate": fused.predict_proba(X_val)}
    fused_entry = {"params": cost.params, "macs": cost.macs,
                   "test": metrics.scores(probabilities["test"], y_test, n_classes),
                   "validate": metrics.scores(probabilities["validate"], y_val, n_classes),
                   "sharing": fused.sharing()}
    rows = tradeoff(nets, kept, mse, thresholds, {"test": (X_test, y_test), "validate": (X_val, y_val)})
    figures = []
    if figure_dir is not None:
        plot_tradeoff(rows, Path(figure_dir) / "fused_tradeoff.png", "test", unfused["test"])
        figures.append("fused_tradeoff.png")
    return {"threshold": _json_threshold(threshold), "members": names, "unfused": unfused, "fused": fused_entry,
            "saved": {"params": base.params - cost.params, "macs": base.macs - cost.macs},
            "tradeoff": rows, "figures": figures, "module": fused, "probabilities": probabilities}
