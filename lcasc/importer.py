"""Networks of the paper's family from float TFLite or Keras files, as lcasc run directories (`lcasc import`).

What: :func:`read_network` walks a float32 ``.tflite`` file's operators from the input to the output and
recognises the family of :mod:`lcasc.models.graph` (C1 -> C2 -> P1 -> C3 -> P2 -> flatten -> dense ->
dense): three k x k 'same' convolutions of stride 1, each followed by an optional per-channel affine
BatchNorm left as MUL / ADD ops (or folded into the convolution by the converter) and a tanh or ReLU (a
TANH / RELU op or the op's fused activation); average pooling after C2 and C3 ('valid', stride = window);
the flatten (a RESHAPE, after a TRANSPOSE to channel-major order or not, beside any SHAPE / STRIDED_SLICE /
PACK ops computing its shape); a dense layer with tanh or ReLU; the dense layer of the logits; an optional
final SOFTMAX. Widths, kernel size, pooling windows and activation letters are read from the file; the
weights go into a :class:`~lcasc.models.cnn.LowComplexityCNN` (OHWI kernels -> OIHW; a channel-last
flatten's dense columns reordered to PyTorch's channel-major order; BatchNorm holding the affine MUL / ADD,
or the identity when the file folded it). Anything else is refused with one line naming the file and the
op that does not fit. A Keras file (``.h5``, ``.keras``) is converted to a float TFLite flatbuffer first and
read the same way.

Why: the paper's authors published their networks as float ``.tflite`` files; imported, they are run
directories that ``evaluate``, ``prune``, ``quantize``, ``ensemble``, ``export`` and ``predict`` take like
networks lcasc trained. :func:`import_network` writes that directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcasc.names import TAU22_CLASSES, UNPRUNED

log = logging.getLogger("lcasc")

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
BN_EPS = 1e-5  # PyTorch's BatchNorm2d default, which the Keras mirror checks
# A running variance whose sum with eps is exactly 1 in float32: the imported BatchNorm divides by exactly 1.
_IDENTITY_VAR = float(np.float32(1.0) - np.float32(BN_EPS))
FAMILY_OPS = ("CONV_2D [MUL] [ADD] TANH|RELU, CONV_2D [MUL] [ADD] TANH|RELU, AVERAGE_POOL_2D, CONV_2D [MUL] [ADD] "
              "TANH|RELU, AVERAGE_POOL_2D, [TRANSPOSE] RESHAPE, FULLY_CONNECTED TANH|RELU, FULLY_CONNECTED, "
              "[SOFTMAX]")


class NotInFamily(ValueError):
    """The file is not a float network of the paper's family; the message names the file and what differs."""


@dataclass
class Imported:
    """What :func:`read_network` found: the network and how the file wrote it."""

    net: object  # LowComplexityCNN
    softmax: bool  # the file ends in a SOFTMAX: its outputs are probabilities, the network's are logits
    bn: str  # "folded" (into the convolutions) or "separate" (MUL / ADD ops, now the network's BatchNorm)
    flatten: str  # "channel-last" (TFLite's NHWC order) or "channel-major" (a TRANSPOSE before the RESHAPE)
    ops: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"softmax": self.softmax, "batchnorm": self.bn, "flatten": self.flatten, "ops": " ".join(self.ops)}


# ----------------------------------------------------------------------------------------------------------
# the flatbuffer


