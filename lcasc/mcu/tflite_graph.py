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


class _Reader:
    """The parsed flatbuffer of one .tflite file, with what :func:`read_network` asks of its tensors and ops."""

    def __init__(self, path: Path):
        from tflite_micro.python.tflite_micro import runtime
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

        try:
            self.model = runtime.convert_bytearray_to_object(bytearray(path.read_bytes()))
        except FileNotFoundError:
            raise
        except Exception as e:  # not a flatbuffer
            raise UnsupportedModel(f"{path}: not a readable .tflite file ({e})") from e
        self.path, self.schema = path, schema
        op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
        self.graph = self.model.subgraphs[0]
        self.ops = []
        for op in self.graph.operators or []:
            code = runtime.get_builtin_code_from_operator_code(self.model.operatorCodes[op.opcodeIndex])
            self.ops.append((op_names.get(code, str(code)), op))
        self.pos = 0  # the next op to read

    def tensor(self, i):
        return self.graph.tensors[i]

    def qparams(self, i) -> tuple[np.ndarray, np.ndarray]:
        q = self.tensor(i).quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise UnsupportedModel(f"{self.path}: tensor {self.tensor(i).name!r} is not quantized")
        return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)

    def const(self, i, dtype) -> np.ndarray:
        t = self.tensor(i)
        data = self.model.buffers[t.buffer].data
        if data is None:
            raise UnsupportedModel(f"{self.path}: tensor {t.name!r} has no constant data")
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(tuple(int(s) for s in t.shape))

    def check_int8(self, i, where):
        if self.tensor(i).type != self.schema.TensorType.INT8:
            raise UnsupportedModel(f"{self.path}: {where}: tensor {self.tensor(i).name!r} is not int8")

    def expect(self, name: str) -> object:
        """The op at the current position, which must be ``name``."""
        if self.pos >= len(self.ops) or self.ops[self.pos][0] != name:
            found = self.ops[self.pos][0] if self.pos < len(self.ops) else "the end of the graph"
            raise UnsupportedModel(f"{self.path}: op {self.pos} is {found}, expected {name} (the C library "
                                   f"implements {_EXPECTED}; the file has {' '.join(n for n, _ in self.ops)})")
        return self.ops[self.pos][1]

    def weighted(self, name: str, cls):
        """The CONV_2D or FULLY_CONNECTED at the current position as a ``cls`` layer (requantization ready)."""
        op, where = self.expect(name), f"op {self.pos} {name}"
        i_x, i_w, i_b = (int(v) for v in op.inputs[:3])
        i_y = int(op.outputs[0])
        for i in (i_x, i_w, i_y):
            self.check_int8(i, where)
        (s_x, z_x), (s_w, z_w), (s_y, z_y) = self.qparams(i_x), self.qparams(i_w), self.qparams(i_y)
        if np.any(z_w != 0):
            raise UnsupportedModel(f"{self.path}: {where}: weights with a non-zero zero point are not supported")
        w = self.const(i_w, np.int8)
        if name == "CONV_2D":
            o = op.builtinOptions
            if (o.strideW, o.strideH, o.dilationWFactor, o.dilationHFactor) != (1, 1, 1, 1) or o.padding != 0 \
                    or w.shape[1] != w.shape[2] or w.shape[1] % 2 == 0 or w.shape[1] > 15:
                raise UnsupportedModel(f"{self.path}: {where}: only odd k x k 'same' convolutions of stride 1, "
                                       f"k <= 15, are supported (kernel {list(w.shape)}, padding {o.padding})")
        else:
            w = w.reshape(w.shape[0], 1, 1, w.shape[1])
        cout = w.shape[0]
        bias = self.const(i_b, np.int32).reshape(-1) if i_b >= 0 else np.zeros(cout, np.int32)
        if len(s_w) == 1:  # per-tensor: TFLM multiplies the two float32 scales in float32
            reals = [float(np.float32(s_x[0]) * np.float32(s_w[0])) / float(s_y[0])] * cout
        else:
            reals = [float(s_x[0]) * float(s) / float(s_y[0]) for s in s_w]
        mult, shift = zip(*(fx.quantize_multiplier(r) for r in reals))
        lo, hi = _activation_range(op.builtinOptions.fusedActivationFunction, float(s_y[0]), int(z_y[0]), where)
        self.pos += 1
        return cls(w=w, bias=bias.astype(np.int32), multiplier=np.array(mult, np.int32),
                   shift=np.array(shift, np.int32), input_offset=-int(z_x[0]), output_offset=int(z_y[0]),
                   act_min=lo, act_max=hi, out_scale=float(s_y[0]), out_zero_point=int(z_y[0]))

    def follow_tanh(self, layer) -> None:
        """Attach the TANH at the current position (if there is one) to ``layer``."""
        if self.pos < len(self.ops) and self.ops[self.pos][0] == "TANH":
            s_x, z_x = self.qparams(int(self.ops[self.pos][1].inputs[0]))
            layer.tanh = fx.tanh_int8_table(float(s_x[0]), int(z_x[0]))
            layer.out_scale, layer.out_zero_point = 1 / 128, 0
            self.pos += 1

    def pool(self) -> Pool:
        """The AVERAGE_POOL_2D at the current position."""
        op = self.expect("AVERAGE_POOL_2D")
        o = op.builtinOptions
        (s_x, z_x), (s_y, z_y) = self.qparams(int(op.inputs[0])), self.qparams(int(op.outputs[0]))
        if (o.strideH, o.strideW) != (o.filterHeight, o.filterWidth) or o.padding != 1 \
                or not np.allclose(s_x, s_y, rtol=0, atol=0) or z_x[0] != z_y[0]:
            raise UnsupportedModel(f"{self.path}: op {self.pos} AVERAGE_POOL_2D: only 'valid' pooling with stride "
                                   "= window and unchanged quantization is supported")
        lo, hi = _activation_range(o.fusedActivationFunction, float(s_y[0]), int(z_y[0]), f"op {self.pos}")
        self.pos += 1
        return Pool(o.filterHeight, o.filterWidth, lo, hi)


