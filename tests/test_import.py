"""`lcasc import`: float TFLite / Keras networks of the family read back into lcasc networks and run directories.

The files are made here from lcasc networks (seeded weights, non-trivial BatchNorm statistics): through the
Keras mirror (BatchNorm folded, channel-last flatten), and variants a converter from elsewhere might write
(a TRANSPOSE to channel-major before the flatten, a final SOFTMAX, BatchNorm left as MUL / ADD ops). The
imported network must compute what the file computes in LiteRT to 1e-5.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from lcasc.cli import main
from lcasc.models.cnn import CNNSpec, LowComplexityCNN
from lcasc.names import TAU22_CLASSES

from .conftest import make_csv_dataset, real_clips

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_MISSING = [m for m in ("tensorflow", "tflite_micro") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"TFLite extras not installed: {_MISSING}")

TOL = 1e-5


def network(spec: CNNSpec, seed: int = 0) -> LowComplexityCNN:
    """Seeded weights, BatchNorm with non-trivial statistics and affine parameters, eval mode."""
    torch.manual_seed(seed)
    net = LowComplexityCNN.from_spec(spec)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2, net.bn3):
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return net.eval()


def logmel(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-6, 3, (n, 40, 51)).astype(np.float32)


def litert(path, X: np.ndarray) -> np.ndarray:
    """The file's outputs in LiteRT (TensorFlow's interpreter) for (N, 40, 51) clips."""
    import warnings

    from lcasc.runtimes import tensorflow

    tf = tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        it = tf.lite.Interpreter(model_path=str(path))
    i_in = it.get_input_details()[0]["index"]
    it.resize_tensor_input(i_in, (len(X), 40, 51, 1))
    it.allocate_tensors()
    it.set_tensor(i_in, X[..., None])
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def imported_outputs(found, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = found.net(torch.from_numpy(X))
    return (torch.softmax(logits, 1) if found.softmax else logits).numpy()


def mirror_file(net: LowComplexityCNN, path) -> None:
    from lcasc.export.tflite import export_tflite_float

    export_tflite_float(net, path)


def foreign_file(net: LowComplexityCNN, path) -> None:
    """A file as a converter from PyTorch might write it: channel-major flatten (TRANSPOSE before RESHAPE)
    with PyTorch's column order, fused Dense activation absent, a final softmax."""
    from lcasc.export.tflite import convert_keras, keras_layer, keras_weights, tf_keras
    from lcasc.models import graph

    keras = tf_keras()
    x = inputs = keras.Input((40, 51, 1))
    for node in graph.nodes(net.spec):
        if node.kind == "flatten":
            x = keras.layers.Permute((3, 1, 2))(x)
        x = keras_layer(keras, node)(x)
    x = keras.layers.Softmax()(x)
    model = keras.Model(inputs, x)
    for node in graph.nodes(net.spec):
        if node.kind in ("conv", "bn", "dense"):
            model.get_layer(node.attr).set_weights(keras_weights(getattr(net, node.attr), node.attr))
    path.write_bytes(convert_keras(model, None))


def with_separate_bn(src, dst, seed: int = 0) -> None:
    """``src`` with a per-channel MUL and ADD (a BatchNorm the converter did not fold) after every CONV_2D; a
    ReLU fused into the convolution moves to the ADD."""
    import flatbuffers
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    model = runtime.convert_bytearray_to_object(bytearray(src.read_bytes()))
    g = model.subgraphs[0]
    rng = np.random.default_rng(seed)

    def opcode(code):
        for i, c in enumerate(model.operatorCodes):
            if runtime.get_builtin_code_from_operator_code(c) == code:
                return i
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        model.operatorCodes.append(c)
        return len(model.operatorCodes) - 1

    def tensor(shape, name, data=None):
        t = s.TensorT()
        t.shape, t.type, t.name = list(shape), s.TensorType.FLOAT32, name.encode()
        b = s.BufferT()
        b.data = None if data is None else np.frombuffer(data.astype(np.float32).tobytes(), np.uint8)
        model.buffers.append(b)
        t.buffer = len(model.buffers) - 1
        g.tensors.append(t)
        return len(g.tensors) - 1

    ops, conv = [], s.BuiltinOperator.CONV_2D
    for op in g.operators:
        ops.append(op)
        if runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]) != conv:
            continue
        y = int(op.outputs[0])
        shape, c = list(g.tensors[y].shape), int(g.tensors[y].shape[-1])
        relu, op.builtinOptions.fusedActivationFunction = op.builtinOptions.fusedActivationFunction, 0
        scaled, shifted = tensor(shape, f"bn{y}/mul"), tensor(shape, f"bn{y}/add")
        for later in g.operators:  # the consumers of the convolution now read the BatchNorm's output
            later.inputs = [shifted if int(v) == y else int(v) for v in later.inputs]
        mul, add = s.OperatorT(), s.OperatorT()
        mul.opcodeIndex, mul.inputs, mul.outputs = opcode(s.BuiltinOperator.MUL), [y, tensor(
            [c], f"bn{y}/scale", rng.uniform(0.5, 1.5, c))], [scaled]
        mul.builtinOptionsType, mul.builtinOptions = s.BuiltinOptions.MulOptions, s.MulOptionsT()
        add.opcodeIndex, add.inputs, add.outputs = opcode(s.BuiltinOperator.ADD), [scaled, tensor(
            [c], f"bn{y}/shift", rng.uniform(-0.5, 0.5, c))], [shifted]
        add.builtinOptionsType, add.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
        add.builtinOptions.fusedActivationFunction = relu
        ops += [mul, add]
    g.operators = ops
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))