class _Graph:
    """The first subgraph of a .tflite flatbuffer: ops in order, tensors, constants."""

    def __init__(self, data: bytes, where: str):
        from tflite_micro.python.tflite_micro import runtime
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

        self.where, self.schema = where, schema
        try:
            self.model = runtime.convert_bytearray_to_object(bytearray(data))
            self.graph = self.model.subgraphs[0]
        except Exception as e:  # noqa: BLE001 - any parse failure means: not a .tflite file
            raise NotInFamily(f"{where}: not a readable .tflite file ({type(e).__name__}: {e})") from None
        op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
        self.type_names = {v: k for k, v in vars(schema.TensorType).items() if isinstance(v, int)}
        self.ops = []
        for op in self.graph.operators or []:
            code = runtime.get_builtin_code_from_operator_code(self.model.operatorCodes[op.opcodeIndex])
            self.ops.append((op_names.get(code, str(code)), op))

    def fail(self, what: str):
        raise NotInFamily(f"{self.where}: {what} (the family is {FAMILY_OPS})")

    def shape(self, i: int) -> list[int]:
        t = self.graph.tensors[i]
        return [int(s) for s in t.shape] if t.shape is not None else []

    def dtype(self, i: int) -> str:
        return self.type_names.get(self.graph.tensors[i].type, str(self.graph.tensors[i].type))

    def const(self, i: int, what: str) -> np.ndarray | None:
        """The constant float32 data of tensor ``i`` (None when it is computed by an op)."""
        if i < 0:
            return None
        t = self.graph.tensors[i]
        data = self.model.buffers[t.buffer].data if t.buffer < len(self.model.buffers) else None
        if data is None or len(data) == 0:
            return None
        if t.type not in (self.schema.TensorType.FLOAT32, self.schema.TensorType.INT32):
            self.fail(f"{what} is {self.dtype(i)}, not float32 (import float files; quantize them with lcasc)")
        dtype = np.float32 if t.type == self.schema.TensorType.FLOAT32 else np.int32
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(self.shape(i)).copy()

    def consumers(self, tensor: int) -> list[tuple[int, str, object]]:
        return [(k, name, op) for k, (name, op) in enumerate(self.ops) if tensor in [int(v) for v in op.inputs]]

    def chain(self) -> list[tuple[int, str, object]]:
        """The ops from the graph input to its output that carry float data, in order: at each step the one op
        reading the current tensor whose output is float32 (shape computations such as SHAPE / PACK, which
        output int32, are left aside)."""
        if len(self.graph.inputs) != 1 or len(self.graph.outputs) != 1:
            self.fail(f"{len(self.graph.inputs)} inputs and {len(self.graph.outputs)} outputs, expected one of each")
        current, out, seen = int(self.graph.inputs[0]), int(self.graph.outputs[0]), []
        if self.dtype(current) != "FLOAT32":
            self.fail(f"its input is {self.dtype(current)}, not float32 (import float files; quantize them with "
                      "lcasc)")
        while current != out:
            nxt = [(k, n, op) for k, n, op in self.consumers(current)
                   if any(self.dtype(int(o)) == "FLOAT32" for o in op.outputs)]
            if len(nxt) != 1:
                where = f"after op {seen[-1][0]} {seen[-1][1]}" if seen else "at the input"
                self.fail(f"{where} the graph {'ends' if not nxt else 'branches'} before the output")
            seen.append(nxt[0])
            current = int(nxt[0][2].outputs[0])
        return seen


# ----------------------------------------------------------------------------------------------------------
# the family


def _fused(g: _Graph, k: int, name: str, op) -> str | None:
    """The activation letter fused into op ``k`` (None: none); refuses anything but none and ReLU."""
    code = op.builtinOptions.fusedActivationFunction if op.builtinOptions is not None and hasattr(
        op.builtinOptions, "fusedActivationFunction") else 0
    if code == 0:
        return None
    if code == 1:
        return "R"
    g.fail(f"op {k} {name} has the fused activation {code} (only none or ReLU are in the family)")


@dataclass
class _Conv:
    """One convolution block as the file wrote it."""

    kernel: np.ndarray  # OHWI
    bias: np.ndarray
    scale: np.ndarray  # the BatchNorm's x * scale + shift (ones and zeros when the file folded it)
    shift: np.ndarray
    act: str  # "T" or "R"


@dataclass
class _Layers:
    """The family's pieces that :class:`_Parser` read from a file, as the file wrote them."""

    n_mels: int
    n_frames: int
    convs: list[_Conv]
    pools: list[tuple[int, int]]
    flatten: str  # "channel-last" or "channel-major"
    fc1: tuple[np.ndarray, np.ndarray]  # (units, inputs) weights, bias
    fc1_act: str
    fc2: tuple[np.ndarray, np.ndarray]  # (classes, units) weights, bias
    softmax: bool
    bn: str  # "folded" or "separate"
    ops: list[str]  # the names of the file's float ops, in order


