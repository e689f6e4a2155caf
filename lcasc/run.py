"""A run directory as one object: its resolved config, its features, its results and probability cache.

    DIR/config.yaml            everything resolved (dataset, features, model, training)
    DIR/features/summary.json  segments per split, skipped files, silent segments dropped
    DIR/models/<name>/         model.pt, spec.json, train_log.csv, checkpoints, evaluation.json,
                               probabilities.npz (test and validation probabilities of the evaluation)
    DIR/results.json           classes, networks, ensembles (the stages add their entries)
    DIR/report.md, DIR/figures/*.png, DIR/lcasc.log

The stages (:mod:`lcasc.stages`) read and write these files; the CLI and :mod:`lcasc.predict` open runs here.
Rerunning a command on the same directory skips finished work and resumes interrupted training.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lcasc.data import Dataset, load_dataset
from lcasc.features import FeatureSet, default_cache_dir, extract
from lcasc.impulse import Copies, ImpulseConfig, compute, ir_files
from lcasc.io import atomic_path, read_json, write_json, write_yaml
from lcasc.logmel import FeatureParams
from lcasc.models.cnn import CNNSpec
from lcasc.train import TrainConfig

log = logging.getLogger("lcasc")


class RunError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


@dataclass
class RunConfig:
    dataset: str | None = None  # None: the embedded ESC-10 default
    layout: str | None = None  # tau22 | folder | csv; detected when None
    validation: str = "holdout"  # TAU22 protocol: holdout (30 % of fold1_train) | evaluate (the paper's)
    silence_db: float | None = -60.0  # segments quieter than this RMS level (dBFS) are left out; None keeps all
    widths: str = "16-16-32-100"
    kernel_size: int = 3
    activations: str = "TRTT"
    features: FeatureParams = field(default_factory=FeatureParams)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str | None = None  # feature cache; default $LCASC_CACHE_DIR or ~/.cache/lcasc/features
    recipe: str = "paper"  # paper | kd: distilled from teachers (lcasc.recipes); a kd run lives in DIR/kd
    teacher_widths: list[str] = field(default_factory=list)  # kd: wider CNNs the run trains first as teachers
    teacher_ensemble: bool = False  # kd: the paper recipe's six pruned networks (DIR/..) as one more teacher
    teacher_logits: str | None = None  # kd: per-segment teacher logits of the training clips (CSV/NPZ)
    # device impulse responses (lcasc.impulse): convolved copies of the training features; folder None: off
    impulse_responses: ImpulseConfig = field(default_factory=ImpulseConfig)

    def __post_init__(self):
        self.impulse_responses = ImpulseConfig.coerce(self.impulse_responses)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train"].pop("progress")
        d["train"].pop("threads")
        d["train"].pop("compile")  # how to compute, not what: as ``threads``
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        d.setdefault("validation", "evaluate")  # a run directory older than the option validated on evaluate
        feats = FeatureParams(**d.pop("features", {}))
        train = TrainConfig(**d.pop("train", {}))
        return cls(features=feats, train=train, **d)

    def spec(self, n_classes: int) -> CNNSpec:
        return CNNSpec.from_widths(self.widths, kernel_size=self.kernel_size, activations=self.activations,
                                   n_classes=n_classes, n_mels=self.features.n_mels, n_frames=self.features.n_frames)


_LOG_FILES: dict[Path, logging.Handler] = {}


def _log_to(path: Path) -> None:
    """Append lcasc's messages (info and up, with times) to ``path``, once per file and process: every
    invocation on a run directory leaves its account in ``DIR/lcasc.log``."""
    if path not in _LOG_FILES:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        logger = logging.getLogger("lcasc")
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        _LOG_FILES[path] = handler
        from lcasc._version import __version__

        log.info("lcasc %s: %s", __version__, " ".join(sys.argv))


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
            old = RunConfig.from_dict(yaml.safe_load(saved.read_text())).to_dict()
            new = config.to_dict()
            changed = sorted(k for k in set(old) | set(new) if k not in _HARMLESS and old.get(k) != new.get(k))
            if changed:
                raise RunError(f"{self.dir} holds a run with different settings ({', '.join(changed)}); "
                               "use another --out, or delete the folder to start over")
        config.train.progress = progress
        self.config, self.progress = config, progress
        # Read the dataset's metadata first: a bad dataset must not leave a run directory behind.
        self._dataset: Dataset = load_dataset(config.dataset, config.layout, config.validation)
        if config.impulse_responses.active:  # and a folder without impulse responses neither
            try:
                ir_files(config.impulse_responses.folder)
            except ValueError as e:
                raise RunError(str(e)) from None
        imported = read_json(self.dir / "results.json")
        if imported and imported.get("imported") and imported.get("classes") != self._dataset.classes:
            # `lcasc import` without --dataset: the network's classes are not the (default) dataset's
            raise RunError(f"{self.dir}: the imported network's classes ({', '.join(imported['classes'])}) are not "
                           f"the dataset's ({', '.join(self._dataset.classes)}); import it again with --dataset "
                           "PATH into another --out")
        self._features: FeatureSet | None = None
        self._impulse: tuple[Copies, dict] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        _log_to(self.dir / "lcasc.log")
        for tmp in self.dir.rglob(".*.tmp"):  # temporary files of writes a killed run left unfinished
            tmp.unlink(missing_ok=True)
        write_yaml(saved, config.to_dict())

    # -- data ---------------------------------------------------------------------------------------
    @property
    def dataset(self) -> Dataset:
        return self._dataset

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def seed(self) -> int:
        """The run-wide seed (``train.seed`` of config.yaml): training, pruning, calibration, clip choices."""
        return self.config.train.seed

    def features(self) -> FeatureSet:
        """All usable segments (silent ones left out), computed once per process, cached on disk."""
        if self._features is None:
            self._features, problems = extract(self.dataset, self.config.features, self.config.cache_dir,
                                               self.progress, silence_db=self.config.silence_db)
            per_split = {s: int((self._features.split == self.dataset.aliases.get(s, s)).sum())
                         for s in ("train", "validate", "test")}
            self.data_summary = {**self.dataset.summary(), "segments": per_split,
                                 "silent_segments_dropped": self._features.silent_dropped,
                                 "skipped_files": len(problems), "skipped_rows": len(self.dataset.skipped),
                                 "problems": self.dataset.skipped + problems}
        return self._features

    def impulse_copies(self) -> Copies | None:
        """The device-impulse-response copies of the training split (computed once, cached beside the
        features), or None when the run does not use them; ``impulse_summary`` says what they cost."""
        cfg = self.config.impulse_responses
        if not cfg.active:
            return None
        if self._impulse is None:
            recordings = sorted(self.dataset.recordings, key=lambda r: r.name)  # FeatureSet.recording indexes it
            try:
                self._impulse = compute(self.split("train"), recordings, cfg, self.config.features,
                                        self.config.cache_dir or default_cache_dir(), self.seed, self.progress)
            except ValueError as e:
                raise RunError(str(e)) from None
        return self._impulse[0]

    @property
    def impulse_summary(self) -> dict | None:
        return None if self.impulse_copies() is None else self._impulse[1]

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
        entry.setdefault("recipe", self.config.recipe)
        names = [e["name"] for e in res[kind]]
        if entry["name"] in names:  # in place: a rerun keeps the order of results.json
            res[kind][names.index(entry["name"])] = entry
        else:
            res[kind].append(entry)
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

    # -- probabilities --------------------------------------------------------------------------------
    def save_probabilities(self, name: str, test_probs: np.ndarray, val_probs: np.ndarray) -> None:
        """``models/<name>/probabilities.npz``: (N, n_classes) test and validation probabilities, so ensembles
        and analyses reuse them instead of running the model (or its INT8 file) again."""
        with atomic_path(self.model_dir(name) / "probabilities.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, test=np.asarray(test_probs, np.float32), validate=np.asarray(val_probs, np.float32))

    def probabilities(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(test, validation) probabilities saved by the evaluation of ``name``, or None when absent or stale."""
        path = self.model_dir(name) / "probabilities.npz"
        if not path.is_file():
            return None
        with np.load(path) as z:
            test, val = z["test"], z["validate"]
        if len(test) != len(self.split("test")) or len(val) != len(self.split("validate")):
            return None
        return test, val
