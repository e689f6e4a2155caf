"""Training of the run's network (the unpruned one; in a kd run, distilled from its teachers)."""

from __future__ import annotations

import logging

from lcasc import plots
from lcasc.models.cnn import CNNClassifier
from lcasc.names import UNPRUNED
from lcasc.recipes import teacher_logits
from lcasc.run import Run

log = logging.getLogger("lcasc")


def run(run: Run, name: str = UNPRUNED) -> CNNClassifier:
    """Train ``models/<name>`` (resuming an interrupted training; reusing a finished one)."""
    folder = run.model_dir(name)
    if (folder / "model.pt").is_file():
        log.info("train: %s already trained, reusing %s", name, folder / "model.pt")
        return CNNClassifier.load(folder)
    tr, va = run.split("train"), run.split("validate")
    clf = CNNClassifier(run.classes, spec=run.config.spec(len(run.classes)), train_config=run.config.train,
                        workdir=folder)
    clf.fit(tr.X, tr.y, va.X, va.y, teacher_logits(run), run.impulse_copies())  # None when not asked for
    clf.save(folder)
    if clf.history:
        plots.training_curves(clf.history, run.figure(f"training_{name}.png"), f"training: {name}")
    return clf