class _Parser:
    """A walk along the float ops of a graph, from the input to the output: each method reads one piece of the
    family at the current position and moves past it, or refuses the file."""

    def __init__(self, g: _Graph):
        self.g = g
        self.chain = g.chain()
        self.names = [n for _, n, _ in self.chain]
        self.pos = 0
        self.separate_bn = False

    def layers(self) -> _Layers:
        """The whole chain, read as the family's pieces in order."""
        n_mels, n_frames = self.input_size()
        convs, pools = [], []
        for c in range(3):
            convs.append(self.conv_block(c, convs))
            if c >= 1:
                pools.append(self.pool(c))
        flatten = self.flatten()
        fc1, fc1_act = self.hidden_dense()
        fc2 = self.logits()
        softmax = self.softmax()
        self.end()
        return _Layers(n_mels, n_frames, convs, pools, flatten, fc1, fc1_act, fc2, softmax,
                       "separate" if self.separate_bn else "folded", self.names)

    # -- moving along the chain

    def peek(self) -> str | None:
        """The name of the op at the current position (None: the end of the graph)."""
        return self.chain[self.pos][1] if self.pos < len(self.chain) else None

    def take(self) -> tuple[int, str, object]:
        """The op at the current position, (index in the graph, name, op); moves past it."""
        self.pos += 1
        return self.chain[self.pos - 1]

    def expect(self, *allowed: str, what: str) -> tuple[int, str, object]:
        """:meth:`take` the current op, refusing the file unless it is one of ``allowed`` (``what``: its role)."""
        if self.peek() not in allowed:
            found = f"op {self.chain[self.pos][0]} {self.peek()}" if self.pos < len(self.chain) \
                else "the end of the graph"
            self.g.fail(f"{found} where {what} should be ({' or '.join(allowed)}); its ops are {' '.join(self.names)}")
        return self.take()

    def activation(self, what: str) -> str:
        """A TANH or RELU op, as its letter."""
        _, name, _ = self.expect("TANH", "RELU", what=what)
        return "T" if name == "TANH" else "R"

    # -- the pieces, in order

    def input_size(self) -> tuple[int, int]:
        """(mel bands, frames) of the input, past a RESHAPE / EXPAND_DIMS adding the channel axis if any."""
        shape = self.g.shape(int(self.g.graph.inputs[0]))
        if len(shape) == 3 and self.peek() in ("RESHAPE", "EXPAND_DIMS"):  # (N, mels, frames) -> (..., 1)
            self.take()
            shape = [*shape, 1]
        if len(shape) != 4 or shape[3] != 1:
            self.g.fail(f"its input is {shape}, expected (batch, mel bands, frames, 1)")
        return shape[1], shape[2]

    def conv_block(self, c: int, before: list[_Conv]) -> _Conv:
        """C{c + 1}: the convolution, a BatchNorm left as MUL / ADD ops if any, the activation."""
        k, name, op = self.expect("CONV_2D", what=f"C{c + 1}")
        kernel = self.conv_kernel(k, op, before)
        cout = kernel.shape[0]
        b = self.g.const(int(op.inputs[2]), f"op {k} CONV_2D's bias") if len(op.inputs) > 2 else None
        bias = np.zeros(cout, np.float32) if b is None else b.reshape(cout)
        act = _fused(self.g, k, name, op)
        scale, shift = np.ones(cout, np.float32), np.zeros(cout, np.float32)
        if act is None:
            scale, shift, act = self.separate_batchnorm(c, cout)
        if act is None:
            act = self.activation(f"C{c + 1}'s activation")
        return _Conv(kernel, bias, scale, shift, act)

    def conv_kernel(self, k: int, op, before: list[_Conv]) -> np.ndarray:
        """The OHWI kernel of the CONV_2D op ``k``: odd k x k, stride 1, 'same', chained to the ones ``before``."""
        w = self.g.const(int(op.inputs[1]), f"op {k} CONV_2D's kernel")
        if w is None or w.ndim != 4:
            self.g.fail(f"op {k} CONV_2D has no constant kernel")
        _, kh, kw, cin = w.shape
        o = op.builtinOptions
        if (o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor) != (1, 1, 1, 1) or o.padding != 0 \
                or kh != kw or kh % 2 == 0:
            self.g.fail(f"op {k} CONV_2D is {kh}x{kw}, stride {o.strideH}x{o.strideW}, dilation "
                        f"{o.dilationHFactor}x{o.dilationWFactor}, padding {'same' if o.padding == 0 else 'valid'}; "
                        "the family's are odd k x k, stride 1, 'same'")
        if before and (kh != before[0].kernel.shape[1] or cin != before[-1].kernel.shape[0]):
            size, width = before[0].kernel.shape[1], before[-1].kernel.shape[0]
            self.g.fail(f"op {k} CONV_2D is {kh}x{kw} over {cin} channels after a {size}x{size} convolution of "
                        f"{width} (one kernel size, chained widths)")
        if not before and cin != 1:
            self.g.fail(f"op {k} CONV_2D reads {cin} channels, the log-mel is one")
        return w

    def separate_batchnorm(self, c: int, cout: int) -> tuple[np.ndarray, np.ndarray, str | None]:
        """The BatchNorm after C{c + 1} that the converter did not fold: MUL / ADD ops by per-channel constants,
        x * scale + shift (the identity when there are none), and the activation fused into the last (None:
        none)."""
        scale, shift, act = np.ones(cout, np.float32), np.zeros(cout, np.float32), None
        while act is None and self.peek() in ("MUL", "ADD"):
            k, name, op = self.take()
            const = [self.g.const(int(i), f"op {k} {name}'s operand") for i in op.inputs]
            vec = next((v for v in const if v is not None), None)
            if vec is None or vec.size not in (1, cout) or (vec.ndim > 1 and vec.shape[-1] != vec.size):
                self.g.fail(f"op {k} {name} is not a per-channel constant {name.lower()} (a BatchNorm after "
                            f"C{c + 1})")
            vec = np.broadcast_to(vec.reshape(-1), (cout,)).astype(np.float32)
            scale, shift = (scale * vec, shift * vec) if name == "MUL" else (scale, shift + vec)
            self.separate_bn = True
            act = _fused(self.g, k, name, op)
        return scale, shift, act

    def pool(self, p: int) -> tuple[int, int]:
        """P{p}'s window: an AVERAGE_POOL_2D, 'valid', stride = window."""
        if self.peek() == "MAX_POOL_2D":
            self.g.fail(f"op {self.chain[self.pos][0]} MAX_POOL_2D: the family pools by averaging")
        k, name, op = self.expect("AVERAGE_POOL_2D", what=f"P{p}")
        o = op.builtinOptions
        if (o.strideH, o.strideW) != (o.filterHeight, o.filterWidth) or o.padding != 1 or _fused(self.g, k, name, op):
            self.g.fail(f"op {k} AVERAGE_POOL_2D is not 'valid' pooling with stride = window")
        return int(o.filterHeight), int(o.filterWidth)

    def flatten(self) -> str:
        """The flatten's order: "channel-major" after a TRANSPOSE to (N, C, H, W), else "channel-last"."""
        order = "channel-last"
        if self.peek() == "TRANSPOSE":
            k, _, op = self.take()
            perm = self.g.const(int(op.inputs[1]), f"op {k} TRANSPOSE's permutation")
            if perm is None or perm.reshape(-1).tolist() != [0, 3, 1, 2]:
                self.g.fail(f"op {k} TRANSPOSE permutes {None if perm is None else perm.reshape(-1).tolist()}, "
                            "only [0, 3, 1, 2] (to channel-major before the flatten) is in the family")
            order = "channel-major"
        self.expect("RESHAPE", what="the flatten")
        return order

    def dense(self, what: str) -> tuple[int, tuple[np.ndarray, np.ndarray], str | None]:
        """A FULLY_CONNECTED op: its index, (weights, bias) and fused activation letter (None: none)."""
        k, name, op = self.expect("FULLY_CONNECTED", what=what)
        w = self.g.const(int(op.inputs[1]), f"op {k} FULLY_CONNECTED's weights")
        if w is None or w.ndim != 2:
            self.g.fail(f"op {k} FULLY_CONNECTED has no constant 2-D weights")
        b = self.g.const(int(op.inputs[2]), f"op {k} FULLY_CONNECTED's bias") if len(op.inputs) > 2 else None
        return k, (w, np.zeros(w.shape[0], np.float32) if b is None else b.reshape(-1)), _fused(self.g, k, name, op)

    def hidden_dense(self) -> tuple[tuple[np.ndarray, np.ndarray], str]:
        """FC1 and its activation letter."""
        _, fc1, act = self.dense("FC1")
        if act is None:
            act = self.activation("FC1's activation")
        return fc1, act

    def logits(self) -> tuple[np.ndarray, np.ndarray]:
        """FC2, without an activation."""
        k, fc2, act = self.dense("FC2")
        if act is not None:
            self.g.fail(f"op {k} FULLY_CONNECTED (the logits) has a fused ReLU")
        return fc2

    def softmax(self) -> bool:
        """Whether a SOFTMAX (of beta 1) follows the logits."""
        if self.peek() != "SOFTMAX":
            return False
        k, _, op = self.take()
        if abs(op.builtinOptions.beta - 1.0) > 1e-7:
            self.g.fail(f"op {k} SOFTMAX has beta {op.builtinOptions.beta}, not 1")
        return True

    def end(self) -> None:
        """Refuses any op after the logits and the SOFTMAX."""
        if self.pos != len(self.chain):
            self.g.fail(f"op {self.chain[self.pos][0]} {self.peek()} follows the logits; its ops are "
                        f"{' '.join(self.names)}")


