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
import sys
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
# The control for the pruning tables: the unpruned network fine-tuned with the pruned networks' recipe and
# budget, so that the report separates the effect of pruning from the effect of training longer.
UNPRUNED_FT = "unpruned_ft"


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
        from lcasc import __version__

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
        self._features: FeatureSet | None = None
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
    from lcasc.recipes import teacher_logits

    clf.fit(tr.X, tr.y, va.X, va.y, teacher_logits(run))  # teacher logits: None in the paper recipe
    clf.save(folder)
    if clf.history:
        plots.training_curves(clf.history, run.figure(f"training_{name}.png"), f"training: {name}")
    return clf


def evaluate_classifier(run: Run, clf, name: str, extra: dict | None = None, figure: bool = True) -> dict:
    """Evaluate any classifier on the test split (and validation); returns the results entry fields."""
    te, va = run.split("test"), run.split("validate")
    if len(te) == 0:
        raise RunError("the test split has no usable segments to evaluate on")
    test_probs = clf.predict_proba(te.X)
    # TAU22's development set: test and validation are the same clips (the same rows of the feature file),
    # so each clip is run once (an INT8 file in TFLite Micro costs milliseconds per clip).
    same = te.mapped() is not None and te.mapped() == va.mapped()
    return evaluate_probs(run, name, test_probs, test_probs if same else clf.predict_proba(va.X), extra, figure)


