"""Full-integer INT8 files of every float network (TFLite for TensorFlow Lite Micro, ONNX QDQ), each
evaluated by running the file itself: in bulk by its C library compiled for this machine once that equals
TensorFlow Lite Micro on a sample of real clips (:mod:`lcasc.mcu.host_runner`), else in TFLite Micro.
Needs the ``tflite`` extra."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from lcasc import runtimes
from lcasc.export import onnx as onnx_export
from lcasc.export import tflite as tflite_export
from lcasc.mcu import host_runner
from lcasc.models.cnn import CNNClassifier
from lcasc.run import Run, RunError
from lcasc.stages.evaluate import evaluate_classifier

log = logging.getLogger("lcasc")


def int8_available() -> bool:
    """Whether the INT8 export extras (``lcasc[tflite]``: TensorFlow, tflite-micro) are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tflite_micro"))


def onnx_available() -> bool:
    """Whether the ONNX extras (``lcasc[onnx]``: ONNX, ONNX Runtime) are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


# Why a run has no INT8 results, in the one warning `lcasc run` gives and in results.json (the report says it).
INT8_MISSING = ('TensorFlow / tflite-micro are not installed: pip install "lcasc[tflite]" (wheels for Linux x86-64 '
                "only; elsewhere that extra installs nothing)")
ONNX_MISSING = 'ONNX / ONNX Runtime are not installed: pip install "lcasc[onnx]"'
_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Log a warning the first time ``message`` comes up in this process (a kd run runs two runs)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def calibration_features(run: Run, n: int = 500) -> np.ndarray:
    """(n, 40, 51) training features that calibrate INT8 activation ranges: a random subset, fixed by the seed."""
    tr = run.split("train")
    if n > len(tr):
        log.warning("calibration: %d segments asked for, the training split has %d; using all of them", n, len(tr))
    rng = np.random.default_rng(run.seed)
    return tr.X[np.sort(rng.choice(len(tr), min(n, len(tr)), replace=False))]


def checked_against_litert(run: Run, tflite: Path) -> dict:
    """The check that matters for an INT8 file (EXPORT-NOTES): TFLM's kernels against LiteRT's reference
    kernels, per operator, on 100 validation clips. A file off by more than one int8 step is deleted (never
    left for a later stage to trust) and the run stops."""
    agreement = runtimes.compare_tflm_litert(tflite, run.split("validate").X[:100])
    if agreement["kernel_max_step_diff"] > 1:
        tflite.unlink()
        raise RunError(f"{tflite}: TensorFlow Lite Micro differs from the LiteRT reference kernels by "
                       f"{agreement['kernel_max_step_diff']} quantization steps; the file is not usable")
    return agreement


def bulk_sample(run: Run) -> np.ndarray:
    """The real clips on which the fast INT8 runner must equal TFLite Micro before it evaluates a file:
    evenly spaced over the test split and the validation split (half each)."""
    te, va = run.split("test").X, run.split("validate").X
    half = host_runner.SAMPLE_CLIPS // 2
    return np.concatenate([te[host_runner.sample_rows(len(te), half)], va[host_runner.sample_rows(len(va), half)]])


def run(run: Run, names: list[str] | None = None, calibration_segments: int = 500) -> list[dict]:
    """Full-integer INT8 TFLite (for TensorFlow Lite Micro) and ONNX (float, INT8 QDQ; when ``lcasc[onnx]`` is
    installed) of every float CNN, evaluated by running the INT8 file itself (TFLite Micro's bits)."""
    floats = [n for n in run.results()["networks"] if n["precision"] == "float32" and n.get("kind", "cnn") == "cnn"]
    if names:
        floats = [n for n in floats if n["name"] in names]
    calibration = calibration_features(run, calibration_segments)
    done = {n["name"]: n for n in run.results()["networks"] if n["precision"] == "int8"}
    with_onnx = onnx_available()
    if not with_onnx and floats:
        warn_once(f"ONNX files skipped: {ONNX_MISSING}")
    entries = []
    for net_entry in floats:
        name, folder = net_entry["name"], run.model_dir(net_entry["name"])
        tflite = folder / "model_int8.tflite"
        if f"{name}_int8" in done and tflite.is_file() and (not with_onnx or (folder / "model_int8.onnx").is_file()):
            entries.append(done[f"{name}_int8"])  # finished by an earlier invocation
            continue
        clf = CNNClassifier.load(folder)
        if not tflite.is_file():
            tflite_export.export_tflite_int8(clf.net, calibration, tflite, max_samples=len(calibration))
        if with_onnx and not (folder / "model_int8.onnx").is_file():
            onnx_export.export_onnx(clf.net, folder / "model.onnx")
            onnx_export.quantize_onnx_int8(folder / "model.onnx", folder / "model_int8.onnx", calibration,
                                        max_samples=len(calibration))
        tflm = runtimes.TFLiteMicroClassifier(tflite, run.classes)
        agreement = checked_against_litert(run, tflite)
        bulk, bulk_check = host_runner.bulk_classifier(tflite, run.classes, bulk_sample(run), tflm)
        try:
            evaluation = evaluate_classifier(run, bulk, f"{name}_int8", figure=False)
        finally:
            if bulk is not tflm:
                bulk.close()
        entry = {"name": f"{name}_int8", "kind": "cnn", "precision": "int8", "widths": net_entry["widths"],
                 **evaluation,
                 "params": net_entry["params"], "macs": net_entry["macs"], "size_kb": net_entry["size_kb"],
                 "within_dcase_limits": net_entry["within_dcase_limits"],
                 "file": str(tflite.relative_to(run.dir)), "file_bytes": tflite.stat().st_size,
                 "arena_bytes": tflm.arena_size - runtimes.ARENA_MARGIN, **bulk_check,
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
