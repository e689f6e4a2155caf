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

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcasc.classifier import EnsembleClassifier
from lcasc.names import BACKENDS
from lcasc.workers import cpu_count


class PredictError(ValueError):
    """A predictor cannot be built as asked (unknown name, missing file or package); one line for the user."""


@dataclass
class Runnable:
    """What :func:`resolve` built: ``classifier.predict_proba((N, n_mels, n_frames)) -> (N, n_classes)``,
    the ``backend`` that runs it (``"onnx+tflite"`` style when members differ) and the member names (the
    entry itself for a single network or baseline)."""

    name: str
    classifier: object
    backend: str
    members: list[str]


def resolve(run_dir: str | Path, name: str, backend: str = "auto", results: dict | None = None) -> Runnable:
    """The classifier of the ``results.json`` entry ``name`` (network, INT8 network, baseline or ensemble).

    ``results``: the run's parsed ``results.json`` (read when None). Raises
    :class:`lcasc.predict.PredictError` with one line for the user when the name is unknown or its files
    are missing or unusable.
    """
    run_dir = Path(run_dir)
    results = read_results(run_dir) if results is None else results
    if backend not in BACKENDS:
        raise PredictError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    classes = list(results.get("classes") or [])
    nets = network_entries(results)
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
    built = [resolve(run_dir, m, backend, results) for m in entry["members"]]
    members = list(entry["members"])
    return Runnable(name, EnsembleClassifier([b.classifier for b in built], members),
                    "+".join(dict.fromkeys(b.backend for b in built)), members)


def network_entries(results: dict) -> dict[str, dict]:
    """results.json's networks by name; a network ``lcasc import`` brought in counts (as a float CNN) before
    its evaluation records it."""
    nets = {e["name"]: e for e in results["networks"]}
    imported = (results.get("imported") or {}).get("network")
    if imported and imported not in nets:
        nets[imported] = {"name": imported, "kind": "cnn", "precision": "float32", "imported": True}
    return nets


def _baseline(run_dir: Path, entry: dict, classes: list[str], backend: str) -> Runnable:
    from lcasc import saved_models

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


