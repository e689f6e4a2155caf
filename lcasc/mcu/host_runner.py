"""INT8 files evaluated in bulk by the exported C library, compiled for this machine.

Why: TensorFlow Lite Micro's Python interpreter runs one clip per ``invoke`` (≈ 9 ms for the unpruned
network here), so evaluating seven networks on TAU22's 71,566 validation and test clips took about an hour.
The C library of ``lcasc export --format c`` computes what TFLM's reference kernels compute, bit for bit
(the export and its tests prove it on every test clip), and compiled with ``-O3 -march=native`` it takes
≈ 0.7 ms per clip and core for the unpruned network (``benchmarks/int8_eval.py``), in as many processes as
there are CPUs. LiteRT is not an option: its batched
reference kernels differ from TFLM by one int8 step on some clips (EXPORT-NOTES).

:func:`bulk_classifier` trusts it only after a sample of real clips gave the same int8 logits in TFLM
itself; on any difference, a missing compiler or a file the C library does not implement (the fused
ensemble's), it returns TFLM's classifier and says why.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lcasc.int8 import dequantize_int8, feature_batch, probabilities_from_logits, quantize_int8
from lcasc.mcu import toolchain
from lcasc.mcu.export_c import Member, write_bundle
from lcasc.mcu.tflite_graph import UnsupportedModel, read_network
from lcasc.runtimes import TFLiteMicroClassifier, _check_classes, _InferenceOnly
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")
HOST_CFLAGS = "-O3 -march=native"  # integer kernels: the flags change the speed, never the bits
SAMPLE_CLIPS = 256  # clips run in both TFLM and the C library before the C library is trusted


class CompiledInt8Classifier(_InferenceOnly):
    """An INT8 .tflite file of the paper's CNN family, run by its C library built with the host compiler.

    ``predict_proba``: (N, n_mels, n_frames) float32 log-mel -> (N, n_classes) float32, exactly as
    :class:`lcasc.runtimes.TFLiteMicroClassifier` computes it (same input quantization, same int8 logits,
    same float softmax). The build lives in a temporary folder, removed by :meth:`close` (or ``with``).
    Raises :class:`~lcasc.mcu.tflite_graph.UnsupportedModel` for a file the C library does not implement and
    :class:`~lcasc.mcu.toolchain.BuildError` when there is no compiler or the build fails.
    """

    def __init__(self, path: str | os.PathLike, classes: list[str], workers: int | None = None):
        self.path = Path(path)
        self.network = read_network(self.path)
        self.classes = _check_classes(classes, self.network.n_classes, self.path)
        self.workers = max(1, int(workers or cpu_count()))
        self._tmp = Path(tempfile.mkdtemp(prefix="lcasc-int8-"))
        try:
            bundle = write_bundle(self._tmp / "bundle", [Member(self.path.parent.name, self.network)],
                                  self.classes, str(self.path))
            self._demo = toolchain.build_host(bundle, cflags=HOST_CFLAGS)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def quantize_input(self, X: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) float log-mel -> int8 with the file's input scale and zero point."""
        return quantize_int8(feature_batch(X), self.network.input_scale, self.network.input_zero_point)

    def invoke_int8(self, Xq: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) int8 inputs -> (N, n_classes) int8 logits, in ``workers`` processes at once."""
        Xq = np.ascontiguousarray(Xq, np.int8)
        n_classes = len(self.classes)
        if len(Xq) == 0:
            return np.empty((0, n_classes), np.int8)
        parts = np.array_split(np.arange(len(Xq)), min(self.workers, len(Xq)))
        with tempfile.TemporaryDirectory(dir=self._tmp) as tmp:
            procs = []
            for k, idx in enumerate(parts):
                src, dst = Path(tmp) / f"in{k}.i8", Path(tmp) / f"out{k}.i8"
                Xq[idx[0]:idx[-1] + 1].tofile(src)
                procs.append((dst, subprocess.Popen([str(self._demo), "--logits", "0", str(src), str(dst)],
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            outs = []
            for (dst, proc), idx in zip(procs, parts):
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise toolchain.BuildError(f"{self._demo} --logits failed on {self.path}: "
                                               f"{err.decode(errors='replace').strip()}")
                outs.append(np.fromfile(dst, np.int8).reshape(len(idx), n_classes))
        return np.concatenate(outs)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        q = self.invoke_int8(self.quantize_input(X))
        logits = dequantize_int8(q, self.network.output_scale, self.network.output_zero_point)
        return probabilities_from_logits(logits, len(self.classes))


def sample_rows(n: int, k: int = SAMPLE_CLIPS) -> np.ndarray:
    """``k`` evenly spaced row indices of ``n`` rows (all of them when ``n <= k``)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else np.arange(0)


def bulk_classifier(path: str | os.PathLike, classes: list[str], sample: np.ndarray,
                    tflm: TFLiteMicroClassifier | None = None) -> tuple[object, dict]:
    """The classifier to evaluate INT8 file ``path`` with on many clips, and what was checked.

    The compiled C library when it builds and its int8 logits equal TFLM's on every clip of ``sample``
    ((N, n_mels, n_frames) real log-mel); else ``tflm`` (TFLM itself). The dict (for results.json):
    ``bulk_runtime`` (``"c-host"`` or ``"tflite-micro"``), ``tflm_sample_clips``,
    ``tflm_sample_mismatches`` and, for TFLM, ``bulk_fallback_reason``.
    """
    tflm = tflm or TFLiteMicroClassifier(path, classes)
    try:
        fast = CompiledInt8Classifier(path, classes)
    except (UnsupportedModel, toolchain.BuildError) as e:
        reason = str(e).splitlines()[0]
        log.info("int8: %s evaluated in TFLite Micro (%s)", path, reason)
        return tflm, {"bulk_runtime": "tflite-micro", "bulk_fallback_reason": reason}
    Xq = tflm.quantize_input(sample)
    mismatches = int((fast.invoke_int8(Xq) != tflm.invoke_int8(Xq)).any(axis=1).sum())
    check = {"tflm_sample_clips": int(len(sample)), "tflm_sample_mismatches": mismatches}
    if mismatches:
        fast.close()
        reason = f"the C library differs from TFLite Micro on {mismatches} of {len(sample)} sample clips"
        log.warning("int8: %s: %s; evaluating in TFLite Micro instead", path, reason)
        return tflm, {"bulk_runtime": "tflite-micro", **check, "bulk_fallback_reason": reason}
    return fast, {"bulk_runtime": "c-host", **check}
