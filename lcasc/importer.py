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


def read_tflite(data: bytes, where: str = "file") -> Imported:
    """The network of a float32 .tflite flatbuffer ``data`` of the family (``where``: the file, for errors)."""
    import torch

    from lcasc.models.cnn import CNNSpec, LowComplexityCNN

    g = _Graph(data, where)
    chain = g.chain()
    names = [n for _, n, _ in chain]
    pos = 0

    def peek() -> str | None:
        return chain[pos][1] if pos < len(chain) else None

    def expect(*allowed: str, what: str):
        nonlocal pos
        if peek() not in allowed:
            found = f"op {chain[pos][0]} {chain[pos][1]}" if pos < len(chain) else "the end of the graph"
            g.fail(f"{found} where {what} should be ({' or '.join(allowed)}); its ops are {' '.join(names)}")
        pos += 1
        return chain[pos - 1]

    shape_in = g.shape(int(g.graph.inputs[0]))
    if len(shape_in) == 3 and peek() in ("RESHAPE", "EXPAND_DIMS"):  # (N, mels, frames) -> (N, mels, frames, 1)
        pos += 1
        shape_in = [*shape_in, 1]
    if len(shape_in) != 4 or shape_in[3] != 1:
        g.fail(f"its input is {shape_in}, expected (batch, mel bands, frames, 1)")
    n_mels, n_frames = shape_in[1], shape_in[2]

    convs, bns, acts, pools, bn_kinds = [], [], [], [], set()
    for c in range(3):
        k, name, op = expect("CONV_2D", what=f"C{c + 1}")
        w = g.const(int(op.inputs[1]), f"op {k} CONV_2D's kernel")
        if w is None or w.ndim != 4:
            g.fail(f"op {k} CONV_2D has no constant kernel")
        cout, kh, kw, cin = w.shape
        o = op.builtinOptions
        if (o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor) != (1, 1, 1, 1) or o.padding != 0 \
                or kh != kw or kh % 2 == 0:
            g.fail(f"op {k} CONV_2D is {kh}x{kw}, stride {o.strideH}x{o.strideW}, dilation {o.dilationHFactor}x"
                   f"{o.dilationWFactor}, padding {'same' if o.padding == 0 else 'valid'}; the family's are odd "
                   f"k x k, stride 1, 'same'")
        if convs and (kh != convs[0][0].shape[1] or cin != convs[-1][0].shape[0]):
            g.fail(f"op {k} CONV_2D is {kh}x{kw} over {cin} channels after a {convs[0][0].shape[1]}x"
                   f"{convs[0][0].shape[1]} convolution of {convs[-1][0].shape[0]} (one kernel size, chained widths)")
        if not convs and cin != 1:
            g.fail(f"op {k} CONV_2D reads {cin} channels, the log-mel is one")
        b = g.const(int(op.inputs[2]), f"op {k} CONV_2D's bias") if len(op.inputs) > 2 else None
        convs.append((w, np.zeros(cout, np.float32) if b is None else b.reshape(cout)))
        act = _fused(g, k, name, op)
        scale, shift = np.ones(cout, np.float32), np.zeros(cout, np.float32)
        while act is None and peek() in ("MUL", "ADD"):  # BatchNorm the converter did not fold: x * s + t
            k, name, op = chain[pos]
            pos += 1
            ins = [int(v) for v in op.inputs]
            const = [g.const(i, f"op {k} {name}'s operand") for i in ins]
            vec = next((v for v in const if v is not None), None)
            if vec is None or vec.size not in (1, cout) or (vec.ndim > 1 and vec.shape[-1] != vec.size):
                g.fail(f"op {k} {name} is not a per-channel constant {name.lower()} (a BatchNorm after C{c + 1})")
            vec = np.broadcast_to(vec.reshape(-1), (cout,)).astype(np.float32)
            scale, shift = (scale * vec, shift * vec) if name == "MUL" else (scale, shift + vec)
            bn_kinds.add("separate")
            act = _fused(g, k, name, op)
        if act is None:
            k, name, op = expect("TANH", "RELU", what=f"C{c + 1}'s activation")
            act = "T" if name == "TANH" else "R"
        bns.append((scale, shift))
        acts.append(act)
        if c >= 1:
            if peek() == "MAX_POOL_2D":
                g.fail(f"op {chain[pos][0]} MAX_POOL_2D: the family pools by averaging")
            k, name, op = expect("AVERAGE_POOL_2D", what=f"P{c}")
            o = op.builtinOptions
            if (o.strideH, o.strideW) != (o.filterHeight, o.filterWidth) or o.padding != 1 or _fused(g, k, name, op):
                g.fail(f"op {k} AVERAGE_POOL_2D is not 'valid' pooling with stride = window")
            pools.append((int(o.filterHeight), int(o.filterWidth)))
    flatten = "channel-last"
    if peek() == "TRANSPOSE":
        k, _, op = chain[pos]
        perm = g.const(int(op.inputs[1]), f"op {k} TRANSPOSE's permutation")
        if perm is None or perm.reshape(-1).tolist() != [0, 3, 1, 2]:
            g.fail(f"op {k} TRANSPOSE permutes {None if perm is None else perm.reshape(-1).tolist()}, only "
                   "[0, 3, 1, 2] (to channel-major before the flatten) is in the family")
        flatten, pos = "channel-major", pos + 1
    expect("RESHAPE", what="the flatten")
    dense = []
    for d in range(2):
        k, name, op = expect("FULLY_CONNECTED", what="FC1" if d == 0 else "FC2")
        w = g.const(int(op.inputs[1]), f"op {k} FULLY_CONNECTED's weights")
        if w is None or w.ndim != 2:
            g.fail(f"op {k} FULLY_CONNECTED has no constant 2-D weights")
        b = g.const(int(op.inputs[2]), f"op {k} FULLY_CONNECTED's bias") if len(op.inputs) > 2 else None
        dense.append((w, np.zeros(w.shape[0], np.float32) if b is None else b.reshape(-1)))
        act = _fused(g, k, name, op)
        if d == 0:
            if act is None:
                k, name, op = expect("TANH", "RELU", what="FC1's activation")
                act = "T" if name == "TANH" else "R"
            acts.append(act)
        elif act is not None:
            g.fail(f"op {k} FULLY_CONNECTED (the logits) has a fused ReLU")
    softmax = peek() == "SOFTMAX"
    if softmax:
        k, _, op = chain[pos]
        if abs(op.builtinOptions.beta - 1.0) > 1e-7:
            g.fail(f"op {k} SOFTMAX has beta {op.builtinOptions.beta}, not 1")
        pos += 1
    if pos != len(chain):
        g.fail(f"op {chain[pos][0]} {chain[pos][1]} follows the logits; its ops are {' '.join(names)}")

    (w1, _), (w2, _), (w3, _) = convs
    try:
        spec = CNNSpec(c1=w1.shape[0], c2=w2.shape[0], c3=w3.shape[0], dense=dense[0][0].shape[0],
                       kernel_size=w1.shape[1], activations="".join(acts), n_classes=dense[1][0].shape[0],
                       n_mels=n_mels, n_frames=n_frames, pool1=pools[0], pool2=pools[1])
        from lcasc.models import graph

        c3, fh, fw = graph.flattened_map(spec)
    except ValueError as e:
        g.fail(str(e))
    if dense[0][0].shape[1] != c3 * fh * fw or dense[1][0].shape[1] != spec.dense:
        g.fail(f"the dense layers take {dense[0][0].shape[1]} and {dense[1][0].shape[1]} inputs; the pooled map "
               f"has {fh}x{fw}x{c3} = {c3 * fh * fw} and FC1 {spec.dense} units")
    net = LowComplexityCNN.from_spec(spec).eval()
    state = {}
    for (w, b), (scale, shift), attr, bn in zip(convs, bns, ("conv1", "conv2", "conv3"), ("bn1", "bn2", "bn3"),
                                                strict=True):
        state[f"{attr}.weight"] = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        state[f"{attr}.bias"] = b
        state[f"{bn}.weight"], state[f"{bn}.bias"] = scale, shift
        state[f"{bn}.running_mean"] = np.zeros_like(scale)
        state[f"{bn}.running_var"] = np.full_like(scale, _IDENTITY_VAR)
    fc1 = dense[0][0]
    if flatten == "channel-last":  # columns (h, w, c) -> PyTorch's (c, h, w)
        fc1 = fc1.reshape(-1, fh, fw, c3).transpose(0, 3, 1, 2).reshape(fc1.shape[0], -1)
    state["fc1.weight"], state["fc1.bias"] = fc1, dense[0][1]
    state["fc2.weight"], state["fc2.bias"] = dense[1]
    own = net.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(torch.from_numpy(np.ascontiguousarray(value, np.float32)))
    return Imported(net, softmax, "separate" if bn_kinds else "folded", flatten, names)


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
    from lcasc.data import load_dataset
    from lcasc.io import read_json, write_json, write_yaml
    from lcasc.models.cnn import CNNClassifier
    from lcasc.run import Run, RunConfig, RunError

    path = Path(path).expanduser().resolve()
    classes = list(TAU22_CLASSES if classes is None else classes)
    if len(set(classes)) != len(classes) or not all(classes):
        raise ValueError(f"--classes must be distinct non-empty names, got {','.join(classes)}")
    found = read_network(path)
    net, spec = found.net, found.net.spec
    if spec.n_classes != len(classes):
        raise NotInFamily(f"{path}: {spec.n_classes} outputs, but {len(classes)} classes were given "
                          f"({','.join(classes)})")
    from lcasc.logmel import FeatureParams

    params = FeatureParams()
    if (spec.n_mels, spec.n_frames) != (params.n_mels, params.n_frames):
        raise NotInFamily(f"{path}: its input is {spec.n_mels} x {spec.n_frames}, lcasc's log-mel is "
                          f"{params.n_mels} x {params.n_frames}")
    if dataset is not None:
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
        classes = list(ds_classes)
    out = Path(out).expanduser()
    sha = _sha256(path)
    old = read_json(out / "results.json")
    if old is not None and (old.get("imported") or {}).get("sha256") != sha:
        held = "another imported file" if old.get("imported") else "a trained network"
        raise RunError(f"{out.resolve()} already holds a run ({held}); use another --out, or delete the folder "
                       "to start over")
    if old is None and (out / "models" / UNPRUNED / "model.pt").is_file():
        raise RunError(f"{out.resolve()} already holds a trained network; use another --out")
    config = RunConfig(dataset=str(Path(dataset).expanduser().resolve()) if dataset else None, layout=layout,
                       validation=validation, widths=spec.widths, kernel_size=spec.kernel_size,
                       activations=spec.activations)
    if dataset is not None:
        run_dir = Run(out, config, progress=progress).dir  # refuses a directory with other settings
    else:  # no dataset to open a Run on (the default one's classes are not the network's): the config alone
        import yaml

        run_dir = out.resolve()
        saved = run_dir / "config.yaml"
        if saved.is_file() and RunConfig.from_dict(yaml.safe_load(saved.read_text())).to_dict() != config.to_dict():
            raise RunError(f"{run_dir} holds a run with different settings; use another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(saved, config.to_dict())
    CNNClassifier(classes, net=net).save(run_dir / "models" / UNPRUNED)
    record = {"file": path.name, "path": str(path), "sha256": sha, "format": "keras" if path.suffix.lower()
              in KERAS_SUFFIXES else "tflite", "network": UNPRUNED, "widths": spec.widths,
              "kernel_size": spec.kernel_size, "activations": spec.activations, "pool1": list(spec.pool1),
              "pool2": list(spec.pool2), **found.describe()}
    res = read_json(run_dir / "results.json") or {}
    res.update(classes=classes, imported=record)
    res.setdefault("networks", [])
    res.setdefault("ensembles", [])
    write_json(run_dir / "results.json", res)
    log.info("import: %s (%s) -> %s", path.name, spec.widths, run_dir / "models" / UNPRUNED)
    return record
