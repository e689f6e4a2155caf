"""The INT8 network inside a ``model_int8.tflite`` file, read from its flatbuffer, as integer layers.

What: :func:`read_network` walks the file's operators and returns a :class:`Network` of the paper's CNN
shape (conv, [TANH], conv, [TANH], AVERAGE_POOL, conv, [TANH], AVERAGE_POOL, RESHAPE, FULLY_CONNECTED,
[TANH], FULLY_CONNECTED): int8 weights, int32 biases, and the per-channel Q31 multipliers, shifts, offsets
and clamping ranges TFLM's reference kernels compute from the file's scales (:mod:`lcasc.mcu.fixedpoint`).
Why from the file and not from the PyTorch model: the C library must compute what the file computes.
Anything else in the file (another op order, a trailing SOFTMAX, per-tensor int8 weights with a zero
point...) is refused with an error naming the file and the op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcasc.mcu import fixedpoint as fx


class UnsupportedModel(ValueError):
    """The .tflite file is not a network the C library implements."""


@dataclass
class Conv:
    """k x k 'same' convolution, stride 1: ``w`` (cout, k, k, cin) int8 (TFLite's OHWI order)."""

    w: np.ndarray
    bias: np.ndarray  # (cout,) int32
    multiplier: np.ndarray  # (cout,) int32 Q31
    shift: np.ndarray  # (cout,) int32, > 0 left
    input_offset: int  # -input zero point
    output_offset: int
    act_min: int
    act_max: int
    tanh: np.ndarray | None = None  # (256,) int8 table of a TANH op after it, indexed by q & 0xFF
    out_scale: float = 0.0  # the scale / zero point of what the next layer reads
    out_zero_point: int = 0

    @property
    def k(self) -> int:
        return int(self.w.shape[1])

    @property
    def cin(self) -> int:
        return int(self.w.shape[3])

    @property
    def cout(self) -> int:
        return int(self.w.shape[0])

    def folded_bias(self) -> np.ndarray:
        """bias + input_offset * sum(w): with padding filled with the input zero point, the convolution is
        a plain int8 dot product plus this constant (same int32 sums as TFLM's, which skips the padding)."""
        return (self.bias.astype(np.int64) + self.input_offset * self.w.reshape(self.cout, -1).sum(1)).astype(np.int32)


@dataclass
class Dense(Conv):
    """Fully connected: ``w`` (n_out, 1, 1, n_in) int8, stored like a 1x1 convolution."""


@dataclass
class Pool:
    """Average pooling, 'valid', stride = window (the floor drops the rest)."""

    kh: int
    kw: int
    act_min: int = -128
    act_max: int = 127


@dataclass
class Network:
    path: Path
    height: int  # input rows (mel bands)
    width: int  # input columns (frames)
    input_scale: float
    input_zero_point: int
    conv: list[Conv] = field(default_factory=list)  # C1, C2, C3
    pool: list[Pool] = field(default_factory=list)  # after C2, after C3
    dense: list[Dense] = field(default_factory=list)  # FC1, FC2 (logits)
    output_scale: float = 0.0
    output_zero_point: int = 0

    @property
    def n_classes(self) -> int:
        return self.dense[-1].cout

    @property
    def widths(self) -> str:
        return "-".join(str(c.cout) for c in self.conv) + f"-{self.dense[0].cout}"

    @property
    def pooled1(self) -> tuple[int, int]:
        return self.height // self.pool[0].kh, self.width // self.pool[0].kw

    @property
    def pooled2(self) -> tuple[int, int]:
        h, w = self.pooled1
        return h // self.pool[1].kh, w // self.pool[1].kw

    def macs(self) -> int:
        """Multiply-accumulates of one inference (convolutions and dense layers, METHOD-NOTES §4 style)."""
        h1, w1 = self.pooled1
        c1, c2, c3 = self.conv
        return (self.height * self.width * (c1.cout * c1.k * c1.k * c1.cin + c2.cout * c2.k * c2.k * c2.cin)
                + h1 * w1 * c3.cout * c3.k * c3.k * c3.cin + sum(d.cout * d.cin for d in self.dense))


_ACT = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}