_EXPECTED = ("CONV_2D [TANH] CONV_2D [TANH] AVERAGE_POOL_2D CONV_2D [TANH] AVERAGE_POOL_2D RESHAPE "
             "FULLY_CONNECTED [TANH] FULLY_CONNECTED")


def read_network(path: str | os.PathLike) -> Network:
    """Parse ``path`` (a full-integer .tflite of the paper's CNN ending at the int8 logits)."""
    path = Path(path)
    r = _Reader(path)
    i_in = int(r.graph.inputs[0])
    r.check_int8(i_in, "input")
    shape = [int(s) for s in r.tensor(i_in).shape]
    if len(shape) != 4 or shape[3] != 1:
        raise UnsupportedModel(f"{path}: input shape {shape}, expected (1, mel bands, frames, 1)")
    s_in, z_in = r.qparams(i_in)
    net = Network(path, shape[1], shape[2], float(s_in[0]), int(z_in[0]))
    for c in range(3):
        net.conv.append(r.weighted("CONV_2D", Conv))
        r.follow_tanh(net.conv[-1])
        if c >= 1:
            net.pool.append(r.pool())
    r.expect("RESHAPE")
    r.pos += 1
    for d in range(2):
        net.dense.append(r.weighted("FULLY_CONNECTED", Dense))
        if d == 0:
            r.follow_tanh(net.dense[-1])
    if r.pos != len(r.ops):
        raise UnsupportedModel(f"{path}: op {r.pos} is {r.ops[r.pos][0]}, but the network should end at the last "
                               f"FULLY_CONNECTED (int8 logits; probabilities are a float softmax of them)")
    if int(r.graph.outputs[0]) != int(r.ops[-1][1].outputs[0]):
        raise UnsupportedModel(f"{path}: the graph output is not the last FULLY_CONNECTED's output")
    net.output_scale, net.output_zero_point = net.dense[-1].out_scale, net.dense[-1].out_zero_point
    h2, w2 = net.pooled2
    if net.dense[0].cin != h2 * w2 * net.conv[2].cout:
        raise UnsupportedModel(f"{path}: the first dense layer takes {net.dense[0].cin} inputs, the pooled map "
                               f"has {h2}x{w2}x{net.conv[2].cout}")
    return net
