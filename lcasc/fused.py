"""An ensemble that computes feature maps its members share only once (paper §4, last paragraph of
"Similarity analysis": "ignoring similar feature maps ... the MACs could be further reduced").

Sharing, layer by layer from the input. Map ``k`` (original filter index, see :mod:`lcasc.similarity`) of
layer L is computed once for a group of members when

- every member of the group has MSE <= ``threshold`` on map ``k`` against the group's representative
  (the first member, in member order, that opened the group), measured with
  :func:`lcasc.similarity.feature_map_mse` on the unfused networks; and
- the filter's inputs are literally the same tensors for all of them: for C1 the log-mel, for C2/C3 the
  member's whole previous layer must consist of the same (shared) maps, in the same order. A C2/C3 filter
  sums over all its member's input channels, so one member-specific input already makes its map different.

A shared map is computed with the representative's weights (conv, bias, BatchNorm) and fed to every member
of its group; every other map is computed by its own member. Groups are built greedily: a member joins the
first group of map ``k`` whose representative it matches, or opens a new one. With ``threshold=0`` only
maps that were exactly equal on the analysis clips are shared (e.g. identical C1 weights); a negative
threshold shares nothing.

Module layout (one forward pass runs every layer once, so :func:`lcasc.complexity.count` counts shared
computations once): per layer, "units" = one ``Conv2d`` + ``BatchNorm2d`` per distinct input signature
holding every distinct filter with that input; their outputs are concatenated into the layer's "pool" of
distinct maps. A unit or member head picks its input channels from the previous pool with ``index_select``
(no module, so no MACs: a gather is a copy). P1 and P2 pool the distinct maps once. Each member keeps its
own fc1/fc2; the output is the mean of the members' softmax probabilities (paper §3).

INT8: :mod:`lcasc.export.fused_tflite` writes it as a full-integer TFLite file for TFLite Micro, the same
route as :mod:`lcasc.export.tflite` for single networks (GATHER picks channels, CONCATENATION joins units
and the members' logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from lcasc import complexity
from lcasc.models import graph
from lcasc.models.cnn import ACTIVATIONS, LowComplexityCNN
from lcasc.similarity import DEFAULT_THRESHOLD, LAYERS, layer_width, pair_result

# the family's layers after the last conv block: pooling (run once on the distinct maps), then per member
# the flatten and the dense layers with their activations
HEAD_POOLS = tuple(layer for layer in graph.head() if layer.kind == "pool")
HEAD_LAYERS = tuple(layer for layer in graph.head() if layer.kind != "pool")

# --------------------------------------------------------------------------------------------------------
# plan: which maps are shared (plain data)


@dataclass
class _Group:
    """One distinct map of a layer: original filter ``index`` computed with ``rep``'s weights, used by ``users``."""

    index: int
    rep: str
    signature: tuple[int, ...]  # distinct-map ids (previous layer's pool) the filter reads, in order
    users: list[str] = field(default_factory=list)
    id: int = -1  # position in the layer's pool


def _mse_lookup(mse: Mapping | None, layer: str):
    """(a, b, k) -> MSE of map k between members a and b (inf when not measured)."""
    result = None if mse is None else mse.get(layer)
    cache: dict[tuple[str, str], dict[int, float]] = {}

    def get(a: str, b: str, k: int) -> float:
        if result is None:
            return np.inf
        if (a, b) not in cache:
            try:
                p = pair_result(result, a, b)
                cache[a, b] = {int(i): float(v) for i, v in zip(p["maps"], p["mse"])}
            except KeyError:
                cache[a, b] = {}
        v = cache[a, b].get(int(k), np.inf)
        return np.inf if v is None or np.isnan(v) else v

    return get


def _saved_lookup(rows: Sequence) -> object:
    """(a, b, k) -> 0 when a saved plan (:meth:`FusedEnsemble.sharing_plan` rows of one layer) has member b
    use map k of representative a, else inf: replays a sharing decided earlier without its MSE."""
    same = {(int(k), rep, user) for k, rep, users in rows for user in users}
    return lambda a, b, k: 0.0 if (int(k), a, b) in same else np.inf


