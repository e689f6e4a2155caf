"""ONNX files of a network: float straight from PyTorch (input ``(N, n_mels, n_frames)`` log-mel named
``logmel``, output ``(N, n_classes)`` logits named ``logits``), and ONNX Runtime's static INT8 (QDQ,
per-channel weights) made from it. QDQ keeps float input and output and is not a TFLM format: it is for size
comparisons and the ``onnx`` backend, not for the microcontroller. ONNX is imported inside the functions."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcasc.export.tflite import MAX_CALIBRATION_SAMPLES
from lcasc.int8 import feature_batch
from lcasc.io import atomic_path

if TYPE_CHECKING:
    from lcasc.models.cnn import LowComplexityCNN


@contextlib.contextmanager
def without_log_message(logger: logging.Logger, fragment: str):
    """Drop records of ``logger`` whose message contains ``fragment`` for the duration of the block."""

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def export_onnx(model: LowComplexityCNN, path: str | os.PathLike, opset: int = 17) -> dict:
    """Write a float32 ONNX file of ``model(x)``; returns ``{"file_bytes"}``.

    Input ``logmel`` (N, n_mels, n_frames) float32 (the classifier protocol's layout, N dynamic), output
    ``logits`` (N, n_classes). Uses PyTorch's TorchScript exporter (``dynamo=False``: no onnxscript
    needed, and BatchNorm comes out folded into the convolutions); the model is copied, not modified.
    Written atomically.
    """
    import torch

    wrapped = copy.deepcopy(model).cpu().float().eval()
    spec = model.spec
    dummy = torch.zeros(2, spec.n_mels, spec.n_frames)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(wrapped, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["logmel"], output_names=["logits"],
                          dynamic_axes={"logmel": {0: "batch"}, "logits": {0: "batch"}})
        size = Path(tmp).stat().st_size
    return {"file_bytes": size}


def quantize_onnx_int8(float_path: str | os.PathLike, out_path: str | os.PathLike, calibration: np.ndarray,
                       max_samples: int = MAX_CALIBRATION_SAMPLES, seed: int = 0) -> dict:
    """ONNX Runtime static INT8 of a file from :func:`export_onnx`; returns ``{"file_bytes"}``.

    QDQ format, int8 weights per output channel, int8 activations calibrated with min/max on a fixed
    random subset (at most ``max_samples``) of ``calibration`` (N, n_mels, n_frames) real training
    features. Input and output stay float32. Written atomically.
    """
    from onnxruntime import quantization as ortq

    X = feature_batch(calibration)
    if len(X) == 0:
        raise ValueError("calibration needs at least one clip")
    if len(X) > max_samples:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))]

    class Reader(ortq.CalibrationDataReader):
        def __init__(self, clips: np.ndarray, batch: int = 32):
            self.batches = iter([{"logmel": clips[i:i + batch]} for i in range(0, len(clips), batch)])

        def get_next(self):
            return next(self.batches, None)

    with atomic_path(out_path) as tmp, without_log_message(logging.getLogger(), "pre-processing before quantiz"):
        ortq.quantize_static(str(float_path), str(tmp), Reader(X), quant_format=ortq.QuantFormat.QDQ,
                             per_channel=True, activation_type=ortq.QuantType.QInt8,
                             weight_type=ortq.QuantType.QInt8, calibrate_method=ortq.CalibrationMethod.MinMax)
        size = Path(tmp).stat().st_size
    return {"file_bytes": size}