# -- the runtimes behind the backends ----------------------------------------------------------------------
class _TorchCNN:
    """A float :class:`lcasc.models.cnn.LowComplexityCNN` prepared for inference only: BatchNorm folded into
    its convolution (one op fewer per layer), channels-last memory (oneDNN's fast layout for 3x3
    convolutions), ``torch.inference_mode``, batches of ``INFERENCE_BATCH``. Same function as the trained
    network (float rounding apart, < 1e-6 in probability)."""

    def __init__(self, folder: Path, batch_size: int | None = None):
        import copy

        import torch
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        from lcasc.models import graph
        from lcasc.models.cnn import CNNClassifier
        from lcasc.train import INFERENCE_BATCH

        clf = CNNClassifier.load(folder)
        net = copy.deepcopy(clf.net).eval()
        for block in graph.conv_blocks():
            conv, bn = block.conv.attr, block.bn.attr
            setattr(net, conv, fuse_conv_bn_eval(getattr(net, conv), getattr(net, bn)))
            setattr(net, bn, torch.nn.Identity())
        self.net = net.to(memory_format=torch.channels_last)
        self.classes, self.batch_size, self._torch = clf.classes, batch_size or INFERENCE_BATCH, torch

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) float32 -> (N, n_classes) float32."""
        torch = self._torch
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty((len(X), len(self.classes)), np.float32)
        with torch.inference_mode():
            for s in range(0, len(X), self.batch_size):
                x = torch.from_numpy(X[s:s + self.batch_size]).unsqueeze(1)
                out[s:s + len(x)] = torch.softmax(self.net(x.contiguous(memory_format=torch.channels_last)), 1)
        return out


def _onnx_runner(path: Path, classes: list[str]):
    """:class:`lcasc.runtimes.OnnxClassifier` on ``path``, with a session whose threads sleep instead of
    spinning when idle. Why: ONNX Runtime's idle threads spin-wait by default and so take CPU from the
    decoding and log-mel threads that run beside the network in :meth:`Predictor.predict_files` (measured
    on 2 cores: end to end +15 % clips/s; the network alone is as fast either way)."""
    import onnxruntime as ort

    from lcasc.runtimes import OnnxClassifier

    clf = OnnxClassifier(path, classes)  # checks the file against the classes
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = cpu_count()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if hasattr(clf, "_session"):  # else the runner keeps its own session (ONNX Runtime's defaults)
        clf._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return clf


def _needs(module: str, backend: str) -> None:
    if importlib.util.find_spec(module) is None:
        extra = "onnx" if module.startswith("onnx") else "tflite"
        raise PredictError(f"the {backend} backend needs the Python package {module!r}: "
                           f'pip install "lcasc[{extra}]"' + (" (Linux x86-64 only)" if extra == "tflite" else ""))


def _exported(path: Path, run_dir: Path) -> Path:
    if not path.is_file():
        raise PredictError(f"{path}: no such file; export it first with `lcasc quantize --run {run_dir}`")
    return path


def _onnx_usable(folder: Path) -> bool:
    """Whether ``auto`` may use ``folder/model.onnx``: present, not older than ``model.pt`` (a network
    retrained after its export would otherwise answer with stale weights), ONNX Runtime installed."""
    onnx, pt = folder / "model.onnx", folder / "model.pt"
    return (onnx.is_file() and (not pt.is_file() or onnx.stat().st_mtime_ns >= pt.stat().st_mtime_ns)
            and importlib.util.find_spec("onnxruntime") is not None)


def _network_classifier(run_dir: Path, entry: dict, classes: list[str], backend: str):
    """(classifier, backend used) for one network entry of results.json."""
    name = entry["name"]
    if entry.get("kind", "cnn") != "cnn":
        raise PredictError(f"{run_dir}: {name!r} is a {entry.get('kind')} (comparison method, not saved for "
                           f"prediction); choose a CNN network or an ensemble")
    int8 = entry.get("precision") == "int8"
    folder = (run_dir / entry["file"]).parent if int8 and entry.get("file") else run_dir / "models" / name
    if backend == "auto":
        backend = "tflite" if int8 else ("onnx" if _onnx_usable(folder) else "torch")
    if backend == "torch":
        if int8:
            raise PredictError(f"{name!r} is an INT8 network: run it with --backend tflite (TFLite Micro) or onnx "
                               f"(QDQ), or use its float network {name.removesuffix('_int8')!r} with torch")
        if not (folder / "model.pt").is_file():
            raise PredictError(f"{folder / 'model.pt'}: no trained model here (run `lcasc run` or `lcasc train`)")
        return _TorchCNN(folder), backend
    if backend == "onnx":
        _needs("onnxruntime", backend)
        return _onnx_runner(_exported(folder / ("model_int8.onnx" if int8 else "model.onnx"), run_dir),
                            classes), backend
    if backend == "tflite":
        _needs("tflite_micro", backend)
        return tflm_classifier(_exported(folder / "model_int8.tflite", run_dir), classes,
                               entry.get("arena_bytes")), backend
    raise PredictError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def tflm_classifier(path: Path, classes: list[str], arena_bytes: int | None = None):
    """:class:`lcasc.runtimes.TFLiteMicroClassifier` on ``path``. ``arena_bytes``: the arena the run measured
    for this file (results.json), used when it still suffices: measuring it again costs ~0.3 s per file, a
    lot for an ensemble of INT8 members; another TFLM version that needs more gets it measured."""
    from lcasc.runtimes import ARENA_MARGIN, TFLiteMicroClassifier

    if arena_bytes:
        try:
            return TFLiteMicroClassifier(path, classes, arena_size=int(arena_bytes) + ARENA_MARGIN)
        except RuntimeError:  # TFLM could not allocate the tensors in it
            pass
    return TFLiteMicroClassifier(path, classes)


def read_results(run_dir: Path) -> dict:
    """The parsed ``results.json`` of ``run_dir``; :class:`PredictError` when it is missing or not lcasc's."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise PredictError(f"{run_dir}: no results.json; is this a finished run directory (lcasc run --out DIR)?")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictError(f"{path}: cannot read it ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("networks"), list):
        raise PredictError(f"{path}: not a results file of lcasc (no list of networks)")
    return results