def plan_sharing(names: list[str], kept: dict[str, dict[str, list[int]]], mse: Mapping | None,
                 threshold: float, saved: Mapping | None = None) -> dict[str, list[_Group]]:
    """Layer -> its distinct maps (:class:`_Group`, ``id`` = position in the pool, units contiguous).

    ``kept[name][layer]``: original indices of the member's channels; ``mse[layer]``: a
    :func:`lcasc.similarity.feature_map_mse` result (or the same structure) naming the members.
    ``saved``: a :meth:`FusedEnsemble.sharing_plan` to replay instead of deciding from ``mse``.
    """
    plan: dict[str, list[_Group]] = {}
    prev = {n: (0,) for n in names}  # C1 reads the single log-mel channel
    for layer in LAYERS:
        get = _mse_lookup(mse, layer) if saved is None else _saved_lookup(saved[layer])
        groups: list[_Group] = []
        for k in sorted({i for n in names for i in kept[n][layer]}):
            open_k: list[_Group] = []
            for n in names:
                if k not in kept[n][layer]:
                    continue
                sig = tuple(prev[n])
                home = next((g for g in open_k if g.signature == sig and get(g.rep, n, k) <= threshold), None)
                if home is None:
                    home = _Group(index=k, rep=n, signature=sig)
                    open_k.append(home)
                    groups.append(home)
                home.users.append(n)
        # units: one conv per input signature (order of first appearance); ids contiguous per unit
        by_sig: dict[tuple[int, ...], list[_Group]] = {}
        for g in groups:
            by_sig.setdefault(g.signature, []).append(g)
        ordered = [g for unit in by_sig.values() for g in unit]
        for i, g in enumerate(ordered):
            g.id = i
        plan[layer] = ordered
        where = {(n, g.index): g.id for g in ordered for n in g.users}
        prev = {n: tuple(where[n, k] for k in kept[n][layer]) for n in names}
    return plan


# --------------------------------------------------------------------------------------------------------
# the module


