"""The CNN family's layers and which layer consumes each layer's channels, written down once.

Why: the wiring C1 -> C2 -> P1 -> C3 -> P2 -> flatten -> dense -> dense used to be re-encoded in the torch
module, pruning, feature-map similarity, the fused ensemble and both Keras mirrors; a change of the family
had to be made in each. Here it is one ordered list, :data:`FAMILY` (in the spirit of Torch-Pruning's
dependency graph, restricted to this chain-shaped family), and everything else is derived from it:

- :func:`nodes`: the list resolved for one :class:`~lcasc.models.cnn.CNNSpec` (input/output shapes,
  kernel or pooling window, activation letter), from which :class:`~lcasc.models.cnn.LowComplexityCNN`
  builds its modules and the Keras mirror its layers;
- :func:`conv_blocks` / :data:`CONVS`: the convolution layers (C1, C2, C3) with their BatchNorm, activation,
  the pooling in front of them and the layer that consumes their channels;
- :func:`channel_selection`: which output and input indices every parametrised layer keeps when filters are
  removed, following each channel through BatchNorm, pooling and the channel-major flatten to its consumer.

A channel of a conv layer passes unchanged through the BatchNorm, activation and pooling layers after it and
is read by the next conv (one input channel) or, after the flatten, by the first dense layer (``h * w``
consecutive input columns: PyTorch flattens (C, h, w) channel-major). Plain data and Python: no PyTorch or
TensorFlow in this module.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("conv", "bn", "act", "pool", "flatten", "dense")


@dataclass(frozen=True)
class Layer:
    """One layer of the family.

    ``name``: the paper's name for conv layers (C1...), otherwise a short label; ``attr``: the attribute of
    :class:`~lcasc.models.cnn.LowComplexityCNN` holding the module, also the Keras mirror's layer name
    (None for the flatten, a function call); ``width``: the :class:`CNNSpec` field with the output channels
    (conv) or units (dense); ``pool``: the field with the pooling window; ``act``: the position of this
    activation's letter in ``CNNSpec.activations``.
    """

    name: str
    kind: str
    attr: str | None = None
    width: str | None = None
    pool: str | None = None
    act: int | None = None


FAMILY: tuple[Layer, ...] = (
    Layer("C1", "conv", "conv1", width="c1"),
    Layer("BN1", "bn", "bn1"),
    Layer("A1", "act", "act1", act=0),
    Layer("C2", "conv", "conv2", width="c2"),
    Layer("BN2", "bn", "bn2"),
    Layer("A2", "act", "act2", act=1),
    Layer("P1", "pool", "pool1", pool="pool1"),
    Layer("C3", "conv", "conv3", width="c3"),
    Layer("BN3", "bn", "bn3"),
    Layer("A3", "act", "act3", act=2),
    Layer("P2", "pool", "pool2", pool="pool2"),
    Layer("FLAT", "flatten"),
    Layer("FC1", "dense", "fc1", width="dense"),
    Layer("A4", "act", "act4", act=3),
    Layer("FC2", "dense", "fc2", width="n_classes"),
)

CONVS: tuple[str, ...] = tuple(layer.name for layer in FAMILY if layer.kind == "conv")
# spec fields of the widths that may differ between networks of one family (pruning changes them); the last
# dense layer's width is the number of classes
HIDDEN_WIDTHS: tuple[str, ...] = tuple(layer.width for layer in FAMILY if layer.width)[:-1]
_BY_NAME = {layer.name: layer for layer in FAMILY}


def layer(name: str) -> Layer:
    """The layer called ``name``; a ValueError names the conv layers when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown layer {name!r}; expected one of {', '.join(CONVS)}") from None


def width(spec, name: str) -> int:
    """Output channels (conv) or units (dense) of layer ``name`` in the network ``spec`` describes."""
    found = layer(name)
    if found.width is None:
        raise ValueError(f"layer {name} has no width of its own")
    return int(getattr(spec, found.width))


def consumer(name: str) -> Layer | None:
    """The layer that reads the output channels of ``name``: the next conv or dense layer (None: the output)."""
    i = FAMILY.index(layer(name))
    return next((later for later in FAMILY[i + 1:] if later.kind in ("conv", "dense")), None)


# --------------------------------------------------------------------------------------------------------
# conv blocks and the head


@dataclass(frozen=True)
class ConvBlock:
    """A conv layer with what surrounds it: ``pools`` applied to its input (after the previous block), its
    BatchNorm and activation, and the ``consumer`` of its channels."""

    pools: tuple[Layer, ...]
    conv: Layer
    bn: Layer
    act: Layer
    consumer: Layer


def _blocks() -> tuple[ConvBlock, ...]:
    blocks, pools = [], []
    for i, item in enumerate(FAMILY):
        if item.kind == "pool":
            pools.append(item)
        elif item.kind == "conv":
            bn, act = FAMILY[i + 1], FAMILY[i + 2]
            if (bn.kind, act.kind) != ("bn", "act"):
                raise AssertionError(f"{item.name} must be followed by BatchNorm and an activation")
            blocks.append(ConvBlock(tuple(pools), item, bn, act, consumer(item.name)))
            pools = []
    return tuple(blocks)