def save_probabilities(run: Run, name: str, test_probs: np.ndarray, val_probs: np.ndarray) -> None:
    """``models/<name>/probabilities.npz``: (N, n_classes) test and validation probabilities, so ensembles and
    analyses reuse them instead of running the model (or its INT8 file) again."""
    from lcasc.io import atomic_path

    with atomic_path(run.model_dir(name) / "probabilities.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, test=np.asarray(test_probs, np.float32), validate=np.asarray(val_probs, np.float32))


def load_probabilities(run: Run, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(test, validation) probabilities saved by the evaluation of ``name``, or None when absent or stale."""
    path = run.model_dir(name) / "probabilities.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        test, val = z["test"], z["validate"]
    if len(test) != len(run.split("test")) or len(val) != len(run.split("validate")):
        return None
    return test, val


def evaluate_probs(run: Run, name: str, test_probs: np.ndarray, val_probs: np.ndarray, extra: dict | None = None,
                   figure: bool = True) -> dict:
    """Metrics of given test/validation probabilities; writes models/<name>/evaluation.json (+ confusion PNG)."""
    te, va = run.split("test"), run.split("validate")
    save_probabilities(run, name, test_probs, val_probs)
    ev = metrics.evaluate(test_probs, te.y, run.classes, te.device, te.recording)
    val = metrics.scores(val_probs, va.y, len(run.classes))
    write_json(run.model_dir(name) / "evaluation.json", {"test": ev, "validate": val})
    if figure:
        plots.confusion(np.array(ev["confusion"]), run.classes, run.figure(f"confusion_{name}.png"),
                        f"{name}: test accuracy {100 * ev['accuracy']:.1f} %")
    return {"accuracy": round(ev["accuracy"], 6), "class_avg_accuracy": round(ev["class_avg_accuracy"], 6),
            "log_loss": round(ev["log_loss"], 6), "recording_accuracy": round(ev["recording_accuracy"], 6),
            "validation": {k: round(v, 6) for k, v in val.items()}, **(extra or {})}


def stage_evaluate(run: Run, name: str = UNPRUNED, extra: dict | None = None) -> dict:
    clf = CNNClassifier.load(run.model_dir(name))
    cx = complexity.of_spec(clf.spec)
    entry = {"name": name, "kind": "cnn", "precision": "float32", "widths": clf.spec.widths,
             **evaluate_classifier(run, clf, name), "params": cx.params, "macs": cx.macs, "size_kb": cx.size_kb,
             "within_dcase_limits": cx.within_dcase_limits, **(extra or {})}
    run.record("networks", entry)
    log.info("evaluate: %s accuracy %.3f, class-avg %.3f, log-loss %.3f", name, entry["accuracy"],
             entry["class_avg_accuracy"], entry["log_loss"])
    return entry


# Paper Table 2: which layers each pruned network prunes.
LAYER_SETS = {"C1": ("C1",), "C2": ("C2",), "C3": ("C3",), "C12": ("C1", "C2"), "C23": ("C2", "C3"),
              "C123": ("C1", "C2", "C3")}


def pruned_name(combo: str, criterion: str = "similarity") -> str:
    return f"pruned_{combo}" if criterion == "similarity" else f"pruned_{criterion}_{combo}"


def stage_prune(run: Run, layers: list[str] | None = None, criterion: str = "similarity",
                max_epochs: int | None = None, patience: int | None = None) -> list[dict]:
    """Prune the unpruned network (indices found once per layer), fine-tune and evaluate each combination.

    Fine-tuning uses the run's training recipe (all layers trainable, from the kept weights); ``max_epochs``
    and ``patience`` override its budget."""
    from dataclasses import replace

    from lcasc import prune

    layers = list(layers or LAYER_SETS)
    unknown = [c for c in layers if c not in LAYER_SETS]
    if unknown:
        raise RunError(f"unknown layer combination(s) {', '.join(unknown)}; choose from {', '.join(LAYER_SETS)}")
    base = CNNClassifier.load(run.model_dir(UNPRUNED))
    index_file = run.dir / "models" / f"pruning_{criterion}.json"
    removed_all = read_json(index_file)
    if removed_all is None:
        removed_all = prune.find_redundant(base.net, criterion=criterion, seed=run.config.train.seed)
        write_json(index_file, removed_all)
    log.info("prune (%s): removing %s filters of C1/C2/C3", criterion,
             "/".join(str(len(removed_all[k])) for k in ("C1", "C2", "C3")))
    va, te = run.split("validate"), run.split("test")
    finetune = replace(run.config.train, threads=1, progress=False,
                       **{k: v for k, v in (("max_epochs", max_epochs), ("patience", patience)) if v is not None})
    budget = {"max_epochs": finetune.max_epochs, "patience": finetune.patience}
    nets, before = {}, {}
    for combo in layers:
        nets[pruned_name(combo, criterion)] = prune.prune_network(
            base.net, {layer: removed_all[layer] for layer in LAYER_SETS[combo]})
    nets[UNPRUNED_FT] = prune.prune_network(base.net, {})  # a copy: nothing removed
    for name, net in nets.items():
        pruned = CNNClassifier(run.classes, net=net)
        before[name] = {split: {k: round(v, 6) for k, v in metrics.scores(pruned.predict_proba(fs.X), fs.y,
                                                                          len(run.classes)).items()}
                        for split, fs in (("test", te), ("validate", va))}
    for name in nets:  # the budget a model in models/<name>/ is (being) fine-tuned with, fixed once
        saved = read_json(run.model_dir(name) / "finetune.json")
        if saved is not None and saved != budget and (run.model_dir(name) / "model.pt").is_file():
            raise RunError(f"{name} was fine-tuned with {saved}, not {budget}; use another run directory, or "
                           f"delete {run.model_dir(name)} to fine-tune it again")
        write_json(run.model_dir(name) / "finetune.json", budget)
    todo = [name for name in nets if not (run.model_dir(name) / "model.pt").is_file()]
    if todo:
        finetune_all(run, {name: nets[name] for name in todo}, finetune)
    entries = []
    for name in nets:
        if name == UNPRUNED_FT:
            extra = {"control": "unpruned network fine-tuned with the pruned networks' recipe and budget"}
        else:
            combo = name.removeprefix("pruned_").removeprefix(f"{criterion}_")
            extra = {"criterion": criterion, "pruned_layers": combo,
                     "removed": {layer: removed_all[layer] for layer in LAYER_SETS[combo]}}
        entry = stage_evaluate(run, name, {
            **extra, "before_finetune": before[name]["test"], "before_finetune_validation": before[name]["validate"],
            "finetune": budget})
        if name != UNPRUNED_FT:
            entries.append(entry)
    plots.pruning_effect(entries, run.figure(f"pruning_{criterion}.png"), criterion)
    return entries


def _finetune_job(classes: list[str], spec: dict, state_dict: dict, config: TrainConfig, workdir: str,
                  arrays: tuple[np.ndarray, ...]) -> str:
    """Fine-tune one network in a worker process and save it to ``workdir``; returns ``workdir``."""
    from lcasc.features import opened
    from lcasc.models.cnn import LowComplexityCNN

    net = LowComplexityCNN.from_spec(CNNSpec.from_dict(spec))
    net.load_state_dict(state_dict)
    clf = CNNClassifier(classes, net=net, train_config=config, workdir=workdir)
    clf.fit(*opened(arrays))  # the worker maps the run's feature file itself: no pickled copy per worker
    clf.save(workdir)
    return workdir


def finetune_all(run: Run, nets: dict, config: TrainConfig) -> None:
    """Fine-tune ``nets`` ({name: pruned LowComplexityCNN}) on the run's training split, each in its own
    process on one thread, as many at once as there are cores; each is saved to ``models/<name>/``.

    Small networks train faster on one thread each, side by side, than one after another on every core; and
    one thread per network makes the result independent of how many run at once (a resumed run fine-tunes
    the rest exactly as an uninterrupted one would have)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from lcasc.recipes import teacher_logits
    from lcasc.workers import cpu_count, exit_with_parent

    tr, va = run.split("train"), run.split("validate")
    arrays = (tr.shareable_X(), tr.y, va.shareable_X(), va.y, teacher_logits(run))  # teacher: None in the paper recipe
    workers = min(len(nets), cpu_count())
    jobs = {name: (run.classes, net.spec.to_dict(), net.state_dict(), config, str(run.model_dir(name)), arrays)
            for name, net in nets.items()}
    with tqdm(total=len(jobs), desc="fine-tune", unit="net", disable=not run.progress) as bar:
        if workers == 1:
            for job in jobs.values():
                _finetune_job(*job)
                bar.update()
            return
        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=exit_with_parent) as pool:
            futures = {pool.submit(_finetune_job, *job): name for name, job in jobs.items()}
            for fut in as_completed(futures):
                fut.result()  # a failed job raises here; finished ones are saved already
                log.info("fine-tuned %s", futures[fut])
                bar.update()


def int8_available() -> bool:
    """Whether the INT8 export extras (``lcasc[tflite]``: TensorFlow, tflite-micro) are importable."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tflite_micro"))


def onnx_available() -> bool:
    """Whether the ONNX extras (``lcasc[onnx]``: ONNX, ONNX Runtime) are importable."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


# Why a run has no INT8 results, in the one warning `lcasc run` gives and in results.json (the report says it).
INT8_MISSING = ('TensorFlow / tflite-micro are not installed: pip install "lcasc[tflite]" (wheels for Linux x86-64 '
                "only; elsewhere that extra installs nothing)")
ONNX_MISSING = 'ONNX / ONNX Runtime are not installed: pip install "lcasc[onnx]"'
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a warning the first time ``message`` comes up in this process (a kd run runs two runs)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def calibration_features(run: Run, n: int = 500) -> np.ndarray:
    """(n, 40, 51) training features that calibrate INT8 activation ranges: a random subset, fixed by the seed."""
    tr = run.split("train")
    if n > len(tr):
        log.warning("calibration: %d segments asked for, the training split has %d; using all of them", n, len(tr))
    rng = np.random.default_rng(run.config.train.seed)
    return tr.X[np.sort(rng.choice(len(tr), min(n, len(tr)), replace=False))]


def checked_against_litert(run: Run, tflite: Path) -> dict:
    """The check that matters for an INT8 file (EXPORT-NOTES): TFLM's kernels against LiteRT's reference
    kernels, per operator, on 100 validation clips. A file off by more than one int8 step is deleted (never
    left for a later stage to trust) and the run stops."""
    from lcasc import quantize

    agreement = quantize.compare_tflm_litert(tflite, run.split("validate").X[:100])
    if agreement["kernel_max_step_diff"] > 1:
        tflite.unlink()
        raise RunError(f"{tflite}: TensorFlow Lite Micro differs from the LiteRT reference kernels by "
                       f"{agreement['kernel_max_step_diff']} quantization steps; the file is not usable")
    return agreement


def stage_quantize(run: Run, names: list[str] | None = None, calibration_segments: int = 500) -> list[dict]:
    """Full-integer INT8 TFLite (for TensorFlow Lite Micro) and ONNX (float, INT8 QDQ; when ``lcasc[onnx]`` is
    installed) of every float CNN, evaluated by running the INT8 file itself in tflite-micro."""
    from lcasc import quantize

    floats = [n for n in run.results()["networks"] if n["precision"] == "float32" and n.get("kind", "cnn") == "cnn"]
    if names:
        floats = [n for n in floats if n["name"] in names]
    calibration = calibration_features(run, calibration_segments)
    done = {n["name"]: n for n in run.results()["networks"] if n["precision"] == "int8"}
    with_onnx = onnx_available()
    if not with_onnx and floats:
        _warn_once(f"ONNX files skipped: {ONNX_MISSING}")
    entries = []
    for net_entry in floats:
        name, folder = net_entry["name"], run.model_dir(net_entry["name"])
        tflite = folder / "model_int8.tflite"
        if f"{name}_int8" in done and tflite.is_file() and (not with_onnx or (folder / "model_int8.onnx").is_file()):
            entries.append(done[f"{name}_int8"])  # finished by an earlier invocation
            continue
        clf = CNNClassifier.load(folder)
        if not tflite.is_file():
            quantize.export_tflite_int8(clf.net, calibration, tflite, max_samples=len(calibration))
        if with_onnx and not (folder / "model_int8.onnx").is_file():
            quantize.export_onnx(clf.net, folder / "model.onnx")
            quantize.quantize_onnx_int8(folder / "model.onnx", folder / "model_int8.onnx", calibration,
                                        max_samples=len(calibration))
        int8 = quantize.TFLiteMicroClassifier(tflite, run.classes)
        agreement = checked_against_litert(run, tflite)
        entry = {"name": f"{name}_int8", "kind": "cnn", "precision": "int8", "widths": net_entry["widths"],
                 **evaluate_classifier(run, int8, f"{name}_int8", figure=False),
                 "params": net_entry["params"], "macs": net_entry["macs"], "size_kb": net_entry["size_kb"],
                 "within_dcase_limits": net_entry["within_dcase_limits"],
                 "file": str(tflite.relative_to(run.dir)), "file_bytes": tflite.stat().st_size,
                 "arena_bytes": int8.arena_size - quantize.ARENA_MARGIN,
                 **{key: (folder / f).stat().st_size for key, f in (("onnx_bytes", "model.onnx"),
                                                                  ("onnx_int8_bytes", "model_int8.onnx"))
                    if (folder / f).is_file()},
                 "tflm_vs_litert_max_step_diff": agreement["kernel_max_step_diff"],
                 "calibration_segments": len(calibration),
                 "float_accuracy": net_entry["accuracy"], "float_log_loss": net_entry["log_loss"],
                 **{k: net_entry[k] for k in ("criterion", "pruned_layers", "control") if k in net_entry}}
        run.record("networks", entry)
        log.info("int8: %s accuracy %.3f (float %.3f), %d bytes, arena %d bytes", name, entry["accuracy"],
                 net_entry["accuracy"], entry["file_bytes"], entry["arena_bytes"])
        entries.append(entry)
    return entries


BASELINES = ("gmm", "rf", "mlp", "dlsi", "vggish")
CHEAP_BASELINES = ("gmm", "rf", "mlp", "dlsi")


def make_baseline(kind: str, run: Run, vggish_weights: str | None = None, vggish_epochs: int = 30):
    """The paper's comparison methods (METHOD-NOTES §7), each behind the classifier interface."""
    from lcasc.models import baselines
    from lcasc.models.vggish import VGGishClassifier

    seed, classes = run.config.train.seed, run.classes
    if kind == "gmm":
        return baselines.GMMClassifier(classes, seed=seed)
    if kind == "rf":
        return baselines.RandomForestBaseline(classes, seed=seed)
    if kind == "mlp":
        return baselines.MLPBaseline(classes, seed=seed)
    if kind == "dlsi":
        return baselines.DLSIClassifier(classes, seed=seed)
    if kind == "vggish":
        return VGGishClassifier(classes, weights_path=vggish_weights, max_epochs=vggish_epochs,
                                patience=min(run.config.train.patience, 5), seed=seed,
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


def stage_baselines(run: Run, only: list[str] | None = None, vggish_weights: str | None = None,
                    vggish_epochs: int = 30, refit: bool = False) -> list[dict]:
    """Fit every requested baseline on train (choosing hyper-parameters on validation), evaluate on test.
    Baselines already in ``results.json`` are kept unless ``refit``."""
    tr, va = run.split("train"), run.split("validate")
    from lcasc import saved_models

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


def member_classifier(run: Run, entry: dict):
    """The classifier behind a ``results.json`` network entry (float model in PyTorch or INT8 file in TFLM),
    from the registry ``lcasc predict`` uses too."""
    from lcasc.registry import resolve

    backend = "tflite" if entry.get("precision") == "int8" else "torch"
    return resolve(run.dir, entry["name"], backend, run.results()).classifier


def _cost(entry: dict) -> complexity.Complexity:
    return complexity.Complexity(entry["params"], entry["macs"], round(entry["size_kb"] * 1000))


def stage_ensemble(run: Run, members: list[str] | None = None, budget_params: int = complexity.DCASE_MAX_PARAMS,
                   budget_macs: int = complexity.DCASE_MAX_MACS) -> list[dict]:
    """Paper Table 3 (all members and each leave-one-out subset) for float and INT8 members, and the best
    subset of all networks within a budget, chosen on the validation split and reported on the test split."""
    from lcasc.ensemble import best_subset, paper_table3_subsets
    from lcasc.registry import mean_probabilities

    nets = {n["name"]: n for n in run.results()["networks"] if n.get("kind", "cnn") == "cnn"}
    te, va = run.split("test"), run.split("validate")
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def member_probs(name):
        if name not in probs:
            probs[name] = load_probabilities(run, name)
        if probs[name] is None:
            clf = member_classifier(run, nets[name])
            probs[name] = (clf.predict_proba(te.X), clf.predict_proba(va.X))
        return probs[name]

    def record(name, subset, extra):
        cost = complexity.total([_cost(nets[m]) for m in subset])
        fields = evaluate_probs(run, name, mean_probabilities([member_probs(m)[0] for m in subset]),
                                mean_probabilities([member_probs(m)[1] for m in subset]), figure=False)
        entry = {"name": name, "kind": "ensemble", "members": list(subset),
                 "precision": "/".join(sorted({nets[m]["precision"] for m in subset})), **fields,
                 "params": cost.params, "macs": cost.macs, "size_kb": cost.size_kb,
                 "within_dcase_limits": cost.within_dcase_limits, **extra}
        run.record("ensembles", entry)
        return entry

    entries = []
    unknown = [m for m in members or [] if m not in nets]
    if unknown:
        raise RunError(f"unknown network(s) {', '.join(unknown)}; known: {', '.join(nets)}")
    for precision, suffix in (("float32", ""), ("int8", "_int8")):
        group = members or [n for n, e in nets.items() if e["precision"] == precision and e.get("criterion") ==
                            "similarity"]
        group = [m for m in group if nets[m]["precision"] == precision]
        if len(group) < 2:
            continue
        short = {m: nets[m].get("pruned_layers", m).removesuffix("_int8") for m in group}
        # The default family is paper Table 3 (all / without_X); other member sets are named by their members,
        # so that they never replace the default entries.
        prefix = "ensemble" if not members else "ensemble_" + "_".join(short[m] for m in group)
        for subset in paper_table3_subsets(group):
            left_out = [short[m] for m in group if m not in subset]
            label = f"without_{left_out[0]}" if left_out else "all"
            entries.append(record(f"{prefix}_{label}{suffix}", subset,
                                  {"table": "paper_table3" if not members else "members"}))
        candidates = {m: member_probs(m)[1] for m in nets if nets[m]["precision"] == precision}
        best = best_subset(candidates, va.y, {m: _cost(nets[m]) for m in candidates}, budget_params, budget_macs)
        if best is not None:
            default_budget = (budget_params, budget_macs) == (complexity.DCASE_MAX_PARAMS, complexity.DCASE_MAX_MACS)
            name = "ensemble_best_budget" + ("" if default_budget else f"_{budget_params}p_{budget_macs}macs")
            entry = record(f"{name}{suffix}", best[0],
                           {"table": "budget", "budget": {"params": budget_params, "macs": budget_macs}})
            entries.append(entry)
    if entries:
        best = max(entries, key=lambda e: e["validation"]["accuracy"])
        ev = read_json(run.model_dir(best["name"]) / "evaluation.json")["test"]
        plots.confusion(np.array(ev["confusion"]), run.classes, run.figure("confusion_best_ensemble.png"),
                        f"best ensemble {best['name']}: test accuracy {100 * ev['accuracy']:.1f} %")
    return entries


# The stages of ``lcasc run``, in order; each skips what its run directory already holds.
RUN_STAGES = ("features", "train", "evaluate", "prune", "quantize", "ensemble", "similarity", "fuse", "baselines")


def _networks_with_kept(run: Run, names: list[str]) -> tuple[dict, dict]:
    """({name: LowComplexityCNN}, {name: {layer: original filter indices}}) of float networks of the run."""
    from lcasc.similarity import kept_from_removed

    entries = {n["name"]: n for n in run.results()["networks"]}
    unknown = [m for m in names if m not in entries or entries[m]["precision"] != "float32"
               or entries[m].get("kind", "cnn") != "cnn"]
    if unknown:
        raise RunError(f"not float CNNs of this run: {', '.join(unknown)}")
    base = CNNClassifier.load(run.model_dir(UNPRUNED)).spec
    nets = {m: CNNClassifier.load(run.model_dir(m)).net for m in names}
    return nets, {m: kept_from_removed(base, entries[m].get("removed")) for m in names}


def stage_similarity(run: Run, layers: tuple[str, ...] = ("C1", "C2", "C3"), clips: int = 10_000,
                     threshold: float = 1e-4) -> dict:
    """Paper Figure 5: aggregated MSE between corresponding feature maps (same original filter) of every pair
    of the run's similarity-pruned networks and the unpruned one, on up to ``clips`` validation clips
    (the paper: 10k validation examples). Writes ``similarity.json`` and the figures."""
    from lcasc import similarity

    names = [n["name"] for n in run.results()["networks"] if n["precision"] == "float32" and n.get("kind") == "cnn"
             and (n["name"] == UNPRUNED or n.get("criterion") == "similarity")]
    if len(names) < 2:
        raise RunError("the similarity analysis needs at least two networks: run `lcasc prune` first")
    settings = {"networks": names, "layers": list(layers), "clips": clips, "threshold": threshold}
    summary = read_json(run.dir / "similarity.json")
    if summary is not None and summary.get("settings") == settings:
        log.info("similarity: already computed for these networks and settings (similarity.json)")
        return summary
    nets, kept = _networks_with_kept(run, names)
    summary = similarity.analyse(nets, kept, run.split("validate").X, tuple(layers), threshold,
                                 run.dir / "figures", clips, seed=run.config.train.seed)
    summary["settings"] = settings
    write_json(run.dir / "similarity.json", summary)
    counts = {layer: len(res["shared"]) for layer, res in summary["layers"].items()}
    run.update_results(similarity={"file": "similarity.json", "threshold": threshold,
                                   "n_clips": summary["n_clips"], "shared_maps": counts})
    log.info("similarity: %s pairs of maps with MSE <= %g over %d clips", ", ".join(
        f"{layer} {n}" for layer, n in counts.items()), threshold, summary["n_clips"])
    return summary


FUSED = "ensemble_fused"
FUSE_THRESHOLDS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, float("inf"))


def stage_fuse(run: Run, threshold: float = 1e-4, members: list[str] | None = None) -> list[dict]:
    """An ensemble that computes each group of shared feature maps once (the saving the paper only estimates):
    members default to the six similarity-pruned networks; maps whose validation MSE is at most ``threshold``
    are computed once. Recorded in ``results.json`` ``"ensembles"`` with ``"fused": true`` next to the unfused
    ensemble, with its trade-off over thresholds (``models/ensemble_fused/fused.json``, a PNG), and exported to
    a full-integer INT8 file run in tflite-micro."""
    from lcasc import fused as fusing
    from lcasc.similarity import feature_map_mse, select_clips

    names = members or [n["name"] for n in run.results()["networks"] if n["precision"] == "float32"
                        and n.get("criterion") == "similarity"]
    if len(names) < 2:
        raise RunError("a fused ensemble needs at least two pruned networks: run `lcasc prune` first")
    from lcasc import saved_models

    done = {e["name"]: e for e in run.results()["ensembles"]}
    folder, tflite = run.model_dir(FUSED), run.model_dir(FUSED) / "model_int8.tflite"
    float_done = (FUSED in done and done[FUSED]["members"] == names and done[FUSED]["threshold"] == threshold
                  and (folder / saved_models.FUSED_PLAN_FILE).is_file())
    int8_wanted = int8_available()
    if float_done and (not int8_wanted or (f"{FUSED}_int8" in done and tflite.is_file())):
        return [done[FUSED]] + ([done[f"{FUSED}_int8"]] if int8_wanted else [])  # finished earlier

    nets, kept = _networks_with_kept(run, names)
    te, va = run.split("test"), run.split("validate")
    # Which maps are shared is decided on validation clips (as the paper measured similarity), never on test.
    clips = select_clips(va.X, 10_000, run.config.train.seed)
    mse = {layer: feature_map_mse(nets, clips, layer, kept={n: kept[n][layer] for n in names}, threshold=threshold)
           for layer in ("C1", "C2", "C3")}
    module = fusing.build_fused(nets, kept, mse, threshold)
    saved_models.save_fused_plan(folder, module)  # what `lcasc predict --ensemble ensemble_fused` rebuilds
    if float_done:
        entries = [done[FUSED]]
    else:
        res = fusing.fuse_and_evaluate(nets, kept, clips, te.X, te.y, va.X, va.y, FUSE_THRESHOLDS, threshold,
                                       run.dir / "figures", mse=mse)
        res.pop("module")
        write_json(folder / "fused.json", res)
        cx = fusing.fused_complexity(module)
        fields = evaluate_probs(run, FUSED, module.predict_proba(te.X), module.predict_proba(va.X), figure=False)
        entry = {"name": FUSED, "kind": "ensemble", "fused": True, "threshold": threshold, "members": names,
                 "precision": "float32", **fields, "params": cx.params, "macs": cx.macs, "size_kb": cx.size_kb,
                 "within_dcase_limits": cx.within_dcase_limits,
                 "unfused": {"params": res["unfused"]["params"], "macs": res["unfused"]["macs"],
                             **{k: round(v, 6) for k, v in res["unfused"]["test"].items()}},
                 "saved": res["saved"],
                 "distinct_maps": {layer: s["distinct_maps"] for layer, s in res["fused"]["sharing"].items()}}
        run.record("ensembles", entry)
        entries = [entry]
        log.info("fused ensemble (MSE <= %g): %d params, %d MACs (unfused %d, %d); accuracy %.3f (unfused %.3f)",
                 threshold, entry["params"], entry["macs"], entry["unfused"]["params"], entry["unfused"]["macs"],
                 entry["accuracy"], entry["unfused"]["accuracy"])
    if not int8_wanted:
        return entries
    from lcasc import quantize

    quantize.export_keras_int8(fusing.fused_keras_mirror(module), module.spec, calibration_features(run), tflite)
    agreement = checked_against_litert(run, tflite)
    int8 = quantize.TFLiteMicroClassifier(tflite, run.classes)
    float_entry = entries[0]
    entry = {**{k: float_entry[k] for k in ("kind", "fused", "threshold", "members", "params", "macs", "size_kb",
                                           "within_dcase_limits", "saved", "distinct_maps")},
             "name": f"{FUSED}_int8", "precision": "int8",
             **evaluate_classifier(run, int8, f"{FUSED}_int8", figure=False),
             "file": str(tflite.relative_to(run.dir)), "file_bytes": tflite.stat().st_size,
             "arena_bytes": int8.arena_size - quantize.ARENA_MARGIN,
             "tflm_vs_litert_max_step_diff": agreement["kernel_max_step_diff"],
             "float_accuracy": float_entry["accuracy"], "float_log_loss": float_entry["log_loss"]}
    run.record("ensembles", entry)
    log.info("fused ensemble INT8: accuracy %.3f (float %.3f), %d bytes, arena %d bytes", entry["accuracy"],
             entry["float_accuracy"], entry["file_bytes"], entry["arena_bytes"])
    return [*entries, entry]


def run_all(run: Run, skip: tuple[str, ...] = ()) -> dict:
    """``lcasc run``: features -> train -> evaluate (with complexity) -> prune + fine-tune -> INT8 ->
    ensembles -> feature-map similarity -> fused ensemble -> cheap baselines -> report. ``skip`` names stages
    to leave out (never the first three); stages that need pruned networks are skipped with the prune stage."""
    from lcasc import report

    stages = {"features": stage_features, "train": stage_train, "evaluate": stage_evaluate, "prune": stage_prune,
              "quantize": stage_quantize, "ensemble": stage_ensemble, "similarity": stage_similarity,
              "fuse": stage_fuse, "baselines": stage_baselines}
    timings = {}  # seconds this invocation spent per stage (a resumed run skips finished work)
    for stage in RUN_STAGES:
        if stage in skip or (stage in ("similarity", "fuse") and "prune" in skip):
            continue
        if stage == "quantize" and not int8_available():  # and so the INT8 parts of later stages (fuse)
            _warn_once(f"INT8 skipped: {INT8_MISSING}")
            run.update_results(int8_skipped=INT8_MISSING)
            continue
        if stage == "quantize" and "int8_skipped" in run.results():  # an earlier invocation skipped it
            write_json(run.results_path, {k: v for k, v in run.results().items() if k != "int8_skipped"})
        t0 = time.perf_counter()
        stages[stage](run)
        timings[stage] = round(time.perf_counter() - t0, 2)
        log.info("stage %s done in %.1f s", stage, timings[stage])
        run.update_results(timings=timings)
    report.write(run)
    return run.results()