def _spec(g: _Graph, layers: _Layers):
    """The CNNSpec of the layers, and the shape (C, H, W) of the pooled map FC1 reads."""
    from lcasc.models import graph
    from lcasc.models.cnn import CNNSpec

    c1, c2, c3 = (conv.kernel.shape[0] for conv in layers.convs)
    (fc1, _), (fc2, _) = layers.fc1, layers.fc2
    try:
        spec = CNNSpec(c1=c1, c2=c2, c3=c3, dense=fc1.shape[0], kernel_size=layers.convs[0].kernel.shape[1],
                       activations="".join(conv.act for conv in layers.convs) + layers.fc1_act,
                       n_classes=fc2.shape[0], n_mels=layers.n_mels, n_frames=layers.n_frames,
                       pool1=layers.pools[0], pool2=layers.pools[1])
        channels, fh, fw = graph.flattened_map(spec)
    except ValueError as e:
        g.fail(str(e))
    if fc1.shape[1] != channels * fh * fw or fc2.shape[1] != spec.dense:
        g.fail(f"the dense layers take {fc1.shape[1]} and {fc2.shape[1]} inputs; the pooled map "
               f"has {fh}x{fw}x{channels} = {channels * fh * fw} and FC1 {spec.dense} units")
    return spec, (channels, fh, fw)


