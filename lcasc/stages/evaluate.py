"""Evaluation of any classifier of a run on its test and validation splits; the ``evaluate`` stage."""

from __future__ import annotations

import logging

import numpy as np

from lcasc import complexity, metrics, plots
from lcasc.io import write_json
from lcasc.models.cnn import CNNClassifier
from lcasc.names import UNPRUNED
from lcasc.run import Run, RunError

log = logging.getLogger("lcasc")


def test_and_validation_probs(run: Run, clf) -> tuple[np.ndarray, np.ndarray]:
    """``clf``'s probabilities on the test split and on the validation split, each clip run once: in TAU22's
    development set they are the same clips (the same rows of the feature file), and a full-size split costs
    minutes per network (an INT8 file in TFLite Micro: milliseconds per clip)."""
    te, va = run.split("test"), run.split("validate")
    if len(te) == 0:
        raise RunError("the test split has no usable segments to evaluate on")
    test_probs = clf.predict_proba(te.X)
    aliases = run.dataset.aliases
    same = ((te.mapped() is not None and te.mapped() == va.mapped())
            or aliases.get("test", "test") == aliases.get("validate", "validate"))  # in memory, same split
    return test_probs, test_probs if same else clf.predict_proba(va.X)


def evaluate_classifier(run: Run, clf, name: str, extra: dict | None = None, figure: bool = True) -> dict:
    """Evaluate any classifier on the test split (and validation); returns the results entry fields."""
    return evaluate_probs(run, name, *test_and_validation_probs(run, clf), extra, figure)


def evaluate_probs(run: Run, name: str, test_probs: np.ndarray, val_probs: np.ndarray, extra: dict | None = None,
                   figure: bool = True) -> dict:
    """Metrics of given test/validation probabilities; writes models/<name>/evaluation.json (+ confusion PNG)."""
    te, va = run.split("test"), run.split("validate")
    run.save_probabilities(name, test_probs, val_probs)
    ev = metrics.evaluate(test_probs, te.y, run.classes, te.device, te.recording)
    val = metrics.scores(val_probs, va.y, len(run.classes))
    write_json(run.model_dir(name) / "evaluation.json", {"test": ev, "validate": val})
    if figure:
        plots.confusion(np.array(ev["confusion"]), run.classes, run.figure(f"confusion_{name}.png"),
                        f"{name}: test accuracy {100 * ev['accuracy']:.1f} %")
    return {"accuracy": round(ev["accuracy"], 6), "class_avg_accuracy": round(ev["class_avg_accuracy"], 6),
            "log_loss": round(ev["log_loss"], 6), "recording_accuracy": round(ev["recording_accuracy"], 6),
            "validation": {k: round(v, 6) for k, v in val.items()}, **(extra or {})}


def run(run: Run, name: str = UNPRUNED, extra: dict | None = None) -> dict:
    """Evaluate the float network ``models/<name>`` and record it (with its complexity) in results.json."""
    clf = CNNClassifier.load(run.model_dir(name))
    cx = complexity.of_spec(clf.spec)
    entry = {"name": name, "kind": "cnn", "precision": "float32", "widths": clf.spec.widths,
             **evaluate_classifier(run, clf, name), "params": cx.params, "macs": cx.macs, "size_kb": cx.size_kb,
             "within_dcase_limits": cx.within_dcase_limits, **(extra or {})}
    run.record("networks", entry)
    log.info("evaluate: %s accuracy %.3f, class-avg %.3f, log-loss %.3f", name, entry["accuracy"],
             entry["class_avg_accuracy"], entry["log_loss"])
    return entry
