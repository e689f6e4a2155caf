"""INT8 export for microcontrollers, and runners that put exported files behind the classifier interface.

TFLite (METHOD-NOTES §6; measured route in EXPORT-NOTES): a Keras mirror of :class:`LowComplexityCNN`
(NHWC, same weights) goes through ``tf.lite.TFLiteConverter`` with a representative dataset of real
training features, giving a full-integer file: int8 weights (per output channel), int8 activations, int8
input and output. That is what TensorFlow Lite Micro (TFLM) on a Cortex-M runs. Every file is checked
before it is published: fixed-range ops carry the quantization TFLM assumes (TANH output scale 1/128 zero
point 0; SOFTMAX output 1/256, -128) and TFLM allocates and runs it.

File layout of both TFLite files: input ``(1, n_mels, n_frames, 1)`` (batch axis dynamic for the LiteRT
interpreter; TFLM runs one clip at a time), output ``(1, n_members * n_classes)`` logits: the file ends at
the last dense layer (one network: ``n_members`` = 1; a fused ensemble: its members' logits side by side).
The INT8 file's input is the log-mel quantized with the input tensor's scale and zero point. Probabilities
are computed in float from the dequantized int8 logits (:func:`probabilities_from_logits`: a softmax per
member, averaged over members), here, in ``lcasc predict`` and in the C bundle alike. An int8 softmax in the
file would round every probability to a multiple of 1/256, so a small true-class probability became 0 and
inflated the log-loss; a float softmax over 10 values costs nothing on a microcontroller.

ONNX: a float file straight from PyTorch (input ``(N, n_mels, n_frames)`` log-mel named ``logmel``,
output ``(N, n_classes)`` logits named ``logits``; probabilities as for TFLite), and ONNX Runtime's static
INT8 (QDQ, per-channel weights) made from it. QDQ keeps float input and output and is not a TFLM format: it is for
size comparisons, not for the microcontroller.

TensorFlow, ONNX and TFLM are imported inside the functions that need them, so ``import lcasc.quantize``
costs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcasc.io import atomic_path

if TYPE_CHECKING:
    from lcasc.models.cnn import LowComplexityCNN

# TFLite kernels for these ops only accept one output quantization (TFLM computes them wrongly, silently,
# otherwise): op name -> (scale, zero point) of the int8 output.
FIXED_INT8_OUTPUT_QPARAMS: dict[str, tuple[float, int]] = {
    "TANH": (1 / 128, 0),
    "LOGISTIC": (1 / 256, -128),
    "SOFTMAX": (1 / 256, -128),
}
MAX_CALIBRATION_SAMPLES = 500
ARENA_SEARCH_STEP = 16  # bytes: resolution of the arena search (TFLM aligns its buffers to 16 bytes)
ARENA_MARGIN = 256  # bytes added to the measured minimum when a runner sizes its own arena
TFLM_ARENA_LIMIT = 64 << 20


# --------------------------------------------------------------------------------------------------------
# helpers


def _tensorflow():
    """Import TensorFlow quietly (its C++ logging off unless the user asked for it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    first = "tensorflow" not in sys.modules
    with _native_output_to(os.devnull) if first else contextlib.nullcontext():  # oneDNN / absl banners
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def tf_keras():
    """TensorFlow's Keras, for the mirrors that the TFLite converter takes; refuses another Keras backend."""
    keras = _tensorflow().keras
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the Keras mirror needs the TensorFlow backend, KERAS_BACKEND is {keras.backend.backend()}")
    return keras


@contextlib.contextmanager
def _native_output_to(target: str | os.PathLike = os.devnull):
    """Send what native code writes to file descriptors 1 and 2 (TFLM's and the converter's messages) to
    ``target`` for the duration of the block; C's stdio buffers are flushed on both sides. Process-wide:
    other threads' output in the meantime goes there too."""
    libc = ctypes.CDLL(None) if os.name == "posix" else None

    def flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if libc is not None:
            libc.fflush(None)

    flush()
    saved = os.dup(1), os.dup(2)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
        yield
    finally:
        flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (out, *saved):
            os.close(fd)


@contextlib.contextmanager
def _without_log_message(logger: logging.Logger, fragment: str):
    """Drop records of ``logger`` whose message contains ``fragment`` for the duration of the block."""

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _feature_batch(X: np.ndarray) -> np.ndarray:
    """(N, n_mels, n_frames) or (N, 1, n_mels, n_frames) features -> (N, n_mels, n_frames) float32."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 4 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 3:
        raise ValueError(f"features must be (N, n_mels, n_frames), got shape {X.shape}")
    return X


def _calibration_subset(calibration: np.ndarray, spec, max_samples: int, seed: int = 0) -> np.ndarray:
    """At most ``max_samples`` clips of ``calibration`` (a fixed random subset when there are more)."""
    X = _feature_batch(calibration)
    if X.shape[1:] != (spec.n_mels, spec.n_frames):
        raise ValueError(f"calibration clips are {X.shape[1:]}, the network expects {(spec.n_mels, spec.n_frames)}")
    if len(X) == 0:
        raise ValueError("calibration needs at least one clip")
    if not np.isfinite(X).all():
        raise ValueError("calibration features contain NaN or infinity")
    if len(X) > max_samples:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))]
    return X


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Rounding as TFLite's quantize kernel does it (``std::round``: halves away from zero)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_int8(X: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float values -> int8 ``round(x / scale) + zero_point``, saturated to [-128, 127]."""
    return np.clip(_round_half_away(np.asarray(X, np.float64) / scale) + zero_point, -128, 127).astype(np.int8)


def dequantize_int8(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32 ``(q - zero_point) * scale``."""
    return ((np.asarray(q, np.float32) - zero_point) * scale).astype(np.float32)


def probabilities_from_logits(logits: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_members * n_classes) logits -> (N, n_classes) float32 probabilities: the softmax of each
    member's logits (computed in float64), averaged over members (the paper's equal-weight ensemble)."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[1] % n_classes:
        raise ValueError(f"logits of shape {z.shape} do not hold whole members of {n_classes} classes")
    z = z.reshape(len(z), -1, n_classes)
    z = np.exp(z - z.max(axis=2, keepdims=True))
    return (z / z.sum(axis=2, keepdims=True)).mean(axis=1).astype(np.float32)


def _check_ends_at_logits(path: str | os.PathLike) -> None:
    """Refuse a .tflite file that ends in SOFTMAX (written by an older lcasc): its outputs are not logits."""
    ops = tflite_ops(path)
    if ops and ops[-1]["op"] == "SOFTMAX":
        raise ValueError(f"{path}: ends in an int8 SOFTMAX (a file written by an older lcasc); export it again "
                         "with `lcasc quantize`")


def _check_classes(classes: list[str], n_outputs: int, path) -> list[str]:
    """``classes``, checked against a file with ``n_outputs`` outputs (whole members' logits)."""
    classes = list(classes)
    if not classes or n_outputs % len(classes):
        raise ValueError(f"{path} has {n_outputs} outputs but {len(classes)} classes were given")
    return classes


class _InferenceOnly:
    """Exported files are frozen: the classifier protocol's ``fit`` is not available."""

    classes: list[str]

    def fit(self, X, y, X_val=None, y_val=None):
        raise NotImplementedError(f"{type(self).__name__} runs an exported file; train the PyTorch model instead")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) -> (N,) class indices."""
        return self.predict_proba(X).argmax(axis=1)


# --------------------------------------------------------------------------------------------------------
# Keras mirror and TFLite export


KERAS_ACTIVATIONS = {"T": "tanh", "R": "relu"}  # CNNSpec activation letter -> Keras activation


def keras_mirror(model: LowComplexityCNN):
    """A float Keras model computing what ``model(x)`` computes, in NHWC, built layer by layer from the
    family's description (:func:`lcasc.models.graph.nodes`); each Keras layer is named after its torch module.

    Input ``(N, n_mels, n_frames, 1)`` log-mel, output ``(N, n_classes)`` logits (see the module docstring).
    Conv kernels are transposed ``(out, in, kh, kw) -> (kh, kw, in, out)``; BatchNorm keeps its four vectors and
    PyTorch's epsilon (1e-5), so the float mirror matches to float32 rounding; the converter folds BN into
    the convolutions. PyTorch flattens the (C3, h, w) map channel-major, Keras flattens (h, w, C3) channel
    last: the first dense layer's input columns are reordered instead of adding a Permute layer. The flatten
    is a plain reshape to ``(-1, h * w * C3)``, which keeps the batch axis dynamic with a single RESHAPE op
    (Keras' Flatten adds SHAPE/STRIDED_SLICE/PACK when the batch is dynamic). A dense layer's activation is
    the Dense layer's own (one FULLY_CONNECTED op with a fused activation).
    """
    from lcasc.models import graph

    keras = tf_keras()
    spec = model.spec
    family = graph.nodes(spec)
    x = inputs = keras.Input((spec.n_mels, spec.n_frames, 1), name="logmel")
    for i, node in enumerate(family):
        if node.kind == "act" and family[i - 1].kind == "dense":
            continue  # folded into the Dense layer
        folded = family[i + 1].activation if node.kind == "dense" and i + 1 < len(family) else None
        x = keras_layer(keras, node, folded)(x)
    mirror = keras.Model(inputs, x, name=f"lcasc_{spec.widths}")
    for i, node in enumerate(family):
        module = getattr(model, node.attr) if node.attr else None
        if node.kind in ("conv", "bn"):
            mirror.get_layer(node.attr).set_weights(keras_weights(module, node.attr))
        elif node.kind == "dense":
            flat = family[i - 1].in_shape if family[i - 1].kind == "flatten" else None
            mirror.get_layer(node.attr).set_weights(keras_weights(module, node.attr, flat))
    return mirror


def keras_layer(keras, node, activation: str | None = None, name: str | None = None):
    """The Keras layer of one family layer (:class:`lcasc.models.graph.Node`), named ``name`` or after its torch
    module; ``activation``: the letter of an activation folded into a Dense layer."""
    name = name or node.attr or node.kind
    if node.kind == "conv":
        return keras.layers.Conv2D(node.out_shape[0], node.window, padding="same", name=name)
    if node.kind == "bn":
        return keras.layers.BatchNormalization(epsilon=1e-5, name=name)
    if node.kind == "act":
        return keras.layers.Activation(KERAS_ACTIVATIONS[node.activation], name=name)
    if node.kind == "pool":
        return keras.layers.AveragePooling2D(node.window, name=name)
    if node.kind == "flatten":
        flat = node.out_shape[0]
        return keras.layers.Lambda(lambda t: keras.ops.reshape(t, (-1, flat)), output_shape=(flat,), name=name)
    if node.kind == "dense":
        return keras.layers.Dense(node.out_shape[0], activation=activation and KERAS_ACTIVATIONS[activation],
                                  name=name)
    raise ValueError(f"no Keras layer for a {node.kind} layer")


def keras_weights(module, name: str, flattened: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """The Keras weights of a torch Conv2d, BatchNorm2d or Linear ``module`` (``name`` for errors).

    ``flattened``: (C, h, w) of the map a Linear reads through the flatten; its columns are reordered from
    PyTorch's channel-major to Keras' channel-last order.
    """
    from torch import nn

    def numpy(t):
        return t.detach().cpu().numpy().astype(np.float32)

    if isinstance(module, nn.Conv2d):
        return [numpy(module.weight).transpose(2, 3, 1, 0), numpy(module.bias)]
    if isinstance(module, nn.Linear):
        if flattened is None:
            return [numpy(module.weight).T, numpy(module.bias)]
        c, h, w = flattened
        w1 = numpy(module.weight).reshape(module.out_features, c, h, w)  # (out, C, h, w): channel-major columns
        return [w1.transpose(2, 3, 1, 0).reshape(c * h * w, module.out_features), numpy(module.bias)]
    if not isinstance(module, nn.BatchNorm2d) or abs(module.eps - 1e-5) > 1e-12:
        raise ValueError(f"{name}: expected BatchNorm2d with eps 1e-5")
    return [numpy(module.weight), numpy(module.bias), numpy(module.running_mean), numpy(module.running_var)]


def convert_keras(mirror, calibration: np.ndarray | None) -> bytes:
    """TFLite flatbuffer of a Keras log-mel model (input ``(N, n_mels, n_frames, 1)``): float32 when
    ``calibration`` is None, otherwise full-integer INT8 (per-channel int8 weights, int8 activations, int8
    input and output) calibrated on ``calibration`` (N, n_mels, n_frames) real log-mel."""
    tf = _tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(mirror)
    if calibration is not None:
        def representative_dataset():
            for clip in calibration:
                yield [clip[None, :, :, None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_output_to(os.devnull):
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected" and the like
        return converter.convert()


def _convert(model: LowComplexityCNN, calibration: np.ndarray | None) -> bytes:
    """The TFLite flatbuffer of a network: float32 when ``calibration`` is None, otherwise full-integer INT8."""
    return convert_keras(keras_mirror(model), calibration)


def tflite_ops(path: str | os.PathLike) -> list[dict]:
    """The operators of a .tflite file in execution order, read from the flatbuffer (no TensorFlow needed).

    Each entry: ``op`` (builtin name, e.g. ``"CONV_2D"``) and ``outputs``, a list of dicts with the output
    tensor's ``index`` (in the subgraph's tensor list), ``name``, ``dtype`` (``"INT8"``, ``"FLOAT32"``...),
    ``shape``, ``scales`` and ``zero_points``.
    """
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = runtime.convert_bytearray_to_object(bytearray(Path(path).read_bytes()))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if isinstance(v, int)}
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators or []:
        code = runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        outputs = []
        for t in op.outputs:
            tensor = graph.tensors[t]
            q = tensor.quantization
            outputs.append({
                "index": int(t),
                "name": tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name,
                "dtype": type_names.get(tensor.type, str(tensor.type)),
                "shape": [int(s) for s in tensor.shape] if tensor.shape is not None else [],
                "scales": [float(s) for s in q.scale] if q is not None and q.scale is not None else [],
                "zero_points": [int(z) for z in q.zeroPoint] if q is not None and q.zeroPoint is not None else [],
            })
        ops.append({"op": op_names.get(code, str(code)), "outputs": outputs})
    return ops


def fixed_qparam_violations(path: str | os.PathLike) -> list[str]:
    """Descriptions of int8 TANH / LOGISTIC / SOFTMAX outputs whose quantization TFLM would not honour
    (see :data:`FIXED_INT8_OUTPUT_QPARAMS`); empty when the file is safe."""
    problems = []
    for i, op in enumerate(tflite_ops(path)):
        if op["op"] not in FIXED_INT8_OUTPUT_QPARAMS:
            continue
        scale, zero_point = FIXED_INT8_OUTPUT_QPARAMS[op["op"]]
        for out in op["outputs"]:
            if out["dtype"] != "INT8":
                continue
            if (len(out["scales"]) != 1 or abs(out["scales"][0] - scale) > 1e-9 * scale
                    or out["zero_points"] != [zero_point]):
                problems.append(f"op {i} {op['op']} output {out['name']!r}: scale {out['scales']} zero point "
                                f"{out['zero_points']}, TFLM needs {scale} and {zero_point}")
    return problems


def export_tflite_int8(model: LowComplexityCNN, calibration: np.ndarray, path: str | os.PathLike,
                       max_samples: int = MAX_CALIBRATION_SAMPLES, seed: int = 0) -> dict:
    """Write a full-integer INT8 .tflite file for TFLite Micro; returns ``{"file_bytes", "arena_bytes"}``.

    ``calibration``: (N, n_mels, n_frames) float32 real training log-mel; a fixed random subset of at most
    ``max_samples`` clips (chosen with ``seed``) calibrates the activation ranges. Weights are int8 per
    output channel, activations and the file's input/output int8. Written as :func:`export_keras_int8` does.
    """
    return export_keras_int8(keras_mirror(model), model.spec, calibration, path, max_samples, seed)


def export_keras_int8(mirror, spec, calibration: np.ndarray, path: str | os.PathLike,
                      max_samples: int = MAX_CALIBRATION_SAMPLES, seed: int = 0) -> dict:
    """Full-integer INT8 .tflite of any Keras log-mel model (a network's or a fused ensemble's mirror) whose
    input is ``spec.n_mels`` x ``spec.n_frames``; returns ``{"file_bytes", "arena_bytes"}``.

    The file is written under a temporary name beside ``path``, checked (fixed-range op quantization; TFLM
    allocates and runs it, and the smallest arena is measured), and only then renamed to ``path``: a failure
    leaves ``path`` as it was. ``arena_bytes`` is :func:`arena_bytes` of the file.
    """
    X = _calibration_subset(calibration, spec, max_samples, seed)
    data = convert_keras(mirror, X)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
        problems = fixed_qparam_violations(tmp)
        if problems:
            raise RuntimeError("the converter produced quantization TFLM cannot run:\n" + "\n".join(problems))
        arena = arena_bytes(tmp)
    return {"file_bytes": len(data), "arena_bytes": arena}


def export_tflite_float(model: LowComplexityCNN, path: str | os.PathLike) -> dict:
    """Write a float32 .tflite file (same layout as the INT8 one, float input/output); returns
    ``{"file_bytes"}``. Written atomically."""
    data = _convert(model, None)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return {"file_bytes": len(data)}


# --------------------------------------------------------------------------------------------------------
# TFLite Micro


def _tflm_interpreter(model_data: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model_data, arena_size=int(arena_size))


def _tflm_runs(model_data: bytes, arena_size: int) -> bool:
    """Whether TFLM allocates the model in ``arena_size`` bytes and runs one inference on zeros."""
    try:
        with _native_output_to(os.devnull):  # TFLM prints "Failed to resize buffer..." on every miss
            interpreter = _tflm_interpreter(model_data, arena_size)
            detail = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
            interpreter.invoke()
    except RuntimeError:
        return False
    return True


def arena_bytes(path: str | os.PathLike) -> int:
    """The smallest TFLM tensor arena (bytes, to 16 bytes) in which the file is allocated and runs.

    Found by bisection on ``arena_size`` of the tflite-micro Python interpreter: below the answer it
    fails to allocate tensors, at the answer it allocates them and runs one inference. This is the figure
    to give ``tensor_arena`` on the device (plus whatever alignment the device's own buffer needs). On the
    files checked it equals the "Arena allocation total" of :func:`tflm_allocation_report` (TFLM's
    ``print_allocations``); the search is the check that the arena really suffices.
    """
    data = Path(path).read_bytes()
    hi = max(64 << 10, 8 * len(data))
    while not _tflm_runs(data, hi):
        hi *= 2
        if hi > TFLM_ARENA_LIMIT:
            raise RuntimeError(f"{path}: TFLM cannot run this file even with a {TFLM_ARENA_LIMIT} byte arena")
    lo = 0  # fails (an empty arena never suffices)
    while hi - lo > ARENA_SEARCH_STEP:
        mid = (lo + hi) // 2 // ARENA_SEARCH_STEP * ARENA_SEARCH_STEP or ARENA_SEARCH_STEP
        if mid <= lo:
            break
        if _tflm_runs(data, mid):
            hi = mid
        else:
            lo = mid
    return hi


def tflm_allocation_report(path: str | os.PathLike, arena_size: int | None = None) -> dict:
    """TFLM's own account of the arena (``print_allocations`` after one inference), parsed.

    Returns ``{"total", "head", "tail"}`` bytes (head: the planned activation buffers; tail: persistent
    structures) and ``"text"``, the full report.
    """
    data = Path(path).read_bytes()
    interpreter = _tflm_interpreter(data, arena_size or max(1 << 20, 10 * len(data)))
    detail = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
    interpreter.invoke()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "allocations.txt"
        with _native_output_to(report):
            interpreter.print_allocations()
        text = report.read_text(errors="replace")
    out: dict = {"text": text}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        out[key] = int(m.group(1)) if m else None
    return out


class TFLiteMicroClassifier(_InferenceOnly):
    """An INT8 .tflite file run clip by clip in TensorFlow Lite Micro's Python interpreter.

    ``predict_proba``: (N, n_mels, n_frames) float32 log-mel -> (N, n_classes) float32 probabilities
    (:func:`probabilities_from_logits` of the dequantized int8 logits). Inputs are quantized with the input
    tensor's scale and zero point. ``arena_size`` defaults to the measured minimum (:func:`arena_bytes`)
    plus 256 bytes, so running here also proves the file fits that arena.
    """

    def __init__(self, path: str | os.PathLike, classes: list[str], arena_size: int | None = None):
        self.path = Path(path)
        _check_ends_at_logits(self.path)
        self.arena_size = int(arena_size) if arena_size is not None else arena_bytes(self.path) + ARENA_MARGIN
        self._interpreter = _tflm_interpreter(self.path.read_bytes(), self.arena_size)
        self.input_detail = self._interpreter.get_input_details(0)
        self.output_detail = self._interpreter.get_output_details(0)
        for what, detail in (("input", self.input_detail), ("output", self.output_detail)):
            if np.dtype(detail["dtype"]) != np.int8:
                raise ValueError(f"{self.path}: {what} is {np.dtype(detail['dtype'])}, TFLM runner expects int8")
        self.classes = _check_classes(classes, int(self.output_detail["shape"][-1]), self.path)

    @staticmethod
    def _qparams(detail: dict) -> tuple[float, int]:
        q = detail["quantization_parameters"]
        return float(q["scales"][0]), int(q["zero_points"][0])

    def quantize_input(self, X: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) float log-mel -> (N, n_mels, n_frames) int8 as the file expects it."""
        return quantize_int8(_feature_batch(X), *self._qparams(self.input_detail))

    def invoke_int8(self, Xq: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) int8 inputs -> (N, n_classes) int8 outputs, one TFLM invoke per clip."""
        shape = tuple(int(s) for s in self.input_detail["shape"])
        out = np.empty((len(Xq), int(self.output_detail["shape"][-1])), np.int8)
        for i, clip in enumerate(np.asarray(Xq, np.int8)):
            self._interpreter.set_input(clip.reshape(shape), 0)
            self._interpreter.invoke()
            out[i] = self._interpreter.get_output(0).reshape(-1)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        q = self.invoke_int8(self.quantize_input(X))
        return probabilities_from_logits(dequantize_int8(q, *self._qparams(self.output_detail)), len(self.classes))


# --------------------------------------------------------------------------------------------------------
# LiteRT (TensorFlow Lite) interpreter


class LiteRTClassifier(_InferenceOnly):
    """A .tflite file (INT8 or float) in the LiteRT interpreter that ships with TensorFlow (``tf.lite``).

    ``reference_kernels=True`` uses the builtin reference kernels (``OpResolverType.BUILTIN_REF``), the
    ones TFLM's kernels are meant to agree with; the default optimised kernels round differently (2-3
    int8 steps). Batches of ``batch_size`` clips run in one invoke by resizing the input tensor.
    ``preserve_all_tensors=True`` keeps every intermediate tensor readable (:meth:`invoke_tensors`).
    ``predict_proba``: (N, n_mels, n_frames) float32 -> (N, n_classes) float32, rows sum to 1.
    """

    def __init__(self, path: str | os.PathLike, classes: list[str], reference_kernels: bool = True,
                 batch_size: int = 256, preserve_all_tensors: bool = False):
        tf = _tensorflow()
        self.path, self.batch_size = Path(path), int(batch_size)
        _check_ends_at_logits(self.path)
        self.preserve_all_tensors = preserve_all_tensors
        resolver = tf.lite.experimental.OpResolverType
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self._interpreter = tf.lite.Interpreter(
                model_path=str(self.path), experimental_preserve_all_tensors=preserve_all_tensors,
                experimental_op_resolver_type=resolver.BUILTIN_REF if reference_kernels else resolver.AUTO)
        self.input_detail = self._interpreter.get_input_details()[0]
        self.output_detail = self._interpreter.get_output_details()[0]
        self.int8 = np.dtype(self.input_detail["dtype"]) == np.int8
        self.classes = _check_classes(classes, int(self.output_detail["shape"][-1]), self.path)
        self._batch = 0

    def quantize_input(self, X: np.ndarray) -> np.ndarray:
        """(N, n_mels, n_frames) float log-mel -> int8 with the input tensor's scale and zero point."""
        return quantize_int8(_feature_batch(X), *self.input_detail["quantization"])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = [n, *(int(s) for s in self.input_detail["shape"][1:])]
            self._interpreter.resize_tensor_input(self.input_detail["index"], shape, strict=True)
            self._interpreter.allocate_tensors()
            self._batch = n

    def invoke_tensors(self, X: np.ndarray, indices: list[int]) -> list[np.ndarray]:
        """Inputs in the file's dtype, (N, n_mels, n_frames) -> the tensors ``indices`` (flatbuffer tensor
        indices, e.g. from :func:`tflite_ops`), each (N, ...). Intermediate tensors need
        ``preserve_all_tensors=True`` (the interpreter reuses their memory otherwise)."""
        if not self.preserve_all_tensors and set(indices) - {self.output_detail["index"]}:
            raise ValueError("reading intermediate tensors needs preserve_all_tensors=True")
        X = np.asarray(X)
        parts: list[list[np.ndarray]] = [[] for _ in indices]
        for start in range(0, len(X), self.batch_size):
            chunk = X[start:start + self.batch_size]
            self._resize(len(chunk))
            self._interpreter.set_tensor(self.input_detail["index"],
                                         chunk[..., None].astype(self.input_detail["dtype"]))
            self._interpreter.invoke()
            for part, index in zip(parts, indices):
                part.append(self._interpreter.get_tensor(index).copy())
        return [np.concatenate(part) if part else np.empty((0,)) for part in parts]

    def invoke_raw(self, X: np.ndarray) -> np.ndarray:
        """Inputs in the file's dtype, (N, n_mels, n_frames) -> raw outputs (N, n_classes) in its dtype."""
        if len(X) == 0:
            return np.empty((0, len(self.classes)), self.output_detail["dtype"])
        return self.invoke_tensors(X, [self.output_detail["index"]])[0]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = _feature_batch(X)
        if not self.int8:
            return probabilities_from_logits(self.invoke_raw(X), len(self.classes))
        q = self.invoke_raw(self.quantize_input(X))
        return probabilities_from_logits(dequantize_int8(q, *self.output_detail["quantization"]), len(self.classes))


def compare_tflm_litert(path: str | os.PathLike, X: np.ndarray) -> dict:
    """The check that matters for an INT8 file: TFLM against LiteRT's reference kernels on the same int8
    inputs (``X``: real (N, n_mels, n_frames) log-mel, quantized once with the file's input parameters).

    Both interpreters keep every intermediate tensor, so each operator's output is compared, in int8
    quantization steps of that tensor. Returns:

    - ``kernel_max_step_diff``: per clip, the difference at the *first* operator whose output differs
      (its inputs were still identical, so this is one kernel disagreeing), maximum over clips. A file
      TFLM computes correctly has at most 1 (requantization rounding); the TANH trap gives tens.
    - ``output_max_step_diff``: largest difference of the final int8 outputs. Downstream operators can
      amplify a 1-step difference (tanh's slope, a coarse logit scale before the softmax), so this may
      exceed 1 on a correct file.
    - ``op_max_step_diff``: ``[(op name, max difference)]`` per operator in execution order.
    - ``identical_fraction``: clips whose every tensor agrees; ``argmax_agreement``; ``n``.
    """
    from tflite_micro.python.tflite_micro import runtime

    X = _feature_batch(X)
    ops = tflite_ops(path)
    indices = [op["outputs"][0]["index"] for op in ops]
    ref = LiteRTClassifier(path, ["?"] * int(ops[-1]["outputs"][0]["shape"][-1]), reference_kernels=True,
                           preserve_all_tensors=True)
    if not ref.int8:
        raise ValueError(f"{path} is not a full-integer file")
    Xq = ref.quantize_input(X)
    b = [t.astype(np.int32) for t in ref.invoke_tensors(Xq, indices)]

    data = Path(path).read_bytes()
    tflm = runtime.Interpreter.from_bytes(data, arena_size=max(4 << 20, 20 * len(data)),
                                          intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    shape = tuple(int(s) for s in tflm.get_input_details(0)["shape"])
    a = [np.empty_like(t) for t in b]
    for i, clip in enumerate(Xq):
        tflm.set_input(clip.reshape(shape), 0)
        tflm.invoke()
        for k, index in enumerate(indices):
            a[k][i] = tflm.GetTensor(index, 0)["tensor_data"].reshape(a[k].shape[1:])

    diffs = np.stack([np.abs(ak - bk).reshape(len(X), -1).max(axis=1) for ak, bk in zip(a, b)], axis=1)
    first = np.argmax(diffs > 0, axis=1)  # (N,) first differing op (0 where none differs)
    kernel = diffs[np.arange(len(X)), first] if len(X) else np.zeros(0, int)
    out_a, out_b = a[-1].reshape(len(X), -1), b[-1].reshape(len(X), -1)
    return {
        "kernel_max_step_diff": int(kernel.max(initial=0)),
        "output_max_step_diff": int(diffs[:, -1].max(initial=0)),
        "op_max_step_diff": [(op["op"], int(d)) for op, d in zip(ops, diffs.max(axis=0, initial=0))],
        "identical_fraction": float((diffs.max(axis=1) == 0).mean()) if len(X) else 1.0,
        "argmax_agreement": float((out_a.argmax(1) == out_b.argmax(1)).mean()) if len(X) else 1.0,
        "n": len(X),
    }


# --------------------------------------------------------------------------------------------------------
# ONNX


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

    X = _feature_batch(calibration)
    if len(X) == 0:
        raise ValueError("calibration needs at least one clip")
    if len(X) > max_samples:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))]

    class Reader(ortq.CalibrationDataReader):
        def __init__(self, clips: np.ndarray, batch: int = 32):
            self.batches = iter([{"logmel": clips[i:i + batch]} for i in range(0, len(clips), batch)])

        def get_next(self):
            return next(self.batches, None)

    with atomic_path(out_path) as tmp, _without_log_message(logging.getLogger(), "pre-processing before quantiz"):
        ortq.quantize_static(str(float_path), str(tmp), Reader(X), quant_format=ortq.QuantFormat.QDQ,
                             per_channel=True, activation_type=ortq.QuantType.QInt8,
                             weight_type=ortq.QuantType.QInt8, calibrate_method=ortq.CalibrationMethod.MinMax)
        size = Path(tmp).stat().st_size
    return {"file_bytes": size}


class OnnxClassifier(_InferenceOnly):
    """An ONNX file from :func:`export_onnx` or :func:`quantize_onnx_int8` in ONNX Runtime (CPU).

    ``predict_proba``: (N, n_mels, n_frames) float32 log-mel -> (N, n_classes) float32 probabilities
    (:func:`probabilities_from_logits` of the file's logits), in batches of ``batch_size``.
    """

    def __init__(self, path: str | os.PathLike, classes: list[str], batch_size: int = 1024):
        import onnxruntime as ort

        self.path, self.batch_size = Path(path), int(batch_size)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        output = self._session.get_outputs()[0]
        if output.name != "logits":
            raise ValueError(f"{self.path}: its output is {output.name!r}, not 'logits' (a file written by an older "
                             "lcasc); export it again with `lcasc quantize`")
        n_out = output.shape[-1]
        self.classes = _check_classes(classes, int(n_out), self.path)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = _feature_batch(X)
        outs = [self._session.run(None, {self._input: X[i:i + self.batch_size]})[0]
                for i in range(0, len(X), self.batch_size)]
        logits = np.concatenate(outs) if outs else np.empty((0, len(self.classes)), np.float32)
        return probabilities_from_logits(logits, len(self.classes))
