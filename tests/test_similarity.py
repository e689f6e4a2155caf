"""Feature-map similarity (paper Figure 5): streaming MSE, correspondence by original filter index, the
analysis summary and its figures. Untrained, seeded networks on random log-mel-like inputs: the MSE
arithmetic does not need trained weights."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from lcasc import similarity as S
from lcasc.models.cnn import CNNSpec, LowComplexityCNN
from lcasc.prune import prune_network

pytestmark = pytest.mark.usefixtures("one_thread")

REMOVED = {"base": {}, "pC1": {"C1": [1, 5]}, "pC2": {"C2": [0, 3, 7]}, "copy": {}}


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    base = LowComplexityCNN.from_spec(CNNSpec()).eval()
    out = {"base": base}
    for name in ("pC1", "pC2"):
        net = prune_network(base, REMOVED[name]).eval()
        with torch.no_grad():  # a little "fine-tuning": maps close to the base's, not equal
            for p in net.parameters():
                p.add_(3e-4 * torch.randn_like(p))
        out[name] = net
    out["copy"] = copy.deepcopy(base)
    return out


@pytest.fixture(scope="module")
def kept():
    return {n: S.kept_from_removed(CNNSpec(), r) for n, r in REMOVED.items()}


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(1).normal(-6, 2, (37, 40, 51)).astype(np.float32)


def direct_mse(net_a, net_b, X, layer, kept_a, kept_b):
    """Reference: all clips at once, numpy, maps matched by original index."""
    with torch.no_grad():
        fa = net_a.features(torch.from_numpy(X), upto=layer).numpy().astype(np.float64)
        fb = net_b.features(torch.from_numpy(X), upto=layer).numpy().astype(np.float64)
    maps = sorted(set(kept_a) & set(kept_b))
    return maps, np.array([np.mean((fa[:, kept_a.index(k)] - fb[:, kept_b.index(k)]) ** 2) for k in maps])


def test_kept_from_removed_mirrors_prune_network():
    kept = S.kept_from_removed(CNNSpec(), {"C1": [1, 5], "C3": [31]})
    assert kept["C1"] == [0, 2, 3, 4] + list(range(6, 16))
    assert kept["C2"] == list(range(16)) and kept["C3"] == list(range(31))


@pytest.mark.parametrize("layer", ["C1", "C2", "C3"])
def test_streaming_mse_equals_direct_numpy_for_any_batch_size(nets, kept, X, layer):
    k = {n: kept[n][layer] for n in nets}
    results = [S.feature_map_mse(nets, X, layer, batch_size=bs, kept=k) for bs in (5, 16, 37, 512)]
    for (a, b), p in results[0]["pairs"].items():
        maps, ref = direct_mse(nets[a], nets[b], X, layer, k[a], k[b])
        assert p["maps"].tolist() == maps
        np.testing.assert_allclose(p["mse"], ref, rtol=1e-5, atol=1e-12)
        for other in results[1:]:
            np.testing.assert_allclose(other["pairs"][a, b]["mse"], p["mse"], rtol=1e-5, atol=1e-12)
    assert results[0]["n_clips"] == len(X)
    # identical networks: exactly zero on every map, all shared even at threshold 0
    exact = S.feature_map_mse({"base": nets["base"], "copy": nets["copy"]}, X, layer, 8, threshold=0.0)
    assert np.all(exact["pairs"]["base", "copy"]["mse"] == 0)
    assert exact["n_shared"][0, 1] == {"C1": 16, "C2": 16, "C3": 32}[layer]


def test_maps_correspond_by_original_index(nets, kept, X):
    """pC1 lacks C1 filters 1 and 5: its channel 1 is original filter 2. Matching by original index finds
    the near-identical maps; matching by position (the default kept) compares unrelated filters."""
    pair = {"base": nets["base"], "pC1": nets["pC1"]}
    right = S.feature_map_mse(pair, X, "C1", kept={"base": kept["base"]["C1"], "pC1": kept["pC1"]["C1"]})
    p = right["pairs"]["base", "pC1"]
    assert p["maps"].tolist() == kept["pC1"]["C1"] and right["n_compared"][0, 1] == 14
    assert p["mse"].max() < 1e-4 and len(p["shared"]) == 14
    wrong = S.feature_map_mse(pair, X, "C1")  # positions 0..13 of both
    assert wrong["pairs"]["base", "pC1"]["mse"].max() > 100 * p["mse"].max()
    with pytest.raises(ValueError, match="kept"):
        S.feature_map_mse(pair, X, "C1", kept={"pC1": list(range(16))})  # pC1 has 14 channels


def test_select_clips():
    X = np.arange(50)[:, None, None] * np.ones((1, 2, 3))
    np.testing.assert_array_equal(S.select_clips(X, 100), X)  # fewer clips than asked: all of them
    sub = S.select_clips(X, 10, seed=3)
    assert len(sub) == 10 and np.all(np.diff(sub[:, 0, 0]) > 0)
    np.testing.assert_array_equal(sub, S.select_clips(X, 10, seed=3))


def test_analyse_summary_and_figures(nets, kept, X, tmp_path):
    summary = S.analyse(nets, kept, X, threshold=1e-4, figure_dir=tmp_path, n_clips=20)
    json.dumps(summary, allow_nan=False)  # plain JSON, no NaN
    assert summary["n_clips"] == 20 and set(summary["layers"]) == {"C1", "C2", "C3"}
    for name in summary["figures"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert set(summary["figures"]) == {"similarity_mse_C1.png", "similarity_mse_C2.png", "similarity_mse_C3.png",
                                       "similarity_fig5a.png", "similarity_fig5b.png"}
    c1 = summary["layers"]["C1"]
    names = c1["names"]
    # the shared triples are exactly the per-pair maps under the threshold, and the counts agree
    from_pairs = sorted([*key.split("|"), k] for key, p in c1["per_pair"].items()
                        for k, v in zip(p["maps"], p["mse"]) if v <= 1e-4)
    assert sorted(c1["shared"]) == from_pairs
    i, j = names.index("base"), names.index("copy")
    assert c1["n_shared"][i][j] == 16 and c1["mean_mse"][i][j] == 0.0
    assert summary["figure5_pair"] == ["base", "copy"]  # the pair sharing the most C1 maps