SPECS = {
    "paper": CNNSpec(),
    "narrow-k5-relu": CNNSpec(c1=6, c2=10, c3=12, dense=24, kernel_size=5, activations="RRRR"),
    "k1-mixed-7-classes": CNNSpec(c1=5, c2=3, c3=9, dense=11, kernel_size=1, activations="RTRT", n_classes=7),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_the_keras_mirrors_file_imports_exactly(tmp_path, name):
    from lcasc.importer import read_network

    spec = SPECS[name]
    net = network(spec, seed=len(name))
    path = tmp_path / "net.tflite"
    mirror_file(net, path)
    found = read_network(path)
    assert found.net.spec == spec
    assert (found.bn, found.flatten, found.softmax) == ("folded", "channel-last", False)
    X = logmel(8)
    diff = np.abs(imported_outputs(found, X) - litert(path, X)).max()
    assert diff < TOL, diff
    with torch.no_grad():  # and the original network, as far as the converter's BN folding allows
        np.testing.assert_allclose(imported_outputs(found, X), net(torch.from_numpy(X)).numpy(), atol=1e-4)


def test_channel_major_flatten_softmax_and_separate_batchnorm(tmp_path):
    from lcasc.importer import read_network

    net = network(CNNSpec(c1=7, c2=9, c3=11, dense=13, kernel_size=3, activations="TRTR"), seed=3)
    foreign, separate = tmp_path / "foreign.tflite", tmp_path / "separate.tflite"
    foreign_file(net, foreign)
    with_separate_bn(foreign, separate, seed=4)
    X = logmel(6, seed=1)
    for path, bn in ((foreign, "folded"), (separate, "separate")):
        found = read_network(path)
        assert (found.bn, found.flatten, found.softmax) == (bn, "channel-major", True), found.describe()
        assert found.net.spec.widths == "7-9-11-13" and found.net.spec.activations == "TRTR"
        diff = np.abs(imported_outputs(found, X) - litert(path, X)).max()
        assert diff < TOL, (path.name, diff)
    # the separate BatchNorm changed the function: the file is not the foreign one
    assert not np.allclose(litert(foreign, X), litert(separate, X), atol=1e-3)


def test_keras_h5_file(tmp_path):
    from lcasc.export.tflite import keras_layer, keras_weights, tf_keras
    from lcasc.importer import read_network
    from lcasc.models import graph

    net = network(CNNSpec(c1=4, c2=4, c3=6, dense=8), seed=5)
    keras = tf_keras()
    x = inputs = keras.Input((40, 51, 1))
    for node in graph.nodes(net.spec):
        x = keras.layers.Flatten()(x) if node.kind == "flatten" else keras_layer(keras, node)(x)
    model = keras.Model(inputs, x)
    for i, node in enumerate(graph.nodes(net.spec)):
        if node.kind in ("conv", "bn", "dense"):
            flat = graph.nodes(net.spec)[i - 1].in_shape if node.name == "FC1" else None
            model.get_layer(node.attr).set_weights(keras_weights(getattr(net, node.attr), node.attr, flat))
    path = tmp_path / "net.h5"
    model.save(path)
    found = read_network(path)
    X = logmel(4, seed=2)
    expected = model.predict(X[..., None], verbose=0)
    diff = np.abs(imported_outputs(found, X) - expected).max()
    assert diff < TOL, diff


def test_files_outside_the_family_are_refused_in_one_line(tmp_path):
    from lcasc.export.tflite import convert_keras, tf_keras
    from lcasc.importer import NotInFamily, read_network

    keras = tf_keras()
    x = inputs = keras.Input((40, 51, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    path = tmp_path / "other.tflite"
    path.write_bytes(convert_keras(model, None))
    with pytest.raises(NotInFamily, match=r"other\.tflite: .*MAX_POOL_2D|other\.tflite: .*CONV_2D") as e:
        read_network(path)
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(NotInFamily, match="junk.tflite: not a readable .tflite file"):
        read_network(junk)
    int8 = tmp_path / "int8.tflite"
    from lcasc.export.tflite import export_tflite_int8

    export_tflite_int8(network(CNNSpec(c1=2, c2=2, c3=2, dense=4)), logmel(4), int8)
    with pytest.raises(NotInFamily, match="int8.tflite: its input is INT8, not float32"):
        read_network(int8)


def test_cli_import_evaluate_and_predict(tmp_path, capsys):
    from lcasc.registry import resolve

    csv_path = make_csv_dataset(tmp_path / "ds", per_class=1)
    classes = sorted({label for _, label in real_clips(1, "train")})  # the dataset's order
    file_order = classes[::-1]  # the file's outputs in another order
    net = network(CNNSpec(c1=4, c2=4, c3=8, dense=12, n_classes=len(classes)), seed=6)
    path = tmp_path / "net.tflite"
    mirror_file(net, path)
    out = tmp_path / "run"

    # without a dataset: predict works, evaluate says what to do
    bare = tmp_path / "bare"
    assert main(["-q", "import", str(path), "--classes", ",".join(file_order), "--out", str(bare)]) == 0
    clip = real_clips(1, "test")[0][0]
    capsys.readouterr()
    assert main(["-q", "predict", "--run", str(bare), "--format", "json", str(clip)]) == 0
    bare_probs = json.loads(capsys.readouterr().out)
    assert main(["-q", "import", str(path), "--classes", ",".join(file_order), "--out", str(bare)]) == 0  # again
    assert main(["-q", "evaluate", "--run", str(bare)]) == 2
    assert "import it again with --dataset" in capsys.readouterr().err

    assert main(["-q", "import", str(path), "--classes", ",".join(file_order), "--out", str(out), "--dataset",
                 str(csv_path)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["classes"] == classes and res["imported"]["file"] == "net.tflite"
    assert len(res["imported"]["sha256"]) == 64 and res["imported"]["widths"] == "4-4-8-12"
    # the run's network outputs the dataset's order: the file's rows reversed
    X = logmel(3, seed=3)
    mine = resolve(out, "unpruned", "torch").classifier.predict_proba(X)
    theirs = torch.softmax(torch.from_numpy(litert(path, X)), 1).numpy()[:, ::-1]
    assert np.abs(mine - theirs).max() < TOL

    assert main(["-q", "import", str(path), "--classes", ",".join(file_order), "--out", str(out), "--dataset",
                 str(csv_path)]) == 0  # the same import again: nothing changes
    capsys.readouterr()
    assert main(["-q", "evaluate", "--run", str(out)]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["name"] == "unpruned" and entry["widths"] == "4-4-8-12" and 0 <= entry["accuracy"] <= 1
    assert main(["-q", "predict", "--run", str(out), "--format", "json", str(clip)]) == 0
    (first,), (bare_first,) = json.loads(capsys.readouterr().out), bare_probs
    assert first["scene_label"] == bare_first["scene_label"]  # same network, the class names follow it
    for c in classes:
        assert abs(first["probabilities"][c] - bare_first["probabilities"][c]) < TOL

    other = tmp_path / "other.tflite"
    mirror_file(network(net.spec, seed=7), other)
    assert main(["-q", "import", str(other), "--classes", ",".join(file_order), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["-q", "import", str(path), "--classes", "a,b,c", "--out", str(tmp_path / "x")]) == 2
    assert "net.tflite: 10 outputs, but 3 classes were given" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # the default class order is TAU22's: the file's ten outputs are named after its scenes
    assert main(["-q", "import", str(path), "--out", str(tmp_path / "tau")]) == 0
    assert json.loads((tmp_path / "tau" / "results.json").read_text())["classes"] == list(TAU22_CLASSES)
