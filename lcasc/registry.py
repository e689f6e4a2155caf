"""Every name in a run's ``results.json`` -> the classifier its evaluation ran.

One function (:func:`resolve`) that ``lcasc predict``, :func:`lcasc.load` and the ensemble stage share, so a
name means one computation everywhere and gives the probabilities the run's evaluation of it used
(``models/<name>/probabilities.npz``): float to 1e-5, INT8 exactly when run in TensorFlow Lite Micro.

======================  ===================================================================================
entry                   what runs (``backend="auto"``)
======================  ===================================================================================
float CNN network       ``models/<name>/model.onnx`` in ONNX Runtime (same as ``model.pt`` to 1e-6), else
                        ``model.pt`` in PyTorch
INT8 network            ``models/<network>/model_int8.tflite`` in TFLite Micro
baseline                the fitted estimator ``models/<name>/baseline.joblib`` (VGGish: ``model.pt``),
                        see :mod:`lcasc.saved_models`
ensemble                the equal-weight mean (:func:`mean_probabilities`) of its members, each resolved
                        here: the ``_int8`` ensembles run their INT8 members in TFLite Micro
``ensemble_fused``      the fused module (shared maps computed once), rebuilt from its saved sharing plan
``ensemble_fused_int8`` its own INT8 ``.tflite`` file in TFLite Micro (not the members)
======================  ===================================================================================

``backend`` other than ``auto`` asks for another runtime where one exists (``torch``, ``onnx``, ``tflite``
per CNN member, see :mod:`lcasc.predict`); where none does (a baseline in ONNX, the fused module in TFLM)
the error says what to run instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Runnable:
    """What :func:`resolve` built: ``classifier.predict_proba((N, n_mels, n_frames)) -> (N, n_classes)``,
    the ``backend`` that runs it (``"onnx+tflite"`` style when members differ) and the member names (the
    entry itself for a single network or baseline)."""

    name: str
    classifier: object
    backend: str
    members: list[str]


def mean_probabilities(member_probs: list[np.ndarray]) -> np.ndarray:
    """Equal-weight mean (paper §3) of (N, C) member probabilities, summed in float64, as float32. The
    ensemble stage and ``lcasc predict`` both average with this, so that an ensemble of INT8 members gives
    bit-identical probabilities in both."""
    return np.mean([np.asarray(p, np.float64) for p in member_probs], axis=0).astype(np.float32)


def resolve(run_dir: str | Path, name: str, backend: str = "auto", results: dict | None = None) -> Runnable:
    """The classifier of the ``results.json`` entry ``name`` (network, INT8 network, baseline or ensemble).

    ``results``: the run's parsed ``results.json`` (read when None). Raises
    :class:`lcasc.predict.PredictError` with one line for the user when the name is unknown or its files
    are missing or unusable.
    """
    from lcasc.predict import BACKENDS, PredictError, _network_classifier, _read_results

    run_dir = Path(run_dir)
    results = _read_results(run_dir) if results is None else results
    if backend not in BACKENDS:
        raise PredictError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    classes = list(results.get("classes") or [])
    nets = {e["name"]: e for e in results["networks"]}
    ensembles = {e["name"]: e for e in results.get("ensembles", [])}
    if name in nets:
        entry = nets[name]
        if entry.get("kind", "cnn") == "baseline":
            return _baseline(run_dir, entry, classes, backend)
        clf, used = _network_classifier(run_dir, entry, classes, backend)
        return Runnable(name, clf, used, [name])
    if name not in ensembles:
        raise PredictError(f"{run_dir}: no network or ensemble named {name!r}")
    entry = ensembles[name]
    if entry.get("fused"):
        return _fused(run_dir, entry, classes, backend)
    missing = [m for m in entry["members"] if m not in nets]
    if missing:
        raise PredictError(f"{run_dir}: ensemble {name!r} lists unknown network(s) {', '.join(missing)}")
    from lcasc.predict import _MeanOfMembers

    built = [resolve(run_dir, m, backend, results) for m in entry["members"]]
    members = list(entry["members"])
    return Runnable(name, _MeanOfMembers([b.classifier for b in built], members),
                    "+".join(dict.fromkeys(b.backend for b in built)), members)


def _baseline(run_dir: Path, entry: dict, classes: list[str], backend: str) -> Runnable:
    from lcasc import saved_models
    from lcasc.predict import PredictError

    name = entry["name"]
    if backend not in ("auto", "torch"):
        raise PredictError(f"{name!r} is a comparison method (baseline) without ONNX or INT8 files: run it with "
                           f"--backend auto")
    try:
        clf = saved_models.load_baseline(run_dir / "models" / name, name, classes)
    except saved_models.SavedModelError as e:
        raise PredictError(str(e)) from None
    return Runnable(name, clf, "torch" if name == "vggish" else "sklearn", [name])


def _fused(run_dir: Path, entry: dict, classes: list[str], backend: str) -> Runnable:
    from lcasc import saved_models
    from lcasc.predict import PredictError, _needs, tflm_classifier

    name, members = entry["name"], list(entry["members"])
    if entry.get("precision") == "int8":
        if backend not in ("auto", "tflite"):
            raise PredictError(f"{name!r} is the fused ensemble's INT8 file: run it with --backend tflite (or "
                               f"auto); its float module is {name.removesuffix('_int8')!r}")
        _needs("tflite_micro", "tflite")
        path = run_dir / entry["file"]
        if not path.is_file():
            raise PredictError(f"{path}: no such file; make it with `lcasc fuse --run {run_dir}`")
        return Runnable(name, tflm_classifier(path, classes, entry.get("arena_bytes")), "tflite", members)
    if backend not in ("auto", "torch"):
        raise PredictError(f"{name!r} (the fused module) runs in PyTorch: use --backend torch or auto; its INT8 "
                           f"file is the entry {name + '_int8'!r}")
    try:
        module = saved_models.load_fused(run_dir / "models" / name, run_dir / "models")
    except (saved_models.SavedModelError, FileNotFoundError) as e:
        raise PredictError(str(e)) from None
    module.classes = classes
    return Runnable(name, module, "torch", members)