_CONV_BLOCKS = _blocks()


def conv_blocks() -> tuple[ConvBlock, ...]:
    """The conv blocks in order (C1, C2, C3)."""
    return _CONV_BLOCKS


def conv_block(name: str) -> ConvBlock:
    """The block of conv layer ``name`` (C1, C2 or C3)."""
    for block in _CONV_BLOCKS:
        if block.conv.name == name:
            return block
    raise ValueError(f"unknown layer {name!r}; expected one of {', '.join(CONVS)}")


def head() -> tuple[Layer, ...]:
    """The layers after the last conv block's activation: pooling, flatten, dense layers and activations."""
    return FAMILY[FAMILY.index(_CONV_BLOCKS[-1].act) + 1:]


def upto(name: str) -> tuple[Layer, ...]:
    """The layers from the input through the activation of conv layer ``name``: its feature maps."""
    return FAMILY[:FAMILY.index(conv_block(name).act) + 1]


# --------------------------------------------------------------------------------------------------------
# the family resolved for one spec


@dataclass(frozen=True)
class Node:
    """A layer of one network: ``in_shape``/``out_shape`` per clip ((C, H, W) maps or (F,) vectors),
    ``window`` (conv kernel or pooling window, (kh, kw)), ``activation`` (``T``/``R``, activations only)."""

    layer: Layer
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    window: tuple[int, int] | None = None
    activation: str | None = None

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def kind(self) -> str:
        return self.layer.kind

    @property
    def attr(self) -> str | None:
        return self.layer.attr


def nodes(spec) -> list[Node]:
    """:data:`FAMILY` for ``spec``, in order, with every layer's shapes ('same' convs keep H x W, pooling
    floors it). Raises ValueError when the input is too small for the pools."""
    shape: tuple[int, ...] = (1, spec.n_mels, spec.n_frames)
    out = []
    for item in FAMILY:
        window, activation, new = None, None, shape
        if item.kind == "conv":
            window = (spec.kernel_size, spec.kernel_size)
            new = (width(spec, item.name), *shape[1:])
        elif item.kind == "pool":
            window = tuple(getattr(spec, item.pool))
            new = (shape[0], shape[1] // window[0], shape[2] // window[1])
            if new[1] < 1 or new[2] < 1:
                raise ValueError(f"input {spec.n_mels}x{spec.n_frames} is too small for pools {spec.pool1}, "
                                 f"{spec.pool2}")
        elif item.kind == "flatten":
            new = (shape[0] * shape[1] * shape[2],)
        elif item.kind == "dense":
            new = (width(spec, item.name),)
        elif item.kind == "act":
            activation = spec.activations[item.act]
        out.append(Node(item, shape, new, window, activation))
        shape = new
    return out


def node(spec, name: str) -> Node:
    """The :class:`Node` of layer ``name`` for ``spec``."""
    layer(name)
    return next(n for n in nodes(spec) if n.name == name)


def flattened_map(spec) -> tuple[int, int, int]:
    """(C, h, w) of the map the flatten turns into the first dense layer's input (C3 x 2 x 1 by default)."""
    return next(n.in_shape for n in nodes(spec) if n.kind == "flatten")


# --------------------------------------------------------------------------------------------------------
# channels kept across a layer and its consumers (pruning)


def kept_channels(spec, removed: dict[str, list[int]] | None, names: tuple[str, ...] = CONVS) -> dict[str, list[int]]:
    """Per layer of ``names``: its output indices that remain when ``removed[layer]`` are taken out, ascending
    (channel ``j`` of the smaller layer is original channel ``kept[layer][j]``). Indices out of range are
    ignored here; :func:`lcasc.prune.prune_network` refuses them."""
    removed = removed or {}
    return {name: [i for i in range(width(spec, name)) if i not in set(removed.get(name, []))] for name in names}


def channel_selection(spec, keep: dict[str, list[int]]) -> dict[str, tuple[list[int], list[int] | None]]:
    """Module attribute -> (output indices, input indices or None) that a network keeping the output channels
    ``keep[layer]`` (conv or dense layers; others keep all) takes from ``spec``'s network.

    Conv and dense layers: rows of the weight (and the bias) by output index, weight columns by input index.
    BatchNorm: its conv's output indices (input None). An input index follows the producer's kept channels
    through BatchNorm, activation and pooling; after the flatten, channel ``c`` of a (C, h, w) map is the
    dense input columns ``c*h*w ... c*h*w + h*w - 1``.
    """
    selection = {}
    current = [0]  # the log-mel: one input channel
    for n in nodes(spec):
        if n.kind in ("conv", "dense"):
            out = list(keep.get(n.name, range(n.out_shape[0])))
            selection[n.attr] = (out, current)
            current = out
        elif n.kind == "bn":
            selection[n.attr] = (current, None)
        elif n.kind == "flatten":
            hw = n.in_shape[1] * n.in_shape[2]
            current = [c * hw + k for c in current for k in range(hw)]
    return selection
