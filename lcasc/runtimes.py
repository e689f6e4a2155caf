"""Runners that put exported files behind the classifier interface (``classes``, ``predict_proba``):
TensorFlow Lite Micro (as on the microcontroller), LiteRT (TensorFlow Lite's reference kernels, the check
for TFLM) and ONNX Runtime; the TFLM arena search. Each runtime is imported inside the runner that needs it."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from lcasc.int8 import dequantize_int8, feature_batch, probabilities_from_logits, quantize_int8
from lcasc.io import native_output_to

ARENA_SEARCH_STEP = 16  # bytes: resolution of the arena search (TFLM aligns its buffers to 16 bytes)
ARENA_MARGIN = 256  # bytes added to the measured minimum when a runner sizes its own arena
TFLM_ARENA_LIMIT = 64 << 20



def tensorflow():
    """Import TensorFlow quietly (its C++ logging off unless the user asked for it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    first = "tensorflow" not in sys.modules
    with native_output_to(os.devnull) if first else contextlib.nullcontext():  # oneDNN / absl banners
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


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


def check_ends_at_logits(path: str | os.PathLike) -> None:
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


def _tflm_interpreter(model_data: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model_data, arena_size=int(arena_size))


def _tflm_runs(model_data: bytes, arena_size: int) -> bool:
    """Whether TFLM allocates the model in ``arena_size`` bytes and runs one inference on zeros."""
    try:
        with native_output_to(os.devnull):  # TFLM prints "Failed to resize buffer..." on every miss
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
        with native_output_to(report):
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
        check_ends_at_logits(self.path)
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
        return quantize_int8(feature_batch(X), *self._qparams(self.input_detail))

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
        tf = tensorflow()
        self.path, self.batch_size = Path(path), int(batch_size)
        check_ends_at_logits(self.path)
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
        return quantize_int8(feature_batch(X), *self.input_detail["quantization"])

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
        X = feature_batch(X)
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

    X = feature_batch(X)
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
        X = feature_batch(X)
        outs = [self._session.run(None, {self._input: X[i:i + self.batch_size]})[0]
                for i in range(0, len(X), self.batch_size)]
        logits = np.concatenate(outs) if outs else np.empty((0, len(self.classes)), np.float32)
        return probabilities_from_logits(logits, len(self.classes))
