"""Full-integer INT8 TFLite files for TensorFlow Lite Micro, from PyTorch networks through a Keras mirror.

A Keras mirror of :class:`LowComplexityCNN` (NHWC, same weights, built layer by layer from the family's
description, :mod:`lcasc.models.graph`) goes through ``tf.lite.TFLiteConverter`` with a representative
dataset of real training features, giving int8 weights (per output channel), int8 activations, int8 input and
output: what TFLM runs on a Cortex-M (METHOD-NOTES §6; the route in EXPORT-NOTES, both in docs/). Every
file is checked before it is published: fixed-range ops carry the quantization TFLM assumes (TANH output
scale 1/128, zero point 0) and TFLM allocates and runs it.

File layout: input ``(1, n_mels, n_frames, 1)`` (batch axis dynamic for LiteRT; TFLM runs one clip at a
time), the log-mel quantized with the input tensor's scale and zero point; output ``(1, n_members *
n_classes)`` int8 logits (:mod:`lcasc.int8` turns them into probabilities). TensorFlow is imported inside
the functions that need it.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcasc.int8 import FIXED_INT8_OUTPUT_QPARAMS, feature_batch
from lcasc.io import atomic_path, native_output_to
from lcasc.runtimes import arena_bytes, tensorflow, tflite_ops

if TYPE_CHECKING:
    from lcasc.models.cnn import LowComplexityCNN


MAX_CALIBRATION_SAMPLES = 500


def tf_keras():
    """TensorFlow's Keras, for the mirrors that the TFLite converter takes; refuses another Keras backend."""
    keras = tensorflow().keras
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the Keras mirror needs the TensorFlow backend, KERAS_BACKEND is {keras.backend.backend()}")
    return keras


def calibration_subset(calibration: np.ndarray, spec, max_samples: int, seed: int = 0) -> np.ndarray:
    """At most ``max_samples`` clips of ``calibration`` (a fixed random subset when there are more)."""
    X = feature_batch(calibration)
    if X.shape[1:] != (spec.n_mels, spec.n_frames):
        raise ValueError(f"calibration clips are {X.shape[1:]}, the network expects {(spec.n_mels, spec.n_frames)}")
    if len(X) == 0:
        raise ValueError("calibration needs at least one clip")
    if not np.isfinite(X).all():
        raise ValueError("calibration features contain NaN or infinity")
    if len(X) > max_samples:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))]
    return X


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


# int8 TANH's output is fixed at 256 steps of 1/128 (FIXED_INT8_OUTPUT_QPARAMS): every input beyond
# ±atanh(127.5/128) ≈ ±3.11 gives the output's extreme value. A tensor that only feeds TANH needs no wider range.
TANH_INPUT_LIMIT = float(np.arctanh(127.5 / 128))


def convert_keras(mirror, calibration: np.ndarray | None) -> bytes:
    """TFLite flatbuffer of a Keras log-mel model (input ``(N, n_mels, n_frames, 1)``): float32 when
    ``calibration`` is None, otherwise full-integer INT8 (per-channel int8 weights, int8 activations, int8
    input and output) calibrated on ``calibration`` (N, n_mels, n_frames) real log-mel.

    INT8 goes in TFLite's own two steps, calibration (min/max of every tensor over ``calibration``) then
    quantization, with two changes in between, both measured on distilled networks (README, docs/EXPORT-NOTES):
    - :func:`narrow_tanh_inputs`: a computed tensor read only by TANH ops keeps at most
      ±:data:`TANH_INPUT_LIMIT` of its calibrated range. Min/max alone spends the int8 grid of a
      pre-activation on values tanh flattens (a distilled network's first convolution spans −28 to +70: a
      step of 0.38 where tanh is steepest); narrowed, the step is ≤ 0.025 and no output changes beyond it.
    - :func:`correct_biases`: each convolution's and dense layer's bias absorbs the mean error its int8
      weights make on the calibration data. The first convolution reads log-mel around −4.5 (and −36 in
      silence), so a weight's rounding error times that offset shifts the whole output.
    The two steps are the converter's private hooks (``_experimental_calibrate_only``, ``mlir_quantize``, as
    ``tf.lite.experimental.QuantizationDebugger`` uses them); TensorFlow is pinned.
    """
    tf = tensorflow()
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
        converter._experimental_calibrate_only = True
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_output_to(os.devnull):
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected" and the like
        data = converter.convert()
        if calibration is None:
            return data
        from tensorflow.lite.python.convert import mlir_quantize

        calibrated = correct_biases(narrow_tanh_inputs(data), calibration)
        return mlir_quantize(calibrated, input_data_type=tf.int8, output_data_type=tf.int8)


