"""The stages of ``lcasc run``; each reads and writes plain files in the run directory.

    DIR/config.yaml            everything resolved (dataset, features, model, training)
    DIR/features/summary.json  segments per split, skipped files, silent segments dropped
    DIR/models/<name>/         model.pt, spec.json, train_log.csv, checkpoints, evaluation.json
    DIR/results.json           classes, networks, ensembles (later stages append)
    DIR/report.md, DIR/figures/*.png

Rerunning a command on the same directory skips finished stages and resumes interrupted training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lcasc import complexity, metrics, plots
from lcasc.data import Dataset, load_dataset
from lcasc.features import FeatureParams, FeatureSet, extract
from lcasc.io import read_json, write_json, write_yaml
from lcasc.models.cnn import CNNClassifier, CNNSpec
from lcasc.train import TrainConfig

log = logging.getLogger("lcasc")
UNPRUNED = "unpruned"


class RunError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


@dataclass
class RunConfig:
    dataset: str | None = None  # None: the embedded ESC-10 default
    layout: str | None = None  # tau22 | folder | csv; detected when None
    silence_db: float | None = -60.0  # segments quieter than this RMS level (dBFS) are left out; None keeps all
    widths: str = "16-16-32-100"
    kernel_size: int = 3
    activations: str = "TRTT"
    features: FeatureParams = field(default_factory=FeatureParams)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str | None = None  # feature cache; default $LCASC_CACHE_DIR or ~/.cache/lcasc/features

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"].pop("progress")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        feats = FeatureParams(**d.pop("features", {}))
        train = TrainConfig(**d.pop("train", {}))
        return cls(features=feats, train=train, **d)

    def spec(self, n_classes: int) -> CNNSpec:
        return CNNSpec.from_widths(self.widths, kernel_size=self.kernel_size, activations=self.activations,
                                   n_classes=n_classes, n_mels=self.features.n_mels, n_frames=self.features.n_frames)


# What may differ between two invocations on one run directory without invalidating its results.
_HARMLESS = {"cache_dir"}


class Run:
    """A run directory: its config, its features (computed once, kept in memory) and its results."""

    def __init__(self, out: str | Path, config: RunConfig | None = None, progress: bool = True):
        self.dir = Path(out).expanduser().resolve()
        saved = self.dir / "config.yaml"
        if config is None:
            if not saved.is_file():
                raise RunError(f"{self.dir}: not a run directory (no config.yaml); start one with `lcasc run` "
                               f"or `lcasc features --out {out}`")
            config = RunConfig.from_dict(yaml.safe_load(saved.read_text()))
        elif saved.is_file():
            old = yaml.safe_load(saved.read_text())
            new = config.to_dict()
            changed = sorted(k for k in set(old) | set(new) if k not in _HARMLESS and old.get(k) != new.get(k))
            if changed:
                raise RunError(f"{self.dir} holds a run with different settings ({', '.join(changed)}); "
                               "use another --out, or delete the folder to start over")
        config.train.progress = progress
        self.config, self.progress = config, progress
        # Read the dataset's metadata first: a bad dataset must not leave a run directory behind.
        self._dataset: Dataset = load_dataset(config.dataset, config.layout)
        self._features: FeatureSet | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        write_yaml(saved, config.to_dict())

    # -- data ---------------------------------------------------------------------------------------
    @property
    def dataset(self) -> Dataset:
        return self._dataset

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    def features(self) -> FeatureSet:
        """All usable segments (silent ones left out), computed once per process, cached on disk."""
        if self._features is None:
            fs, problems = extract(self.dataset, self.config.features, self.config.cache_dir, self.progress)
            keep = np.ones(len(fs), bool)
            if self.config.silence_db is not None:
                keep = fs.level_db >= self.config.silence_db
            self._features = fs.select(keep)
            per_split = {s: int((self._features.split == self.dataset.aliases.get(s, s)).sum())
                         for s in ("train", "validate", "test")}
            self.data_summary = {**self.dataset.summary(), "segments": per_split,
                                 "silent_segments_dropped": int((~keep).sum()),
                                 "skipped_files": len(problems), "skipped_rows": len(self.dataset.skipped),
                                 "problems": self.dataset.skipped + problems}
        return self._features

    def split(self, name: str) -> FeatureSet:
        fs = self.features().subset(self.dataset.aliases.get(name, name))
        if name != "test" and len(fs) == 0:
            raise RunError(f"the {name} split has no usable segments")
        return fs

    # -- results ------------------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"

    def results(self) -> dict:
        res = read_json(self.results_path) or {}
        res.setdefault("classes", self.classes)
        res.setdefault("networks", [])
        res.setdefault("ensembles", [])
        return res

    def record(self, kind: str, entry: dict) -> None:
        """Insert or replace (by name) an entry of ``results.json`` ``kind`` ("networks" or "ensembles")."""
        res = self.results()
        res[kind] = [e for e in res[kind] if e["name"] != entry["name"]] + [entry]
        write_json(self.results_path, res)

    def update_results(self, **fields) -> None:
        res = self.results()
        res.update(fields)
        write_json(self.results_path, res)

    def model_dir(self, name: str) -> Path:
        return self.dir / "models" / name

    def figure(self, name: str) -> Path:
        (self.dir / "figures").mkdir(parents=True, exist_ok=True)
        return self.dir / "figures" / name


# -- stages -----------------------------------------------------------------------------------------
def stage_features(run: Run) -> dict:
    run.features()
    write_json(run.dir / "features" / "summary.json", run.data_summary)
    run.update_results(data={k: v for k, v in run.data_summary.items() if k != "problems"})
    s = run.data_summary
    log.info("features: %s segments (train/validate/test), %d silent dropped, %d files and %d rows skipped",
             "/".join(str(v) for v in s["segments"].values()), s["silent_segments_dropped"],
             s["skipped_files"], s["skipped_rows"])
    return run.data_summary


def stage_train(run: Run, name: str = UNPRUNED) -> CNNClassifier:
    folder = run.model_dir(name)
    if (folder / "model.pt").is_file():
        log.info("train: %s already trained, reusing %s", name, folder / "model.pt")
        return CNNClassifier.load(folder)
    tr, va = run.split("train"), run.split("validate")
    clf = CNNClassifier(run.classes, spec=run.config.spec(len(run.classes)), train_config=run.config.train,
                        workdir=folder)
    clf.fit(tr.X, tr.y, va.X, va.y)
    clf.save(folder)
    if clf.history:
        plots.training_curves(clf.history, run.figure(f"training_{name}.png"), f"training: {name}")
    return clf


def evaluate_classifier(run: Run, clf, name: str, extra: dict | None = None) -> dict:
    """Evaluate any classifier on the test split (and validation); returns the results entry fields."""
    te, va = run.split("test"), run.split("validate")
    if len(te) == 0:
        raise RunError("the test split has no usable segments to evaluate on")
    ev = metrics.evaluate(clf.predict_proba(te.X), te.y, run.classes, te.device, te.recording)
    val = metrics.scores(clf.predict_proba(va.X), va.y, len(run.classes))
    write_json(run.model_dir(name) / "evaluation.json", {"test": ev, "validate": val})
    plots.confusion(np.array(ev["confusion"]), run.classes, run.figure(f"confusion_{name}.png"),
                    f"{name}: test accuracy {100 * ev['accuracy']:.1f} %")
    return {"accuracy": round(ev["accuracy"], 6), "class_avg_accuracy": round(ev["class_avg_accuracy"], 6),
            "log_loss": round(ev["log_loss"], 6), "recording_accuracy": round(ev["recording_accuracy"], 6),
            "validation": {k: round(v, 6) for k, v in val.items()}, **(extra or {})}


def stage_evaluate(run: Run, name: str = UNPRUNED) -> dict:
    clf = CNNClassifier.load(run.model_dir(name))
    cx = complexity.of_spec(clf.spec)
    entry = {"name": name, "kind": "cnn", "precision": "float32", "widths": clf.spec.widths,
             **evaluate_classifier(run, clf, name), "params": cx.params, "macs": cx.macs, "size_kb": cx.size_kb,
             "within_dcase_limits": cx.within_dcase_limits}
    run.record("networks", entry)
    log.info("evaluate: %s accuracy %.3f, class-avg %.3f, log-loss %.3f", name, entry["accuracy"],
             entry["class_avg_accuracy"], entry["log_loss"])
    return entry


def run_all(run: Run) -> dict:
    """``lcasc run``: features -> train -> evaluate (with complexity) -> report."""
    from lcasc import report

    timings = {}
    for stage, fn in (("features", stage_features), ("train", stage_train), ("evaluate", stage_evaluate)):
        t0 = time.perf_counter()
        fn(run)
        timings[stage] = round(time.perf_counter() - t0, 2)
        log.info("stage %s done in %.1f s", stage, timings[stage])
    run.update_results(timings=timings)
    report.write(run)
    return run.results()
