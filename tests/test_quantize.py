"""INT8 / float export (TFLite for TFLite Micro, ONNX) and the runners behind the classifier interface.

The networks are trained for a few hundred steps on synthetic log-mel with class-dependent spectral
bumps under heavy noise (float accuracy around 80 %, so the probabilities are not saturated and the
INT8-vs-float comparison means something). Everything is seeded.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lcasc import int8, metrics, runtimes
from lcasc.classifier import Classifier
from lcasc.export import onnx as onnx_export
from lcasc.export import tflite as tflite_export
from lcasc.models.cnn import CNNSpec, LowComplexityCNN

from .conftest import adam_steps, synthetic_logmel

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_MISSING = [m for m in ("tensorflow", "tflite_micro", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"INT8 export extras not installed: {_MISSING}")

N_CLASSES = 10
CLASSES = [f"scene{i}" for i in range(N_CLASSES)]


def train(spec: CNNSpec, X: np.ndarray, y: np.ndarray, steps: int, seed: int = 0) -> LowComplexityCNN:
    """A few hundred Adam steps (batch 32) from a seeded initialisation; returns the network in eval mode."""
    torch.manual_seed(seed)
    return adam_steps(LowComplexityCNN.from_spec(spec), X, y, steps, seed, lr=3e-3)


def float_proba(net: LowComplexityCNN, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(X)), dim=1).numpy()


@pytest.fixture(scope="module")
def data():
    X_train, y_train = synthetic_logmel(800, seed=0)
    X_test, y_test = synthetic_logmel(200, seed=1)
    return X_train, y_train, X_test, y_test


@pytest.fixture(scope="module")
def net(data):
    X_train, y_train, _, _ = data
    return train(CNNSpec(), X_train, y_train, steps=200)


@pytest.fixture(scope="module")
def int8_file(net, data, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "model_int8.tflite"
    info = tflite_export.export_tflite_int8(net, data[0], path)
    return path, info


@pytest.fixture(scope="module")
def tflm(int8_file):
    return runtimes.TFLiteMicroClassifier(int8_file[0], CLASSES)


@pytest.fixture(scope="module")
def litert(int8_file):
    return runtimes.LiteRTClassifier(int8_file[0], CLASSES, reference_kernels=True)


@pytest.fixture(scope="module")
def onnx_files(net, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    float_info = onnx_export.export_onnx(net, folder / "model.onnx")
    int8_info = onnx_export.quantize_onnx_int8(folder / "model.onnx", folder / "model_int8.onnx", data[0])
    return folder / "model.onnx", folder / "model_int8.onnx", float_info, int8_info


# ----------------------------------------------------------------------------------------------- TFLite


def test_import_is_cheap():
    """Importing the INT8 writers and runners, the registry and predict loads none of TensorFlow, ONNX or TFLM
    (a core install has none of them). (The training stack is left out: Lightning itself imports ONNX Runtime
    when it is installed.)"""
    code = ("import sys, lcasc.int8, lcasc.runtimes, lcasc.export.tflite, lcasc.export.fused_tflite, "
            "lcasc.export.onnx, lcasc.registry, lcasc.predict; "
            "heavy = [m for m in ('tensorflow', 'onnxruntime', 'onnx', 'tflite_micro') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_keras_mirror_matches_torch(net, data):
    X = data[2][:16]
    mirror = tflite_export.keras_mirror(net)
    p = int8.probabilities_from_logits(mirror(X[..., None], training=False).numpy(), N_CLASSES)
    np.testing.assert_allclose(p, float_proba(net, X), atol=1e-5)


def test_int8_file_is_full_integer_with_tflm_fixed_qparams(int8_file, litert):
    path, info = int8_file
    assert info["file_bytes"] == path.stat().st_size
    assert 15_000 < info["file_bytes"] < 40_000
    interpreter = litert._interpreter
    assert litert.input_detail["dtype"] == np.int8
    assert litert.output_detail["dtype"] == np.int8
    assert list(litert.input_detail["shape"]) == [1, 40, 51, 1]
    # Read the quantization of every TANH output from the interpreter's own tensor details.
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    tanh_outputs = [tensors[int(op["outputs"][0])] for op in ops if op["op_name"] == "TANH"]
    assert len(tanh_outputs) == 3  # C1, C3, dense (activations "TRTT")
    for t in tanh_outputs:
        assert t["dtype"] == np.int8
        assert t["quantization"] == (1 / 128, 0), t["name"]
    # Weights int8, per output channel for the convolutions.
    conv_weights = [tensors[int(op["inputs"][1])] for op in ops if op["op_name"] == "CONV_2D"]
    assert [len(w["quantization_parameters"]["scales"]) for w in conv_weights] == [16, 16, 32]
    assert all(w["dtype"] == np.int8 for w in conv_weights)
    # No float op, no Permute/Transpose: the dense columns were reordered instead.
    assert [op["op_name"] for op in ops] == ["CONV_2D", "TANH", "CONV_2D", "AVERAGE_POOL_2D", "CONV_2D", "TANH",
                                             "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "TANH",
                                             "FULLY_CONNECTED"]  # ends at the logits, no int8 softmax
    assert all(t is np.int8 for op in ops for t in op["result_types"])
    assert tflite_export.fixed_qparam_violations(path) == []


def test_tflm_within_one_step_of_litert_reference(int8_file, tflm, litert, data):
    """Every TFLM kernel within 1 int8 step of LiteRT's reference kernel on identical inputs; the final
    outputs agree closely (a 1-step rounding difference in FC1 can grow through tanh and the coarse
    logit scale before the softmax, so they are allowed a few steps, on few clips)."""
    check = runtimes.compare_tflm_litert(int8_file[0], data[2])
    assert check["n"] == len(data[2])
    assert check["kernel_max_step_diff"] <= 1
    assert check["output_max_step_diff"] <= 8
    assert check["identical_fraction"] >= 0.8
    assert check["argmax_agreement"] >= 0.99
    # The runners' own int8 paths give the same outputs as the comparison's.
    Xq = tflm.quantize_input(data[2])
    np.testing.assert_array_equal(Xq, litert.quantize_input(data[2]))
    a, b = tflm.invoke_int8(Xq).astype(int), litert.invoke_raw(Xq).astype(int)
    assert np.abs(a - b).max() == check["output_max_step_diff"]


def test_int8_close_to_float(tflm, net, data):
    _, _, X_test, y_test = data
    p_float = float_proba(net, X_test)
    p_int8 = tflm.predict_proba(X_test)
    assert p_int8.shape == (len(X_test), N_CLASSES) and p_int8.dtype == np.float32
    np.testing.assert_allclose(p_int8.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(p_int8 - p_float).max() < 0.06
    assert np.abs(p_int8 - p_float).mean() < 0.005
    assert (p_int8.argmax(1) == p_float.argmax(1)).mean() >= 0.95
    acc_float, acc_int8 = (p_float.argmax(1) == y_test).mean(), (p_int8.argmax(1) == y_test).mean()
    assert acc_float > 0.6  # the network learnt something, so the comparison is not between noise
    assert abs(acc_int8 - acc_float) <= 0.02
    # Probabilities from the dequantized logits keep small true-class probabilities (an int8 softmax rounds
    # them to 0 and inflated the log-loss by 0.5-0.8 on real runs).
    ll_float, ll_int8 = (metrics.scores(p, y_test, N_CLASSES)["log_loss"] for p in (p_float, p_int8))
    assert abs(ll_int8 - ll_float) < 0.05, (ll_float, ll_int8)
    assert p_int8.min() > 0


def test_probabilities_from_logits_is_the_mean_of_member_softmaxes():
    z = np.array([[0.0, 1.0, 2.0, 5.0, 0.0, 0.0]])  # two members of three classes
    p1, p2 = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum(), np.array([np.e ** 5, 1, 1]) / (np.e ** 5 + 2)
    np.testing.assert_allclose(int8.probabilities_from_logits(z, 3), [(p1 + p2) / 2], rtol=1e-6)
    np.testing.assert_allclose(int8.probabilities_from_logits(z[:, :3], 3), [p1], rtol=1e-6)
    with pytest.raises(ValueError, match="whole members"):
        int8.probabilities_from_logits(z, 4)


def test_runners_follow_the_classifier_protocol(tflm, litert, data):
    X = data[2][:8]
    for clf in (tflm, litert):
        assert isinstance(clf, Classifier)
        assert clf.classes == CLASSES
        with pytest.raises(NotImplementedError):
            clf.fit(X, np.zeros(len(X), int))
    np.testing.assert_allclose(litert.predict_proba(X), tflm.predict_proba(X), atol=0.02)
    np.testing.assert_array_equal(tflm.predict_proba(X[:, None]), tflm.predict_proba(X))  # (N, 1, 40, 51) too
    with pytest.raises(ValueError, match="outputs"):
        runtimes.LiteRTClassifier(litert.path, CLASSES[:3])


def test_litert_batches_match_single_clips(litert, data):
    X = data[2][:10]
    batched = litert.predict_proba(X)
    single = np.concatenate([litert.predict_proba(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_array_equal(batched, single)


def test_arena_bytes_plausible(int8_file):
    path, info = int8_file
    assert info["arena_bytes"] == runtimes.arena_bytes(path)
    # 65,280 bytes are the two 40x51x16 int8 maps of C1 and C2, alive at the same time.
    assert 65_280 < info["arena_bytes"] < 75_000
    report = runtimes.tflm_allocation_report(path)
    assert report["head"] == 2 * 40 * 51 * 16
    assert report["total"] <= info["arena_bytes"] <= report["total"] + 1024
    assert not runtimes._tflm_runs(path.read_bytes(), info["arena_bytes"] - 64)
    clf = runtimes.TFLiteMicroClassifier(path, CLASSES, arena_size=info["arena_bytes"])  # the measured arena suffices
    assert clf.predict_proba(np.zeros((1, 40, 51), np.float32)).shape == (1, N_CLASSES)


def test_calibration_uses_every_segment_asked_for(int8_file, net, data, monkeypatch, tmp_path):
    """``max_samples`` above the default 500 is honoured (``lcasc quantize --calibration-segments 700``)."""
    seen = []
    good = int8_file[0].read_bytes()
    monkeypatch.setattr(tflite_export, "convert_keras",
                        lambda mirror, calibration: seen.append(len(calibration)) or good)
    tflite_export.export_tflite_int8(net, data[0][:700], tmp_path / "a.tflite", max_samples=700)
    tflite_export.export_tflite_int8(net, data[0][:700], tmp_path / "b.tflite")  # default: a fixed subset of 500
    assert seen == [700, 500]


def test_export_leaves_only_the_target(int8_file):
    path, _ = int8_file
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_failed_export_leaves_nothing(int8_file, net, data, monkeypatch, tmp_path):
    good = int8_file[0].read_bytes()
    monkeypatch.setattr(tflite_export, "convert_keras", lambda mirror, calibration: good)  # the converter export calls

    def broken(path):
        raise RuntimeError("simulated failure after the temporary file was written")

    monkeypatch.setattr(tflite_export, "arena_bytes", broken)
    target = tmp_path / "model.tflite"
    with pytest.raises(RuntimeError, match="simulated"):
        tflite_export.export_tflite_int8(net, data[0][:10], target)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous file")
    with pytest.raises(RuntimeError, match="simulated"):
        tflite_export.export_tflite_int8(net, data[0][:10], target)
    assert target.read_bytes() == b"previous file"
    assert list(tmp_path.iterdir()) == [target]


def test_wrong_tanh_quantization_is_refused_and_caught_by_tflm_comparison(int8_file, net, data, monkeypatch,
                                                                          tmp_path):
    """The TANH trap of EXPORT-NOTES: a TANH output scale other than 1/128 runs in LiteRT but TFLM computes
    it wrongly. The export refuses such a file; the TFLM-vs-LiteRT comparison would catch it too."""
    import flatbuffers
    from tflite_micro.python.tflite_micro import runtime

    model = runtime.convert_bytearray_to_object(bytearray(int8_file[0].read_bytes()))
    graph = model.subgraphs[0]
    tanh = next(op for op in graph.operators
                if runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]) == 28)
    graph.tensors[tanh.outputs[0]].quantization.scale = np.array([1 / 64], np.float32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bad = bytes(builder.Output())
    (tmp_path / "bad.tflite").write_bytes(bad)
    assert len(tflite_export.fixed_qparam_violations(tmp_path / "bad.tflite")) == 1
    assert runtimes.compare_tflm_litert(tmp_path / "bad.tflite", data[2][:20])["kernel_max_step_diff"] > 10

    monkeypatch.setattr(tflite_export, "convert_keras", lambda mirror, calibration: bad)
    with pytest.raises(RuntimeError, match="TANH"):
        tflite_export.export_tflite_int8(net, data[0][:10], tmp_path / "out" / "model.tflite")
    assert list((tmp_path / "out").iterdir()) == []


def test_float_tflite_matches_torch(net, data, tmp_path):
    info = tflite_export.export_tflite_float(net, tmp_path / "model.tflite")
    assert info["file_bytes"] == (tmp_path / "model.tflite").stat().st_size
    clf = runtimes.LiteRTClassifier(tmp_path / "model.tflite", CLASSES, reference_kernels=False)
    assert not clf.int8
    np.testing.assert_allclose(clf.predict_proba(data[2]), float_proba(net, data[2]), atol=1e-5)


@pytest.mark.parametrize("spec", [CNNSpec.from_widths("12-12-22-100"), CNNSpec(kernel_size=5, activations="RRRR")],
                         ids=["pruned-12-12-22-100", "k5-RRRR"])
def test_other_networks_export(spec, data, tmp_path):
    """Pruned widths and a 5x5 / all-ReLU network export and run in TFLM. Their int8 probabilities are
    further from float on single clips (ReLU dense layers give wide logit ranges, so coarse logit steps;
    the int8 input step on the raw log-mel already costs a few steps in C1), so the bound is on the
    mean, the decisions and accuracy, with a loose cap on the worst clip."""
    X_train, y_train, X_test, y_test = data
    net = train(spec, X_train, y_train, steps=100)
    info = tflite_export.export_tflite_int8(net, X_train, tmp_path / "model.tflite")
    assert 50_000 < info["arena_bytes"] < 75_000  # two 40x51xC1|C2 int8 maps dominate
    ops = runtimes.tflite_ops(tmp_path / "model.tflite")
    assert all(out["dtype"] == "INT8" for op in ops for out in op["outputs"])
    assert sum(op["op"] == "TANH" for op in ops) == spec.activations.count("T")
    assert tflite_export.fixed_qparam_violations(tmp_path / "model.tflite") == []
    check = runtimes.compare_tflm_litert(tmp_path / "model.tflite", X_test[:100])
    assert check["kernel_max_step_diff"] <= 1
    assert check["output_max_step_diff"] <= 8
    p_int8 = runtimes.TFLiteMicroClassifier(tmp_path / "model.tflite", CLASSES).predict_proba(X_test[:100])
    p_float = float_proba(net, X_test[:100])
    assert np.abs(p_int8 - p_float).max() < 0.2
    assert np.abs(p_int8 - p_float).mean() < 0.01
    assert (p_int8.argmax(1) == p_float.argmax(1)).mean() >= 0.95
    acc_float, acc_int8 = ((p.argmax(1) == y_test[:100]).mean() for p in (p_float, p_int8))
    assert acc_float > 0.5 and abs(acc_int8 - acc_float) <= 0.03  # chance is 0.1


def test_calibration_is_validated(net, tmp_path):
    with pytest.raises(ValueError, match="40, 51"):
        tflite_export.export_tflite_int8(net, np.zeros((4, 40, 50), np.float32), tmp_path / "x.tflite")
    with pytest.raises(ValueError, match="NaN"):
        tflite_export.export_tflite_int8(net, np.full((4, 40, 51), np.nan, np.float32), tmp_path / "x.tflite")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- ONNX


def test_onnx_float_matches_torch(onnx_files, net, data):
    float_path, _, float_info, _ = onnx_files
    assert float_info["file_bytes"] == float_path.stat().st_size
    clf = runtimes.OnnxClassifier(float_path, CLASSES)
    assert isinstance(clf, Classifier)
    np.testing.assert_allclose(clf.predict_proba(data[2]), float_proba(net, data[2]), atol=1e-5)
    assert clf.predict_proba(data[2][:3]).shape == (3, N_CLASSES)  # dynamic batch


def test_onnx_int8_runs_and_agrees(onnx_files, net, data):
    float_path, int8_path, float_info, int8_info = onnx_files
    assert int8_info["file_bytes"] < 0.6 * float_info["file_bytes"]
    assert sorted(p.name for p in float_path.parent.iterdir()) == ["model.onnx", "model_int8.onnx"]
    p_int8 = runtimes.OnnxClassifier(int8_path, CLASSES).predict_proba(data[2])
    p_float = float_proba(net, data[2])
    np.testing.assert_allclose(p_int8.sum(axis=1), 1.0, atol=1e-5)
    # ONNX Runtime's QDQ (MinMax calibration) is coarser than TFLite's converter (measured here: mean
    # |p_int8 - p_float| 0.02, 87 % same decisions, accuracy 82.5 % vs 84 %, log-loss 0.60 vs 0.52), so the
    # claim is about the whole test set, with those margins.
    assert np.abs(p_int8 - p_float).mean() < 0.03
    assert (p_int8.argmax(1) == p_float.argmax(1)).mean() >= 0.85
    s_float, s_int8 = (metrics.scores(p, data[3], N_CLASSES) for p in (p_float, p_int8))
    assert abs(s_int8["accuracy"] - s_float["accuracy"]) <= 0.03
    assert abs(s_int8["log_loss"] - s_float["log_loss"]) < 0.15



def test_tanh_inputs_keep_only_the_range_int8_tanh_can_tell_apart(net, data, tmp_path):
    """A network whose pre-activations reach far into tanh's flat tails (batch-norm scales x30): every tensor
    that feeds a TANH is quantized over at most ±atanh(127.5/128) (min/max calibration alone spans all of
    it, an int8 step of 1.4 there), and the INT8 file stays close to float (max |Δp| 0.08; 0.16 without)."""
    import copy

    steep = copy.deepcopy(net)
    with torch.no_grad():
        for bn in (steep.bn1, steep.bn3):
            bn.weight *= 30
            bn.bias *= 30
    X_train, _, X_test, _ = data
    path = tmp_path / "steep.tflite"
    path.write_bytes(tflite_export.convert_keras(tflite_export.keras_mirror(steep), X_train[:500]))
    ops = runtimes.tflite_ops(path)
    tanh_inputs = [ops[i - 1]["outputs"][0] for i, op in enumerate(ops) if op["op"] == "TANH"]  # a chain of ops
    assert [ops[i - 1]["op"] for i, op in enumerate(ops) if op["op"] == "TANH"] == ["CONV_2D", "CONV_2D",
                                                                                    "FULLY_CONNECTED"]
    for tensor in tanh_inputs:
        assert tensor["scales"][0] * 255 <= 2 * tflite_export.TANH_INPUT_LIMIT * 1.0001, tensor["name"]
    litert = runtimes.LiteRTClassifier(path, CLASSES)
    assert np.abs(litert.predict_proba(X_test) - float_proba(steep, X_test)).max() < 0.12


def test_int8_weights_rounding_error_is_taken_out_of_the_bias(tmp_path):
    """Inputs far from zero (log-mel sits around -4.5, -36 in silence) turn each weight's rounding error into
    a shift of the whole output. A linear convolution on inputs around -30: the INT8 file's outputs
    equal float on average per channel to 0.05 (0.07-0.28 when the biases are not corrected)."""
    keras = tflite_export.tf_keras()
    rng = np.random.default_rng(0)
    X = (-30 + rng.normal(0, 1, (200, 40, 51))).astype(np.float32)
    inp = keras.Input((40, 51, 1))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    model = keras.Model(inp, keras.layers.Reshape((40 * 51 * 4,))(conv(inp)))
    conv.set_weights([rng.normal(0, 1, (3, 3, 1, 4)).astype(np.float32), np.zeros(4, np.float32)])
    reference = model.predict(X[100:, :, :, None], verbose=0).reshape(100, 40, 51, 4)
    path = tmp_path / "conv.tflite"
    path.write_bytes(tflite_export.convert_keras(model, X[:100]))
    litert = runtimes.LiteRTClassifier(path, [f"c{i}" for i in range(40 * 51 * 4)])
    q = litert.invoke_raw(litert.quantize_input(X[100:]))
    got = int8.dequantize_int8(q, *litert.output_detail["quantization"]).reshape(100, 40, 51, 4)
    error = (got - reference)[:, 1:-1, 1:-1].mean(axis=(0, 1, 2))  # positions away from the zero padding
    assert np.abs(error).max() < 0.05, error