def narrow_tanh_inputs(calibrated: bytes, limit: float = TANH_INPUT_LIMIT) -> bytes:
    """A calibrated float flatbuffer (min/max per tensor) with the range of every tensor that an operator
    computes and only TANH ops read cut to ``[-limit, limit]`` (a graph input keeps its range: it is how
    callers quantize their features)."""
    import flatbuffers
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = runtime.convert_bytearray_to_object(bytearray(calibrated))
    for graph in model.subgraphs:
        codes = [runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
                 for op in graph.operators]
        computed = {int(t) for op in graph.operators for t in op.outputs}
        readers: dict[int, set[int]] = {}
        for op, code in zip(graph.operators, codes):
            for t in op.inputs:
                readers.setdefault(int(t), set()).add(code)
        for t, ops in readers.items():
            q = graph.tensors[t].quantization
            if (ops == {schema.BuiltinOperator.TANH} and t in computed and t not in set(graph.outputs)
                    and q is not None and q.min is not None and len(q.min) == 1):
                q.min = np.maximum(q.min, -limit).astype(np.float32)
                q.max = np.minimum(q.max, limit).astype(np.float32)
    builder = flatbuffers.Builder(len(calibrated))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _convert(model: LowComplexityCNN, calibration: np.ndarray | None) -> bytes:
    """The TFLite flatbuffer of a network: float32 when ``calibration`` is None, otherwise full-integer INT8."""
    return convert_keras(keras_mirror(model), calibration)


def correct_biases(calibrated: bytes, calibration: np.ndarray) -> bytes:
    """A calibrated float flatbuffer whose CONV_2D and FULLY_CONNECTED biases absorb the mean error of the
    int8 weights the quantizer will give them (empirical bias correction, Nagel et al. 2019, "Data-Free
    Quantization Through Weight Equalization and Bias Correction", §4.2).

    The quantizer rounds each output channel's float weights ``w`` to ``q * s`` with ``s = max|w| / 127``
    (symmetric, per channel), so an output moves by ``(q * s - w) · x`` for its input patch ``x``; averaged
    over the calibration clips that is ``(q * s - w) · E[x]``, subtracted here from the bias. ``E[x]`` comes
    from the float model itself (LiteRT on ``calibration``, (N, n_mels, n_frames)), for every such layer at
    once. Convolutions other than stride 1, dilation 1 keep their bias (none in the Table-1 family).
    """
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    ops = schema.BuiltinOperator
    model = runtime.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]

    def array(t: int) -> np.ndarray:
        tensor = graph.tensors[t]
        return model.buffers[tensor.buffer].data.view(np.float32).reshape(tensor.shape)

    layers = []  # (op, code) whose weights and bias are constants of the file
    for op in graph.operators:
        code = runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        if code not in (ops.CONV_2D, ops.FULLY_CONNECTED) or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        if any(model.buffers[graph.tensors[t].buffer].data is None for t in op.inputs[1:3]):
            continue
        if code == ops.CONV_2D:
            o = op.builtinOptions
            if (o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor) != (1, 1, 1, 1):
                continue
        layers.append((op, code))
    if not layers:
        return calibrated
    means = _tensor_means(calibrated, calibration, [int(op.inputs[0]) for op, _ in layers])
    for (op, code), mean in zip(layers, means):
        w, bias = array(op.inputs[1]), array(op.inputs[2])
        flat = w.reshape(len(w), -1).astype(np.float64)
        scale = np.abs(flat).max(axis=1, keepdims=True) / 127
        q = np.round(np.divide(flat, scale, out=np.zeros_like(flat), where=scale > 0)) * scale
        if code == ops.CONV_2D:  # w: (out, kh, kw, in); mean: the input map (h, w, in); "same" or "valid" padding
            kh, kw = w.shape[1:3]
            if op.builtinOptions.padding == schema.Padding.SAME:
                top, left = (kh - 1) // 2, (kw - 1) // 2
                mean = np.pad(mean, ((top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
            oh, ow = mean.shape[0] - kh + 1, mean.shape[1] - kw + 1
            patch = np.stack([[mean[dy:dy + oh, dx:dx + ow].mean(axis=(0, 1)) for dx in range(kw)]
                              for dy in range(kh)])  # (kh, kw, in): the mean input patch over all positions
        else:
            patch = mean.reshape(-1)
        bias -= ((q - flat) @ patch.reshape(-1)).astype(np.float32)  # writes into the file's buffer
    import flatbuffers

    builder = flatbuffers.Builder(len(calibrated))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor_means(model_data: bytes, calibration: np.ndarray, tensors: list[int], batch: int = 100) -> list:
    """Means over the clips of ``calibration`` of the float model's tensors ``tensors`` (each without its batch
    axis), in the LiteRT interpreter."""
    tf = tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_content=model_data, experimental_preserve_all_tensors=True)
    index = interpreter.get_input_details()[0]["index"]
    X = np.asarray(calibration, np.float32)[..., None]
    sums = [0.0] * len(tensors)
    for start in range(0, len(X), batch):
        chunk = X[start:start + batch]
        interpreter.resize_tensor_input(index, chunk.shape, strict=False)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, chunk)
        interpreter.invoke()
        sums = [total + interpreter.get_tensor(t).astype(np.float64).sum(axis=0) for total, t in zip(sums, tensors)]
    return [total / len(X) for total in sums]


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
    X = calibration_subset(calibration, spec, max_samples, seed)
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
