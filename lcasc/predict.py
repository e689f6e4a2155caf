"""Scene predictions for users' own recordings, from a run directory.

    import lcasc
    p = lcasc.load("runs/default")                  # the best network of the run, or model=/ensemble=
    result = p.predict("street.flac")               # any length, rate, channel count, common format
    result.scene, result.probabilities, result.per_second

Each 1-second segment gets class probabilities; a file's scene is the argmax of their mean.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from lcasc import audio
from lcasc.features import FeatureParams, logmel
from lcasc.io import read_json

log = logging.getLogger("lcasc")
FORMATS = ("table", "json", "csv", "dcase")


@dataclass
class Prediction:
    name: str
    classes: list[str]
    per_second: np.ndarray  # (n_segments, n_classes) probabilities
    probabilities: np.ndarray  # (n_classes,) mean over segments

    @property
    def scene(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]


class Predictor:
    """A trained classifier of a run directory with the feature pipeline in front of it."""

    def __init__(self, run_dir: str | Path, model: str | None = None, ensemble: str | None = None):
        from lcasc.pipeline import load_classifier

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "results.json").is_file():
            raise FileNotFoundError(f"{self.run_dir}: no results.json; is this a finished run directory?")
        results = read_json(self.run_dir / "results.json")
        self.name, self.classifier = load_classifier(self.run_dir, results, model, ensemble)
        self.classes = list(self.classifier.classes)
        config_path = self.run_dir / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        self.params = FeatureParams(**config.get("features", {}))

    def predict(self, source: str | Path | np.ndarray, sample_rate: int | None = None) -> Prediction:
        """A file path, or a (samples,) / (samples, channels) array with its ``sample_rate``."""
        if isinstance(source, (str, Path)):
            x, name = audio.load(source), str(source)
        else:
            if sample_rate is None:
                raise ValueError("pass sample_rate with an array")
            x, name = audio.to_mono_44k(source, sample_rate), "<array>"
        probs = self.classifier.predict_proba(logmel(audio.segment(x, self.params.min_last_segment), self.params))
        return Prediction(name, self.classes, probs, probs.mean(axis=0))


def load(run_dir: str | Path, model: str | None = None, ensemble: str | None = None) -> Predictor:
    """The Python entry point: ``lcasc.load(DIR).predict(path_or_array, sample_rate)``."""
    return Predictor(run_dir, model, ensemble)


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders replaced by every audio file under them (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in audio.AUDIO_EXTENSIONS)
        else:
            out.append(p)
    return out


def format_predictions(preds: list[Prediction], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not preds:
        return ""
    classes = preds[0].classes
    if fmt == "json":
        return json.dumps([{"filename": p.name, "scene_label": p.scene,
                            "probabilities": dict(zip(classes, map(float, p.probabilities), strict=True)),
                            "per_second": [dict(zip(classes, map(float, row), strict=True)) for row in p.per_second]}
                           for p in preds], indent=2) + "\n"
    buf = io.StringIO()
    if fmt == "dcase":  # DCASE Task 1 output: filename, scene_label, one probability column per class
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["filename", "scene_label", *classes])
        w.writerows([p.name, p.scene, *(f"{v:.6f}" for v in p.probabilities)] for p in preds)
    elif fmt == "csv":  # one row per second
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["filename", "second", "scene_label", *classes])
        for p in preds:
            for i, row in enumerate(p.per_second):
                w.writerow([p.name, i, classes[int(row.argmax())], *(f"{v:.6f}" for v in row)])
    else:
        width = max(len(p.name) for p in preds)
        for p in preds:
            buf.write(f"{p.name:<{width}}  {p.scene:<20} {100 * p.probabilities.max():5.1f} %  "
                      f"({len(p.per_second)} s)\n")
    return buf.getvalue()
