"""The family's one description (lcasc.models.graph): shapes, consumers, and the channels a pruned layer takes
out of its consumers; the torch module is built from it in its order."""

import pytest
import torch

from lcasc.models import graph
from lcasc.models.cnn import CNNSpec, LowComplexityCNN
from lcasc.prune import prune_network


def test_shapes_of_the_paper_network():
    shapes = {n.name: (n.in_shape, n.out_shape) for n in graph.nodes(CNNSpec())}
    assert shapes["C1"] == ((1, 40, 51), (16, 40, 51))
    assert shapes["P1"] == ((16, 40, 51), (16, 8, 10))
    assert shapes["C3"] == ((16, 8, 10), (32, 8, 10))
    assert shapes["P2"] == ((32, 8, 10), (32, 2, 1))
    assert shapes["FLAT"] == ((32, 2, 1), (64,))
    assert shapes["FC1"] == ((64,), (100,))
    assert shapes["FC2"] == ((100,), (10,))
    assert LowComplexityCNN.pooled_shape(CNNSpec()) == (2, 1)
    with pytest.raises(ValueError, match="too small"):
        graph.nodes(CNNSpec(n_mels=10))


def test_consumers_and_blocks():
    assert graph.CONVS == ("C1", "C2", "C3")
    assert [b.consumer.name for b in graph.conv_blocks()] == ["C2", "C3", "FC1"]
    assert [[p.name for p in b.pools] for b in graph.conv_blocks()] == [[], [], ["P1"]]
    assert [layer.name for layer in graph.head()] == ["P2", "FLAT", "FC1", "A4", "FC2"]
    assert graph.HIDDEN_WIDTHS == ("c1", "c2", "c3", "dense")
    with pytest.raises(ValueError, match="unknown layer"):
        graph.conv_block("C4")


def test_channel_selection_follows_channels_to_their_consumers():
    sel = graph.channel_selection(CNNSpec(), {"C2": [0, 2, 5], "C3": [1, 4]})
    assert sel["conv2"] == ([0, 2, 5], list(range(16)))
    assert sel["bn2"] == ([0, 2, 5], None)
    assert sel["conv3"][1] == [0, 2, 5]  # C3 reads only the kept C2 channels, through P1
    assert sel["fc1"] == (list(range(100)), [2, 3, 8, 9])  # channel c owns columns 2c, 2c+1 (h*w = 2)
    assert sel["fc2"] == (list(range(10)), list(range(100)))


def test_network_is_built_in_the_family_order_and_pruning_removes_consumer_inputs():
    net = LowComplexityCNN.from_spec(CNNSpec())
    assert list(net._modules) == [layer.attr for layer in graph.FAMILY if layer.attr]
    pruned = prune_network(net, {"C2": [1, 3]})
    kept = [i for i in range(16) if i not in (1, 3)]
    assert torch.equal(pruned.conv3.weight, net.conv3.weight[:, kept])
    assert torch.equal(pruned.bn2.running_var, net.bn2.running_var[kept])
    with pytest.raises(ValueError, match="unknown layer"):
        net.features(torch.zeros(1, 40, 51), upto="P1")


def test_the_command_lines_layer_names_are_the_familys():
    """lcasc.names spells the layers for the command line (which must not import torch): the same names."""
    from lcasc import names

    assert names.LAYERS == graph.CONVS
    assert set().union(*names.LAYER_SETS.values()) == set(graph.CONVS)
