"""The fused ensemble: shared feature maps computed once, counted once, and the same outputs as the
ordinary ensemble when nothing approximate is shared; its trade-off curve; its INT8 TFLite file in TFLM.

Networks are trained briefly on synthetic log-mel (the pattern of test_quantize.py): one base network,
three networks pruned from it with different removed filters and fine-tuned a few steps each (so their
maps are close but not equal), and one network fine-tuned with its first layer frozen.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from lcasc import fused as F
from lcasc import fused_tradeoff as FT
from lcasc import similarity as S
from lcasc.classifier import EnsembleClassifier
from lcasc.complexity import count
from lcasc.models.cnn import CNNClassifier, CNNSpec, LowComplexityCNN
from lcasc.prune import prune_network

from .conftest import adam_steps as train
from .conftest import synthetic_logmel

pytestmark = pytest.mark.usefixtures("one_thread")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
N_CLASSES = 10
CLASSES = [f"scene{i}" for i in range(N_CLASSES)]
# three pruned networks of one base (the paper's pruned C1 / C2 / C3, with fixed removed filters)
REMOVED = {"pC1": {"C1": [1, 5, 9, 12]}, "pC2": {"C2": [0, 3, 7]}, "pC3": {"C3": [2, 4, 8, 10]}}
CONV1_MACS = 40 * 51 * 9  # one C1 map: 40x51 outputs x 3x3 taps x 1 input channel = 18,360


def unfused_proba(nets, X) -> np.ndarray:
    """The ordinary ensemble as users run it: EnsembleClassifier over CNNClassifier members."""
    return EnsembleClassifier([CNNClassifier(CLASSES, net=n) for n in nets]).predict_proba(X)


@pytest.fixture(scope="module")
def data():
    X_train, y_train = synthetic_logmel(800, seed=0)
    X_test, y_test = synthetic_logmel(200, seed=1)
    return X_train, y_train, X_test, y_test


@pytest.fixture(scope="module")
def base(data):
    torch.manual_seed(0)
    return train(LowComplexityCNN.from_spec(CNNSpec()), data[0], data[1], steps=200, seed=0, lr=3e-3)


@pytest.fixture(scope="module")
def pruned(base, data):
    """name -> fine-tuned pruned network, name -> kept original indices, layer -> feature_map_mse."""
    nets = {name: train(prune_network(base, removed), data[0], data[1], steps=30, seed=i + 1, lr=3e-4)
            for i, (name, removed) in enumerate(REMOVED.items())}
    kept = {name: S.kept_from_removed(base.spec, removed) for name, removed in REMOVED.items()}
    mse = {layer: S.feature_map_mse(nets, data[0][:400], layer, 128, {n: kept[n][layer] for n in nets})
           for layer in S.LAYERS}
    return nets, kept, mse


@pytest.fixture(scope="module")
def same_c1(base, data):
    """The base network and a copy fine-tuned with C1 frozen: identical C1, different C2/C3/dense."""
    other = train(copy.deepcopy(base), data[0], data[1], steps=30, seed=7, lr=1e-3, freeze_c1=True)
    return {"base": base, "other": other}


# ------------------------------------------------------------------------------------------ exactness


def test_threshold_zero_shares_nothing_and_equals_unfused(pruned, data):
    nets, kept, mse = pruned
    assert all(min(p["mse"]) > 0 for p in mse["C1"]["pairs"].values())  # fine-tuning made every map differ
    fused = F.build_fused(nets, kept, mse, threshold=0.0)
    for layer, s in fused.sharing().items():
        assert s["distinct_maps"] == s["member_maps"] and s["shared"] == [], layer
    X = data[2]
    np.testing.assert_allclose(fused.predict_proba(X), unfused_proba(nets.values(), X), atol=1e-6, rtol=0)
    cost, members = F.fused_complexity(fused), [count(n) for n in nets.values()]
    assert cost.params == sum(m.params for m in members)  # 14,254 + 13,138 + 14,446 (pruned C1 / C2 / C3)
    assert cost.macs == sum(m.macs for m in members)
    assert F.unfused_complexity(list(nets.values())).macs == cost.macs


def test_identical_first_layer_is_computed_and_counted_once(same_c1, data):
    nets = same_c1
    assert torch.equal(nets["base"].conv1.weight, nets["other"].conv1.weight)
    assert not torch.equal(nets["base"].conv2.weight, nets["other"].conv2.weight)
    mse = {layer: S.feature_map_mse(nets, data[0][:200], layer, 64) for layer in S.LAYERS}
    assert np.all(mse["C1"]["pairs"]["base", "other"]["mse"] == 0)
    assert np.all(mse["C2"]["pairs"]["base", "other"]["mse"] > 0)
    fused = F.build_fused(nets, None, mse, threshold=0.0)
    assert {k: v["distinct_maps"] for k, v in fused.sharing().items()} == {"C1": 16, "C2": 32, "C3": 64}

    # One 16-16-32-100 network, by hand (METHOD-NOTES §4; params Keras: conv w + b + 4 per BN channel):
    c1_macs, c1_params = 40 * 51 * 16 * 9 * 1, 16 * 9 * 1 + 16 + 4 * 16  # 293,760 and 224
    c2_macs, c2_params = 40 * 51 * 16 * 9 * 16, 16 * 9 * 16 + 16 + 4 * 16  # 4,700,160 and 2,384
    p1_macs = 8 * 10 * 16 * 25  # 32,000: outputs x 5x5 window
    c3_macs, c3_params = 8 * 10 * 32 * 9 * 16, 32 * 9 * 16 + 32 + 4 * 32  # 368,640 and 4,768
    p2_macs = 2 * 1 * 32 * 40  # 2,560
    fc1_macs, fc1_params = 64 * 100, 64 * 100 + 100  # 6,400 and 6,500
    fc2_macs, fc2_params = 100 * 10, 100 * 10 + 10  # 1,000 and 1,010
    net_macs = c1_macs + c2_macs + p1_macs + c3_macs + p2_macs + fc1_macs + fc2_macs
    net_params = c1_params + c2_params + c3_params + fc1_params + fc2_params
    assert (net_macs, net_params) == (5_404_520, 14_886)  # paper Table 2, unpruned
    assert count(nets["base"]).macs == net_macs
    # Fused: C1 once, everything else twice.
    cost = F.fused_complexity(fused)
    assert cost.macs == c1_macs + 2 * (net_macs - c1_macs) == 10_515_280
    assert cost.params == c1_params + 2 * (net_params - c1_params) == 29_548
    X = data[2]
    np.testing.assert_allclose(fused.predict_proba(X), unfused_proba(nets.values(), X), atol=1e-6, rtol=0)


def test_identical_networks_share_every_conv_layer(base, data):
    """Two copies of one network: C1, C2, C3 (and both pools) run once, each member keeps its dense layers."""
    nets = {"a": base, "b": copy.deepcopy(base)}
    mse = {layer: S.feature_map_mse(nets, data[0][:100], layer) for layer in S.LAYERS}
    fused = F.build_fused(nets, None, mse, threshold=0.0)
    assert {k: v["distinct_maps"] for k, v in fused.sharing().items()} == {"C1": 16, "C2": 16, "C3": 32}
    cost = F.fused_complexity(fused)
    assert cost.macs == 5_404_520 + (64 * 100 + 100 * 10)  # one network + a second fc1, fc2
    assert cost.params == 14_886 + (64 * 100 + 100) + (100 * 10 + 10)
    with torch.no_grad():
        own = torch.softmax(base(torch.from_numpy(data[2])), dim=1).numpy()
    np.testing.assert_allclose(fused.predict_proba(data[2]), own, atol=1e-6, rtol=0)


def test_deeper_maps_are_shared_only_when_all_their_inputs_are(pruned, data):
    """At an unbounded threshold every C1 map is shared (16 distinct for 44 member maps). C2 map k is then
    shared only between pC2 and pC3, which read the same 16 C1 maps; pC1 reads 12 of them, so its C2 sums
    over other inputs. No C3 map is shared: pC2 has 13 C2 maps, pC3 16, pC1 its own."""
    nets, kept, mse = pruned
    fused = F.build_fused(nets, kept, mse, threshold=np.inf)
    s = fused.sharing()
    assert (s["C1"]["member_maps"], s["C1"]["distinct_maps"]) == (12 + 16 + 16, 16)
    assert (s["C2"]["member_maps"], s["C2"]["distinct_maps"]) == (16 + 13 + 16, 16 + 16)
    assert sorted(g[0] for g in s["C2"]["shared"]) == [k for k in range(16) if k not in (0, 3, 7)]
    assert all(g[1:] == ["pC2", ["pC2", "pC3"]] for g in s["C2"]["shared"])
    assert (s["C3"]["member_maps"], s["C3"]["distinct_maps"]) == (32 + 32 + 28, 92)
    saved_macs = (28 * CONV1_MACS  # C1: 28 maps of 40x51 x 9 taps x 1 input
                  + 13 * 40 * 51 * 9 * 16  # C2: 13 maps of 40x51 x 9 taps x 16 inputs
                  + 13 * 8 * 10 * 25)  # P1 of those 13 maps
    saved_params = 28 * (9 + 1 + 4) + 13 * (9 * 16 + 1 + 4)  # kernel, bias, BN per removed filter
    unfused = F.unfused_complexity(list(nets.values()))
    cost = F.fused_complexity(fused)
    assert unfused.macs - cost.macs == saved_macs == 4_358_960
    assert unfused.params - cost.params == saved_params == 2_329
    p = fused.predict_proba(data[2])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # approximate maps change the output, but not by much: the members' maps were close
    assert np.abs(p - unfused_proba(nets.values(), data[2])).mean() < 0.05


def test_members_must_differ_only_in_widths(base):
    other = LowComplexityCNN.from_spec(CNNSpec(activations="RRRR"))
    with pytest.raises(ValueError, match="widths"):
        F.build_fused({"a": base, "b": other}, None, None)
    with pytest.raises(ValueError, match="kept"):
        F.build_fused({"a": base}, {"a": {"C1": list(range(12))}}, None)


# ------------------------------------------------------------------------------------------ trade-off


def test_fuse_and_evaluate(pruned, data, tmp_path):
    nets, kept, mse = pruned
    X_train, y_train, X_test, y_test = data
    thresholds = (0.0, 1e-4, 1e-3, np.inf)
    out = FT.fuse_and_evaluate(nets, kept, X_train[:400], X_test, y_test, X_test[:100], y_test[:100],
                              thresholds=thresholds, threshold=1e-3, figure_dir=tmp_path, mse=mse)
    module, probabilities = out.pop("module"), out.pop("probabilities")
    json.dumps(out, allow_nan=False)
    np.testing.assert_array_equal(probabilities["test"], module.predict_proba(X_test))  # the module's own
    assert probabilities["validate"].shape == (100, len(CLASSES))
    assert (tmp_path / "fused_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    rows = out["tradeoff"]
    assert [r["threshold"] for r in rows] == [0.0, 1e-4, 1e-3, None]  # inf is not JSON
    saved = [r["macs_saved"] for r in rows]
    assert saved[0] == 0 and saved == sorted(saved) and saved[-1] == 4_358_960
    assert rows[0]["test"]["accuracy"] == out["unfused"]["test"]["accuracy"]
    assert abs(rows[0]["test"]["log_loss"] - out["unfused"]["test"]["log_loss"]) < 1e-5
    # the headline entry is the row of the chosen threshold, and the module is that fused ensemble
    row = rows[2]
    assert out["fused"]["macs"] == row["macs"] == F.fused_complexity(module).macs
    assert out["saved"]["macs"] == row["macs_saved"] > 0
    assert out["fused"]["test"] == row["test"]
    assert out["unfused"]["macs"] == F.unfused_complexity(list(nets.values())).macs
    assert out["fused"]["test"]["accuracy"] >= out["unfused"]["test"]["accuracy"] - 0.05


def test_fuse_and_evaluate_measures_mse_itself(same_c1, data):
    X_train, y_train, X_test, y_test = data
    out = FT.fuse_and_evaluate(same_c1, {}, X_train[:100], X_test[:50], y_test[:50], X_test[50:100],
                              y_test[50:100], thresholds=(0.0,), threshold=0.0)
    assert out["saved"] == {"params": 224, "macs": 293_760}  # the identical C1, found from the data
    assert out["fused"]["sharing"]["C1"]["distinct_maps"] == 16


# ------------------------------------------------------------------------------------------ INT8 export

_MISSING = [m for m in ("tensorflow", "tflite_micro") if importlib.util.find_spec(m) is None]
needs_tflite = pytest.mark.skipif(bool(_MISSING), reason=f"INT8 export extras not installed: {_MISSING}")


@needs_tflite
def test_fused_int8_tflite_runs_in_tflm(pruned, data, tmp_path):
    from lcasc import int8, runtimes
    from lcasc.export import fused_tflite
    from lcasc.export import tflite as tflite_export

    nets, kept, mse = pruned
    X_train, _, X_test, y_test = data
    fused = F.build_fused(nets, kept, mse, threshold=1e-3)
    s = fused.sharing()
    assert s["C1"]["distinct_maps"] < s["C1"]["member_maps"]  # something is shared, so gathers are exercised
    mirror = fused_tflite.fused_keras_mirror(fused)
    logits = mirror(X_test[:16, ..., None], training=False).numpy()
    assert logits.shape == (16, len(fused.heads) * len(CLASSES))  # the members' logits side by side
    np.testing.assert_allclose(int8.probabilities_from_logits(logits, len(CLASSES)), fused.predict_proba(X_test[:16]),
                               atol=1e-5)

    path = tmp_path / "fused_int8.tflite"
    info = fused_tflite.export_fused_tflite_int8(fused, X_train, path)
    assert info["file_bytes"] == path.stat().st_size
    assert info["arena_bytes"] == runtimes.arena_bytes(path)
    ops = runtimes.tflite_ops(path)
    names = [op["op"] for op in ops]
    assert {"GATHER", "CONCATENATION"} <= set(names) and "QUANTIZE" not in names
    assert "SOFTMAX" not in names and names[-1] == "CONCATENATION"
    assert names.count("CONV_2D") == sum(len(u) for u in fused.units.values())
    assert all(out["dtype"] == "INT8" for op in ops for out in op["outputs"])
    assert tflite_export.fixed_qparam_violations(path) == []

    check = runtimes.compare_tflm_litert(path, X_test[:100])
    assert check["kernel_max_step_diff"] <= 1
    assert check["argmax_agreement"] >= 0.99

    tflm = runtimes.TFLiteMicroClassifier(path, CLASSES)
    p_int8, p_float = tflm.predict_proba(X_test), fused.predict_proba(X_test)
    assert np.abs(p_int8 - p_float).mean() < 0.01
    assert (p_int8.argmax(1) == p_float.argmax(1)).mean() >= 0.95
    acc_float, acc_int8 = ((p.argmax(1) == y_test).mean() for p in (p_float, p_int8))
    assert acc_float > 0.6 and abs(acc_int8 - acc_float) <= 0.03
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing but the published file