def _state_dict(layers: _Layers, pooled: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """LowComplexityCNN's parameters from the layers: kernels OHWI -> OIHW, BatchNorm as its affine part over
    mean 0 and variance 1, FC1's columns in PyTorch's channel-major order of the ``pooled`` (C, H, W) map."""
    state = {}
    for n, conv in enumerate(layers.convs, 1):
        state[f"conv{n}.weight"] = conv.kernel.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        state[f"conv{n}.bias"] = conv.bias
        state[f"bn{n}.weight"], state[f"bn{n}.bias"] = conv.scale, conv.shift
        state[f"bn{n}.running_mean"] = np.zeros_like(conv.scale)
        state[f"bn{n}.running_var"] = np.full_like(conv.scale, _IDENTITY_VAR)
    channels, fh, fw = pooled
    fc1, fc1_bias = layers.fc1
    if layers.flatten == "channel-last":  # columns (h, w, c) -> PyTorch's (c, h, w)
        fc1 = fc1.reshape(-1, fh, fw, channels).transpose(0, 3, 1, 2).reshape(fc1.shape[0], -1)
    state["fc1.weight"], state["fc1.bias"] = fc1, fc1_bias
    state["fc2.weight"], state["fc2.bias"] = layers.fc2
    return state


def read_tflite(data: bytes, where: str = "file") -> Imported:
    """The network of a float32 .tflite flatbuffer ``data`` of the family (``where``: the file, for errors)."""
    import torch

    from lcasc.models.cnn import LowComplexityCNN

    g = _Graph(data, where)
    layers = _Parser(g).layers()
    spec, pooled = _spec(g, layers)
    net = LowComplexityCNN.from_spec(spec).eval()
    own = net.state_dict()
    with torch.no_grad():
        for key, value in _state_dict(layers, pooled).items():
            own[key].copy_(torch.from_numpy(np.ascontiguousarray(value, np.float32)))
    return Imported(net, layers.softmax, layers.bn, layers.flatten, layers.ops)


def keras_to_tflite(path: Path) -> bytes:
    """The float32 TFLite flatbuffer of a Keras model file (its BatchNorm folded by the converter)."""
    from lcasc.export.tflite import convert_keras, tf_keras

    keras = tf_keras()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds for an unreadable file
        raise NotInFamily(f"{path}: Keras cannot load it ({type(e).__name__}: {e})") from None
    return convert_keras(model, None)


def read_network(path: str | os.PathLike) -> Imported:
    """The network of a float ``.tflite`` file, or of a Keras ``.h5`` / ``.keras`` file (converted first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = keras_to_tflite(path) if path.suffix.lower() in KERAS_SUFFIXES else path.read_bytes()
    return read_tflite(data, str(path))


# ----------------------------------------------------------------------------------------------------------
# the run directory


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_network(path: str | os.PathLike, out: str | os.PathLike, classes: list[str] | None = None,
                   dataset: str | None = None, layout: str | None = None, validation: str = "holdout",
                   progress: bool = False) -> dict:
    """Import the network of ``path`` into the run directory ``out`` as its ``unpruned`` network; returns the
    ``imported`` record of results.json.

    ``classes``: the file's output order (default TAU22's). With ``dataset``, the run is on that dataset: its
    classes must be the same set, and the last layer's rows are put in the dataset's order (lcasc's labels
    index the dataset's sorted class list). Without one, the run's config names no dataset (the embedded
    ESC-10 default): predict works, evaluating needs the run imported again with ``dataset``.
    Refuses a directory that holds another run (a different file or settings).
    """
    from lcasc.models.cnn import CNNClassifier
    from lcasc.run import RunConfig

    path = Path(path).expanduser().resolve()
    classes = _class_names(classes)
    found = read_network(path)
    net, spec = found.net, found.net.spec
    _check_fits_lcasc(path, spec, classes)
    if dataset is not None:
        classes = _to_dataset_order(net, classes, dataset, layout, validation)
    out = Path(out).expanduser()
    sha = _sha256(path)
    _refuse_another_run(out, sha)
    config = RunConfig(dataset=str(Path(dataset).expanduser().resolve()) if dataset else None, layout=layout,
                       validation=validation, widths=spec.widths, kernel_size=spec.kernel_size,
                       activations=spec.activations)
    run_dir = _run_dir(out, config, dataset is not None, progress)
    CNNClassifier(classes, net=net).save(run_dir / "models" / UNPRUNED)
    record = {"file": path.name, "path": str(path), "sha256": sha, "format": "keras" if path.suffix.lower()
              in KERAS_SUFFIXES else "tflite", "network": UNPRUNED, "widths": spec.widths,
              "kernel_size": spec.kernel_size, "activations": spec.activations, "pool1": list(spec.pool1),
              "pool2": list(spec.pool2), **found.describe()}
    _record_results(run_dir, classes, record)
    log.info("import: %s (%s) -> %s", path.name, spec.widths, run_dir / "models" / UNPRUNED)
    return record


def _class_names(classes: list[str] | None) -> list[str]:
    """The file's class order as given (default TAU22's), refused unless distinct and non-empty."""
    classes = list(TAU22_CLASSES if classes is None else classes)
    if len(set(classes)) != len(classes) or not all(classes):
        raise ValueError(f"--classes must be distinct non-empty names, got {','.join(classes)}")
    return classes


def _check_fits_lcasc(path: Path, spec, classes: list[str]) -> None:
    """Refuses a network with another number of outputs than ``classes``, or another input than lcasc's log-mel."""
    from lcasc.logmel import FeatureParams

    if spec.n_classes != len(classes):
        raise NotInFamily(f"{path}: {spec.n_classes} outputs, but {len(classes)} classes were given "
                          f"({','.join(classes)})")
    params = FeatureParams()
    if (spec.n_mels, spec.n_frames) != (params.n_mels, params.n_frames):
        raise NotInFamily(f"{path}: its input is {spec.n_mels} x {spec.n_frames}, lcasc's log-mel is "
                          f"{params.n_mels} x {params.n_frames}")