class _Unit(nn.Module):
    """Distinct filters of one layer that read the same input channels: conv + BN (``inputs``: pool ids)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, inputs: list[int], identity: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.register_buffer("inputs", torch.tensor(inputs, dtype=torch.long), persistent=False)
        self.identity = identity  # reads the whole previous pool in order: no gather needed

    def forward(self, pool: torch.Tensor) -> torch.Tensor:
        x = pool if self.identity else pool.index_select(1, self.inputs)
        return self.bn(self.conv(x))


class Head(nn.Module):
    """A member's flatten and dense layers on its pooled last-layer maps (``channels``: ids in the pooled pool,
    in its order); the modules are copies of the member's, under the member's attribute names."""

    def __init__(self, member: LowComplexityCNN, channels: list[int], identity: bool):
        super().__init__()
        for layer in HEAD_LAYERS:
            src = getattr(member, layer.attr) if layer.attr else None
            if layer.kind == "dense":
                setattr(self, layer.attr, nn.Linear(src.in_features, src.out_features))
                getattr(self, layer.attr).load_state_dict(src.state_dict())
            elif layer.kind == "act":
                setattr(self, layer.attr, ACTIVATIONS[member.spec.activations[layer.act]]())
        self.register_buffer("channels", torch.tensor(channels, dtype=torch.long), persistent=False)
        self.identity = identity

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = pooled if self.identity else pooled.index_select(1, self.channels)
        for layer in HEAD_LAYERS:  # channel-major flatten, as the member's
            x = torch.flatten(x, 1) if layer.kind == "flatten" else getattr(self, layer.attr)(x)
        return x


def _check_compatible(members: list[LowComplexityCNN]) -> None:
    ones = dict.fromkeys(graph.HIDDEN_WIDTHS, 1)
    base = replace(members[0].spec, **ones)
    for m in members[1:]:
        if replace(m.spec, **ones) != base:
            raise ValueError(f"members must differ only in widths: {m.spec} vs {members[0].spec}")


class FusedEnsemble(nn.Module):
    """Members of one ensemble with shared feature maps computed once (see the module docstring).

    ``members``: LowComplexityCNN of the same spec except widths (not modified; weights are copied).
    ``kept``: per member, layer -> original filter index of each channel (default ``range(width)``).
    ``mse``: layer -> :func:`lcasc.similarity.feature_map_mse` result over these members (keyed by
    ``names``); ``None`` or a missing layer/pair shares nothing there. ``names`` default ``"0"``, ``"1"``...
    ``plan``: a saved :meth:`sharing_plan` to rebuild a fused ensemble without its MSE (``mse`` unused).

    forward: (N, 1, n_mels, n_frames) or (N, n_mels, n_frames) log-mel -> (N, n_classes) mean of the
    members' softmax probabilities. Always in eval mode (BatchNorm uses its running statistics).
    """

    def __init__(self, members: Sequence[LowComplexityCNN], kept: Sequence[Mapping[str, Sequence[int]] | None] | None,
                 mse: Mapping | None, threshold: float = DEFAULT_THRESHOLD, names: Sequence[str] | None = None,
                 plan: Mapping | None = None):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a fused ensemble needs at least one member")
        _check_compatible(members)
        self.names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(members))]
        if len(self.names) != len(members) or len(set(self.names)) != len(self.names):
            raise ValueError("names must be distinct, one per member")
        kept = list(kept) if kept is not None else [None] * len(members)
        if len(kept) != len(members):
            raise ValueError("kept needs one entry per member")
        self.kept = {}
        for n, m, k in zip(self.names, members, kept):
            self.kept[n] = {}
            for layer in LAYERS:
                idx = [int(i) for i in (k or {}).get(layer, range(layer_width(m.spec, layer)))]
                if len(idx) != layer_width(m.spec, layer) or len(set(idx)) != len(idx):
                    raise ValueError(f"member {n}, {layer}: kept must list {layer_width(m.spec, layer)} "
                                     f"distinct original indices, got {idx}")
                self.kept[n][layer] = idx
        self.spec = members[0].spec
        self.threshold = float(threshold)
        self.plan = plan_sharing(self.names, self.kept, mse, self.threshold, plan)
        if plan is not None and self.sharing_plan() != {layer: [list(r) for r in plan[layer]] for layer in LAYERS}:
            raise ValueError("the saved sharing plan does not fit these members")
        by_name = dict(zip(self.names, members))

        spec = self.spec
        self.units = nn.ModuleDict()
        self.acts = nn.ModuleDict({b.conv.name: ACTIVATIONS[spec.activations[b.act.act]]()
                                   for b in graph.conv_blocks()})
        prev_width = 1
        for block in graph.conv_blocks():
            self.units[block.conv.name] = self._units(block, by_name, prev_width)
            prev_width = len(self.plan[block.conv.name])
        for pool in graph.nodes(spec):
            if pool.kind == "pool":
                setattr(self, pool.attr, nn.AvgPool2d(pool.window))
        where = {(n, g.index): g.id for g in self.plan[LAYERS[-1]] for n in g.users}
        n3 = len(self.plan[LAYERS[-1]])
        self.heads = nn.ModuleList()
        for n in self.names:
            channels = [where[n, i] for i in self.kept[n][LAYERS[-1]]]
            self.heads.append(Head(by_name[n], channels, channels == list(range(n3))))
        self.eval()

    @torch.no_grad()
    def _units(self, block: graph.ConvBlock, by_name: dict[str, LowComplexityCNN], prev_width: int) -> nn.ModuleList:
        """The units of conv layer ``block``: one Conv2d + BatchNorm per contiguous run of distinct maps that read
        the same input, each filter's weights copied from the map's representative."""
        layer, k = block.conv.name, graph.node(self.spec, block.conv.name).window[0]
        units = nn.ModuleList()
        groups = self.plan[layer]
        start = 0
        while start < len(groups):  # contiguous runs of one signature
            sig = groups[start].signature
            stop = start
            while stop < len(groups) and groups[stop].signature == sig:
                stop += 1
            run = groups[start:stop]
            unit = _Unit(len(sig), len(run), k, list(sig), list(sig) == list(range(prev_width)))
            for j, g in enumerate(run):
                conv, bn = getattr(by_name[g.rep], block.conv.attr), getattr(by_name[g.rep], block.bn.attr)
                pos = self.kept[g.rep][layer].index(g.index)
                unit.conv.weight[j].copy_(conv.weight[pos])
                unit.conv.bias[j].copy_(conv.bias[pos])
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(unit.bn, attr)[j].copy_(getattr(bn, attr)[pos])
                if abs(bn.eps - unit.bn.eps) > 1e-12:
                    raise ValueError("members must use BatchNorm eps 1e-5")
            units.append(unit)
            start = stop
        return units

    def train(self, mode: bool = True) -> FusedEnsemble:
        """Always evaluation mode: a fused ensemble is built from trained members and is not trained."""
        return super().train(False)

    def sharing(self) -> dict:
        """Per layer: ``member_maps`` (sum of the members' widths), ``distinct_maps`` (computed here),
        ``shared`` ([[original index, representative, [users]]] for maps used by more than one member)."""
        out = {}
        for layer in LAYERS:
            groups = self.plan[layer]
            out[layer] = {"member_maps": sum(len(g.users) for g in groups), "distinct_maps": len(groups),
                          "shared": [[g.index, g.rep, list(g.users)] for g in groups if len(g.users) > 1]}
        return out

    def sharing_plan(self) -> dict[str, list[list]]:
        """Layer -> every distinct map as ``[original index, representative, [users]]`` in pool order (JSON):
        with the members, their ``kept`` and the threshold it rebuilds this module (``plan=``)."""
        return {layer: [[g.index, g.rep, list(g.users)] for g in self.plan[layer]] for layer in LAYERS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, n_mels, n_frames) or (N, n_mels, n_frames) -> (N, n_classes) mean member probabilities."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        pool = x
        for block in graph.conv_blocks():
            for p in block.pools:
                pool = getattr(self, p.attr)(pool)
            outs = [unit(pool) for unit in self.units[block.conv.name]]
            # activations are elementwise: one call on the joined pool equals one per unit
            pool = self.acts[block.conv.name](outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))
        pooled = pool
        for p in HEAD_POOLS:
            pooled = getattr(self, p.attr)(pooled)
        probs = [torch.softmax(head(pooled), dim=1) for head in self.heads]
        return torch.stack(probs).mean(dim=0)

    def predict_proba(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(N, n_mels, n_frames) float32 -> (N, n_classes) float32 probabilities, batched (default
        :data:`lcasc.train.INFERENCE_BATCH`), no gradients."""
        from lcasc.train import INFERENCE_BATCH

        batch_size = batch_size or INFERENCE_BATCH
        X = np.asarray(X, dtype=np.float32)
        out = []
        device = next(self.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                out.append(self(torch.from_numpy(np.ascontiguousarray(X[start:start + batch_size])).to(device)).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.spec.n_classes), np.float32)


def as_lists(members, kept) -> tuple[list[str], list[LowComplexityCNN], list]:
    if isinstance(members, Mapping):
        names = [str(n) for n in members]
        nets = list(members.values())
        kept_list = [(kept or {}).get(n) for n in members] if isinstance(kept, Mapping) or kept is None else list(kept)
    else:
        nets = list(members)
        names = [str(i) for i in range(len(nets))]
        kept_list = list(kept) if kept is not None else [None] * len(nets)
    return names, nets, kept_list


def build_fused(members: Mapping[str, LowComplexityCNN] | Sequence[LowComplexityCNN],
                kept: Mapping[str, Mapping[str, Sequence[int]]] | Sequence | None, mse: Mapping | None,
                threshold: float = DEFAULT_THRESHOLD) -> FusedEnsemble:
    """:class:`FusedEnsemble` from ``{name: net}`` (names as in ``mse``) or a list (names ``"0"``, ``"1"``...),
    ``kept`` as ``{name: {layer: [original indices]}}`` or a list in member order (None: unpruned)."""
    names, nets, kept_list = as_lists(members, kept)
    return FusedEnsemble(nets, kept_list, mse, threshold, names)


def fused_complexity(fused: FusedEnsemble) -> complexity.Complexity:
    """Params (Keras convention, BN running statistics included) and MACs (METHOD-NOTES §4) of the fused
    ensemble for one clip, each shared map counted once; ``size_bytes`` as :func:`lcasc.complexity.count`."""
    return complexity.count(fused, (1, 1, fused.spec.n_mels, fused.spec.n_frames))


def unfused_complexity(members: Sequence[LowComplexityCNN]) -> complexity.Complexity:
    """The ordinary ensemble: every member counted in full, summed."""
    return complexity.total([complexity.count(m, (1, 1, m.spec.n_mels, m.spec.n_frames)) for m in members])


def ensemble_proba(members: Sequence[LowComplexityCNN], X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The unfused ensemble (EnsembleClassifier): mean over members of softmax probabilities, (N, C) float64."""
    from lcasc.train import predict_logits

    return np.mean([torch.softmax(torch.from_numpy(predict_logits(m, X, batch_size)).double(), dim=1).numpy()
                    for m in members], axis=0)
