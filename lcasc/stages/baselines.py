"""The paper's comparison methods (METHOD-NOTES §7), fitted on the training split with hyper-parameters
chosen on validation, evaluated like the networks."""

from __future__ import annotations

import logging
import time

from lcasc import complexity, saved_models
from lcasc.models import baselines
from lcasc.models.vggish import VGGishClassifier
from lcasc.names import BASELINES, CHEAP_BASELINES
from lcasc.run import Run, RunError
from lcasc.stages.evaluate import evaluate_classifier

log = logging.getLogger("lcasc")

# The classical baselines by name: each takes (classes, seed=...) and follows scikit-learn's API.
CLASSICAL = {"gmm": baselines.GMMClassifier, "rf": baselines.RandomForestBaseline, "mlp": baselines.MLPBaseline,
             "dlsi": baselines.DLSIClassifier}


def make_baseline(kind: str, run: Run, vggish_weights: str | None = None, vggish_epochs: int = 30):
    """The paper's comparison methods (METHOD-NOTES §7), each behind the classifier interface."""
    if kind in CLASSICAL:
        return CLASSICAL[kind](run.classes, seed=run.seed)
    if kind == "vggish":
        return VGGishClassifier(run.classes, weights_path=vggish_weights, max_epochs=vggish_epochs,
                                patience=min(run.config.train.patience, 5), seed=run.seed,
                                workdir=run.model_dir("vggish"))
    raise RunError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


def _baseline_cost(kind: str, clf) -> dict:
    """Parameters and MACs where they are well defined (neural baselines), else None."""
    if kind == "vggish":
        cx = complexity.count(clf.model_.net)
        return {"params": cx.params, "macs": cx.macs, "size_kb": None, "pretrained": clf.pretrained}
    if kind == "mlp":
        layers = [40, *clf.hidden, len(clf.classes)]
        params = sum(a * b + b for a, b in zip(layers, layers[1:], strict=False))
        macs = sum(a * b for a, b in zip(layers, layers[1:], strict=False))
        return {"params": params, "macs": macs, "size_kb": None}
    return {"params": None, "macs": None, "size_kb": None}


def run(run: Run, only: list[str] | None = None, vggish_weights: str | None = None,
                    vggish_epochs: int = 30, refit: bool = False) -> list[dict]:
    """Fit every requested baseline on train (choosing hyper-parameters on validation), evaluate on test.
    Baselines already in ``results.json`` are kept unless ``refit``."""
    tr, va = run.split("train"), run.split("validate")
    done = {n["name"]: n for n in run.results()["networks"] if n.get("kind") == "baseline"}
    entries = []
    for kind in only or CHEAP_BASELINES:
        if kind in done and not refit and saved_models.baseline_path(run.model_dir(kind), kind).is_file():
            entries.append(done[kind])  # fitted (and saved, so `lcasc predict --model KIND` runs it) earlier
            continue
        t0 = time.perf_counter()
        clf = make_baseline(kind, run, vggish_weights, vggish_epochs).fit(tr.X, tr.y, va.X, va.y)
        saved_models.save_baseline(run.model_dir(kind), kind, clf)
        entry = {"name": kind, "kind": "baseline", "precision": "float32",
                 **evaluate_classifier(run, clf, kind, figure=False), **_baseline_cost(kind, clf),
                 "best_params": {k: (v.item() if hasattr(v, "item") else v)
                                 for k, v in getattr(clf, "best_params_", {}).items()},
                 "fit_seconds": round(time.perf_counter() - t0, 2)}
        run.record("networks", entry)
        log.info("baseline %s: accuracy %.3f, log-loss %.3f (%.1f s)", kind, entry["accuracy"], entry["log_loss"],
                 entry["fit_seconds"])
        entries.append(entry)
    return entries