def _activation_range(code: int, scale: float, zero_point: int, where: str) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized`` for an int8 output."""
    def q(v: float) -> int:
        return zero_point + int(np.sign(v / scale) * np.floor(abs(v / scale) + 0.5))

    if code == 0:
        return -128, 127
    if code == 1:
        return max(-128, q(0.0)), 127
    if code == 3:
        return max(-128, q(0.0)), min(127, q(6.0))
    if code == 2:
        return max(-128, q(-1.0)), min(127, q(1.0))
    raise UnsupportedModel(f"{where}: fused activation {code} is not supported")


def read_network(path: str | os.PathLike) -> Network:
    """Parse ``path`` (a full-integer .tflite of the paper's CNN ending at the int8 logits)."""
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    path = Path(path)
    try:
        model = runtime.convert_bytearray_to_object(bytearray(path.read_bytes()))
    except FileNotFoundError:
        raise
    except Exception as e:  # not a flatbuffer
        raise UnsupportedModel(f"{path}: not a readable .tflite file ({e})") from e
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
    graph = model.subgraphs[0]

    def tensor(i):
        return graph.tensors[i]

    def qparams(i) -> tuple[np.ndarray, np.ndarray]:
        q = tensor(i).quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise UnsupportedModel(f"{path}: tensor {tensor(i).name!r} is not quantized")
        return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)

    def const(i, dtype) -> np.ndarray:
        t = tensor(i)
        data = model.buffers[t.buffer].data
        if data is None:
            raise UnsupportedModel(f"{path}: tensor {t.name!r} has no constant data")
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(tuple(int(s) for s in t.shape))

    def check_int8(i, where):
        if tensor(i).type != schema.TensorType.INT8:
            raise UnsupportedModel(f"{path}: {where}: tensor {tensor(i).name!r} is not int8")

    ops = []
    for op in graph.operators or []:
        code = runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        ops.append((op_names.get(code, str(code)), op))
    names = [n for n, _ in ops]
    i_in = int(graph.inputs[0])
    check_int8(i_in, "input")
    shape = [int(s) for s in tensor(i_in).shape]
    if len(shape) != 4 or shape[3] != 1:
        raise UnsupportedModel(f"{path}: input shape {shape}, expected (1, mel bands, frames, 1)")
    s_in, z_in = qparams(i_in)
    net = Network(path, shape[1], shape[2], float(s_in[0]), int(z_in[0]))

    def weighted(name: str, op, cls, where: str):
        i_x, i_w, i_b = (int(v) for v in op.inputs[:3])
        i_y = int(op.outputs[0])
        for i in (i_x, i_w, i_y):
            check_int8(i, where)
        s_x, z_x = qparams(i_x)
        s_w, z_w = qparams(i_w)
        s_y, z_y = qparams(i_y)
        if np.any(z_w != 0):
            raise UnsupportedModel(f"{path}: {where}: weights with a non-zero zero point are not supported")
        w = const(i_w, np.int8)
        if name == "CONV_2D":
            o = op.builtinOptions
            if (o.strideW, o.strideH, o.dilationWFactor, o.dilationHFactor) != (1, 1, 1, 1) or o.padding != 0 \
                    or w.shape[1] != w.shape[2] or w.shape[1] % 2 == 0 or w.shape[1] > 15:
                raise UnsupportedModel(f"{path}: {where}: only odd k x k 'same' convolutions of stride 1, k <= 15, "
                                       f"are supported (kernel {list(w.shape)}, padding {o.padding})")
        else:
            w = w.reshape(w.shape[0], 1, 1, w.shape[1])
        cout = w.shape[0]
        bias = const(i_b, np.int32).reshape(-1) if i_b >= 0 else np.zeros(cout, np.int32)
        if len(s_w) == 1:  # per-tensor: TFLM multiplies the two float32 scales in float32
            reals = [float(np.float32(s_x[0]) * np.float32(s_w[0])) / float(s_y[0])] * cout
        else:
            reals = [float(s_x[0]) * float(s) / float(s_y[0]) for s in s_w]
        mult, shift = zip(*(fx.quantize_multiplier(r) for r in reals))
        lo, hi = _activation_range(op.builtinOptions.fusedActivationFunction, float(s_y[0]), int(z_y[0]), where)
        return cls(w=w, bias=bias.astype(np.int32), multiplier=np.array(mult, np.int32),
                   shift=np.array(shift, np.int32), input_offset=-int(z_x[0]), output_offset=int(z_y[0]),
                   act_min=lo, act_max=hi, out_scale=float(s_y[0]), out_zero_point=int(z_y[0]))

    def follow_tanh(pos: int, layer) -> int:
        """Attach the TANH at ``pos`` (if any) to ``layer``; returns the next position."""
        if pos < len(ops) and ops[pos][0] == "TANH":
            i_x = int(ops[pos][1].inputs[0])
            s_x, z_x = qparams(i_x)
            layer.tanh = fx.tanh_int8_table(float(s_x[0]), int(z_x[0]))
            layer.out_scale, layer.out_zero_point = 1 / 128, 0
            return pos + 1
        return pos

    expected = "CONV_2D [TANH] CONV_2D [TANH] AVERAGE_POOL_2D CONV_2D [TANH] AVERAGE_POOL_2D RESHAPE " \
               "FULLY_CONNECTED [TANH] FULLY_CONNECTED"
    pos = 0

    def expect(name: str) -> None:
        if pos >= len(ops) or ops[pos][0] != name:
            found = ops[pos][0] if pos < len(ops) else "the end of the graph"
            raise UnsupportedModel(f"{path}: op {pos} is {found}, expected {name} (the C library implements "
                                   f"{expected}; the file has {' '.join(names)})")

    for c in range(3):
        expect("CONV_2D")
        layer = weighted("CONV_2D", ops[pos][1], Conv, f"op {pos} CONV_2D")
        net.conv.append(layer)
        pos = follow_tanh(pos + 1, layer)
        if c >= 1:
            expect("AVERAGE_POOL_2D")
            o = ops[pos][1].builtinOptions
            i_x, i_y = int(ops[pos][1].inputs[0]), int(ops[pos][1].outputs[0])
            (s_x, z_x), (s_y, z_y) = qparams(i_x), qparams(i_y)
            if (o.strideH, o.strideW) != (o.filterHeight, o.filterWidth) or o.padding != 1 \
                    or not np.allclose(s_x, s_y, rtol=0, atol=0) or z_x[0] != z_y[0]:
                raise UnsupportedModel(f"{path}: op {pos} AVERAGE_POOL_2D: only 'valid' pooling with stride = "
                                       "window and unchanged quantization is supported")
            lo, hi = _activation_range(o.fusedActivationFunction, float(s_y[0]), int(z_y[0]), f"op {pos}")
            net.pool.append(Pool(o.filterHeight, o.filterWidth, lo, hi))
            pos += 1
    expect("RESHAPE")
    pos += 1
    for d in range(2):
        expect("FULLY_CONNECTED")
        layer = weighted("FULLY_CONNECTED", ops[pos][1], Dense, f"op {pos} FULLY_CONNECTED")
        net.dense.append(layer)
        pos = follow_tanh(pos + 1, layer) if d == 0 else pos + 1
    if pos != len(ops):
        raise UnsupportedModel(f"{path}: op {pos} is {ops[pos][0]}, but the network should end at the last "
                               f"FULLY_CONNECTED (int8 logits; probabilities are a float softmax of them)")
    if int(graph.outputs[0]) != int(ops[-1][1].outputs[0]):
        raise UnsupportedModel(f"{path}: the graph output is not the last FULLY_CONNECTED's output")
    net.output_scale, net.output_zero_point = net.dense[-1].out_scale, net.dense[-1].out_zero_point
    h1, w1 = net.pooled1
    h2, w2 = net.pooled2
    if net.dense[0].cin != h2 * w2 * net.conv[2].cout:
        raise UnsupportedModel(f"{path}: the first dense layer takes {net.dense[0].cin} inputs, the pooled map "
                               f"has {h2}x{w2}x{net.conv[2].cout}")
    return net