def _to_dataset_order(net, classes: list[str], dataset: str, layout: str | None, validation: str) -> list[str]:
    """The dataset's classes, after putting the rows of ``net``'s last layer (in the file's order ``classes``) in
    the dataset's order; refuses a dataset with other classes."""
    from lcasc.data import load_dataset

    ds_classes = load_dataset(dataset, layout, validation).classes
    if set(ds_classes) != set(classes):
        raise ValueError(f"the dataset's classes ({', '.join(ds_classes)}) are not the network's "
                         f"({', '.join(classes)}); give the file's class order with --classes")
    order = [classes.index(c) for c in ds_classes]
    if order != list(range(len(classes))):
        import torch

        with torch.no_grad():
            net.fc2.weight.copy_(net.fc2.weight[order].clone())
            net.fc2.bias.copy_(net.fc2.bias[order].clone())
        log.info("import: outputs reordered from the file's class order to the dataset's")
    return list(ds_classes)


def _refuse_another_run(out: Path, sha: str) -> None:
    """Refuses ``out`` when it holds a trained network, or a network imported from another file than ``sha``'s."""
    from lcasc.io import read_json
    from lcasc.run import RunError

    old = read_json(out / "results.json")
    if old is not None and (old.get("imported") or {}).get("sha256") != sha:
        held = "another imported file" if old.get("imported") else "a trained network"
        raise RunError(f"{out.resolve()} already holds a run ({held}); use another --out, or delete the folder "
                       "to start over")
    if old is None and (out / "models" / UNPRUNED / "model.pt").is_file():
        raise RunError(f"{out.resolve()} already holds a trained network; use another --out")


def _run_dir(out: Path, config, on_dataset: bool, progress: bool) -> Path:
    """The run directory ``out`` with ``config`` saved (through a Run when it is ``on_dataset``); refuses one
    saved with other settings."""
    from lcasc.io import write_yaml
    from lcasc.run import Run, RunConfig, RunError

    if on_dataset:
        return Run(out, config, progress=progress).dir  # refuses a directory with other settings
    # no dataset to open a Run on (the default one's classes are not the network's): the config alone
    import yaml

    run_dir = out.resolve()
    saved = run_dir / "config.yaml"
    if saved.is_file() and RunConfig.from_dict(yaml.safe_load(saved.read_text())).to_dict() != config.to_dict():
        raise RunError(f"{run_dir} holds a run with different settings; use another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(saved, config.to_dict())
    return run_dir


def _record_results(run_dir: Path, classes: list[str], record: dict) -> None:
    """results.json with the run's classes and the ``imported`` record (its other entries kept)."""
    from lcasc.io import read_json, write_json

    res = read_json(run_dir / "results.json") or {}
    res.update(classes=classes, imported=record)
    res.setdefault("networks", [])
    res.setdefault("ensembles", [])
    write_json(run_dir / "results.json", res)
