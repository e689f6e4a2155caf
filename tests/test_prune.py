import numpy as np
import pytest
import torch

from lcasc import complexity
from lcasc.models.cnn import LowComplexityCNN
from lcasc.prune import (
    find_redundant,
    l1_filters,
    prune_network,
    random_filters,
    redundant_filters,
    similar_filter_pairs,
)


def far_apart(n, cin=1, seed=0):
    """n filters whose prototypes are mutually far apart (orthogonal spatial patterns)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(9, 9)))
    w = np.zeros((n, cin, 3, 3))
    for i in range(n):
        w[i] = np.outer(np.linspace(1, 2, cin), q[:, i % 9]).reshape(cin, 3, 3) * (1 + i // 9)
    return w


def test_scaled_copy_is_found_and_higher_index_removed():
    w = far_apart(6)
    w[4] = 3.5 * w[1]
    assert (1, 4) in similar_filter_pairs(w)
    assert 4 in redundant_filters(w) and 1 not in redundant_filters(w)


def test_near_copies_with_several_input_channels_are_found():
    w = far_apart(8, cin=4)
    rng = np.random.default_rng(1)
    w[6] = w[2] + 1e-4 * rng.normal(size=w[2].shape)
    w[7] = 0.5 * w[3] + 1e-4 * rng.normal(size=w[3].shape)
    pairs = similar_filter_pairs(w)
    assert (2, 6) in pairs and (3, 7) in pairs


@pytest.mark.parametrize("cin", [1, 3])
def test_sign_flipped_copy_is_opposite_not_similar(cin):
    # u1 v1^T of -M is -(u1 v1^T): the prototype flips too, cosine distance 2, so a sign-flipped copy is
    # as far as a filter can be (the criterion measures direction, not only shape).
    w = far_apart(5, cin=cin)
    w[3] = -w[0]
    from lcasc.prune import cosine_distances

    assert cosine_distances(w)[0, 3] == pytest.approx(2.0)
    assert (0, 3) not in similar_filter_pairs(w)


def test_deterministic_for_float32_float64_numpy_and_torch():
    w = np.random.default_rng(3).normal(size=(16, 16, 3, 3))
    ref = similar_filter_pairs(w)
    assert ref == similar_filter_pairs(w.astype(np.float32)) == similar_filter_pairs(torch.tensor(w))
    assert ref == sorted(ref) and all(i < j for i, j in ref)


def test_zero_filter_gives_no_nan_and_is_not_paired_by_accident():
    w = far_apart(4)
    w[2] = 0
    assert all(isinstance(i, int) for pair in similar_filter_pairs(w) for i in pair)


def test_l1_and_random_criteria():
    w = far_apart(6)
    w[5] *= 0.01
    w[0] *= 0.02
    assert l1_filters(w, 2) == [0, 5]
    assert random_filters(16, 4, seed=0) == random_filters(16, 4, seed=0)
    assert len(set(random_filters(16, 4, seed=0))) == 4


@pytest.mark.parametrize("removed,params,macs,size_kb", [
    ({"C1": [0, 1, 2, 3]}, 14254, 4156040, 17.86),
    ({"C2": [0, 1, 2, 3]}, 13138, 4129320, 16.85),
    ({"C3": list(range(10))}, 11396, 5286520, 15.11),
    ({"C1": [1, 3, 5, 7], "C2": [2, 4, 6, 8], "C3": list(range(0, 20, 2))}, 9520, 3085400, 13.14),
])
def test_pruned_network_matches_paper_table2(removed, params, macs, size_kb):
    pruned = prune_network(LowComplexityCNN(), removed)
    cx = complexity.count(pruned)
    assert (cx.params, cx.macs, cx.size_kb) == (params, macs, size_kb)
    assert complexity.of_spec(pruned.spec).params == params


def _duplicate_and_merge(model, layer, i, j):
    """Make filter j of ``layer`` an exact copy of filter i, and give the next layer's weights of j to i
    (j's contribution is then carried by i alone), so removing j keeps the function."""
    blocks = {name: (conv, bn) for name, conv, bn in model.conv_blocks()}
    conv, bn = blocks[layer]
    with torch.no_grad():
        conv.weight[j] = conv.weight[i]
        conv.bias[j] = conv.bias[i]
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name)[j] = getattr(bn, name)[i]
        if layer == "C3":
            hw = model.fc1.in_features // model.spec.c3
            model.fc1.weight[:, i * hw:(i + 1) * hw] += model.fc1.weight[:, j * hw:(j + 1) * hw]
            model.fc1.weight[:, j * hw:(j + 1) * hw] = 0
        else:
            nxt = blocks["C2" if layer == "C1" else "C3"][0]
            nxt.weight[:, i] += nxt.weight[:, j]
            nxt.weight[:, j] = 0


@pytest.mark.parametrize("layer,i,j", [("C1", 2, 9), ("C2", 0, 15), ("C3", 5, 30)])
def test_removing_a_merged_duplicate_keeps_the_outputs(layer, i, j):
    torch.manual_seed(0)
    model = LowComplexityCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _, _, bn in model.conv_blocks():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    _duplicate_and_merge(model, layer, i, j)
    assert j in redundant_filters(dict((n, c) for n, c, _ in model.conv_blocks())[layer].weight)
    x = torch.randn(8, 1, 40, 51)
    pruned = prune_network(model, {layer: [j]}).eval()
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)
    widths = {"C1": 15, "C2": 15, "C3": 31}
    assert getattr(pruned.spec, layer.lower()) == widths[layer]


def test_original_is_untouched_and_find_redundant_is_per_layer():
    model = LowComplexityCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    removed = find_redundant(model)
    prune_network(model, removed)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(removed) == {"C1", "C2", "C3"}
    l1 = find_redundant(model, "l1")
    assert {k: len(v) for k, v in l1.items()} == {k: len(v) for k, v in removed.items()}


@pytest.mark.parametrize("removed,message", [({"C4": [0]}, "unknown layer"), ({"C1": [16]}, "out of range"),
                                             ({"C2": list(range(16))}, "cannot remove all")])
def test_invalid_requests_are_refused(removed, message):
    with pytest.raises(ValueError, match=message):
        prune_network(LowComplexityCNN(), removed)
