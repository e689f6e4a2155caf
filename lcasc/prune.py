"""Similarity-based filter pruning (METHOD-NOTES §5), and two criteria to compare it with.

Per convolution layer, on the trained unpruned network:
1. each filter's kernel as a (k_h*k_w) x C_in matrix; its rank-1 SVD approximation u1 s1 v1^T; the filter's
   prototype is the first column of u1 v1^T, L2-normalised (for C1, one input channel: the filter / its norm);
2. cosine distance (1 - cos) between every pair of prototypes;
3. every filter's nearest neighbour; of each mutual nearest-neighbour pair the higher index is removed.
The number removed per layer is therefore found, not set. Removing a filter of a conv also removes its bias,
its BatchNorm entries, the next conv's input channel and, after C3, the dense-input columns of its channel.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from lcasc.models import graph
from lcasc.models.cnn import LowComplexityCNN
from lcasc.names import CRITERIA

LAYERS = graph.CONVS


def _kernel(weight) -> np.ndarray:
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    if w.ndim != 4:
        raise ValueError(f"expected a conv kernel (out_channels, in_channels, kh, kw), got shape {w.shape}")
    return w.astype(np.float64)


def prototypes(weight) -> np.ndarray:
    """(out, in, kh, kw) kernel -> (out, kh*kw) unit-norm rank-1 prototypes (all-zero filters stay zero)."""
    w = _kernel(weight)
    out, cin, kh, kw = w.shape
    mats = w.reshape(out, cin, kh * kw).transpose(0, 2, 1)  # rows: spatial taps (row-major), cols: channels
    u, _, vt = np.linalg.svd(mats, full_matrices=False)
    protos = u[:, :, 0] * vt[:, 0, :1]  # first column of u1 v1^T, i.e. u1 * v1[0]
    norms = np.linalg.norm(protos, axis=1, keepdims=True)
    return np.divide(protos, norms, out=np.zeros_like(protos), where=norms > 1e-12)


def cosine_distances(weight) -> np.ndarray:
    """(out, out) matrix of 1 - cos between prototypes; a zero filter is at distance 1 from everything."""
    p = prototypes(weight)
    return 1.0 - np.clip(p @ p.T, -1.0, 1.0)


def similar_filter_pairs(weight) -> list[tuple[int, int]]:
    """Mutual nearest-neighbour pairs (i, j), i < j, sorted. Ties go to the lower index (np.argmin)."""
    d = cosine_distances(weight)
    if len(d) < 2:
        return []
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    return sorted((i, int(j)) for i, j in enumerate(nearest) if i < j and nearest[j] == i)


def redundant_filters(weight) -> list[int]:
    """Filters to remove: one per mutual pair, the higher index, sorted."""
    return sorted(j for _, j in similar_filter_pairs(weight))


def l1_filters(weight, n: int) -> list[int]:
    """The ``n`` filters with the smallest L1 norm (ties: lower index first), sorted."""
    norms = np.abs(_kernel(weight)).reshape(len(_kernel(weight)), -1).sum(axis=1)
    return sorted(int(i) for i in np.argsort(norms, kind="stable")[:n])


def random_filters(n_out: int, n: int, seed: int) -> list[int]:
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_out, n, replace=False))


def layer_weights(model: LowComplexityCNN) -> dict[str, np.ndarray]:
    return {name: conv.weight.detach().cpu().numpy() for name, conv, _ in model.conv_blocks()}


def find_redundant(model: LowComplexityCNN, criterion: str = "similarity", seed: int = 0) -> dict[str, list[int]]:
    """Filters to remove per layer, computed once on the unpruned network. ``l1`` and ``random`` remove as many
    per layer as the similarity criterion does."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    out = {}
    for i, (name, w) in enumerate(layer_weights(model).items()):
        similar = redundant_filters(w)
        if criterion == "similarity":
            out[name] = similar
        elif criterion == "l1":
            out[name] = l1_filters(w, len(similar))
        else:
            out[name] = random_filters(len(w), len(similar), seed + i)
    return out


def prune_network(model: LowComplexityCNN, removed: dict[str, list[int]]) -> LowComplexityCNN:
    """A new, physically smaller network without the ``removed`` filters (keys C1, C2, C3); ``model`` is kept.

    Which weights go with a filter (its BatchNorm entries, the consumer's input channels or dense columns) is
    :func:`lcasc.models.graph.channel_selection`.
    """
    unknown = set(removed) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(sorted(unknown))}; expected C1, C2 or C3")
    spec = model.spec
    keep = graph.kept_channels(spec, removed)
    for layer in LAYERS:
        n = graph.width(spec, layer)
        bad = [i for i in set(removed.get(layer, [])) if not 0 <= i < n]
        if bad:
            raise ValueError(f"{layer}: filter index {bad[0]} out of range 0..{n - 1}")
        if not keep[layer]:
            raise ValueError(f"{layer}: cannot remove all {n} filters")
    new = LowComplexityCNN.from_spec(replace(spec, **{graph.layer(c).width: len(keep[c]) for c in LAYERS}))
    with torch.no_grad():
        for attr, (out, inputs) in graph.channel_selection(spec, keep).items():
            _copy_selected(getattr(model, attr), getattr(new, attr), out, inputs)
    return new.train(model.training)


def _copy_selected(old: torch.nn.Module, new: torch.nn.Module, out: list[int], inputs: list[int] | None) -> None:
    """Copy into ``new`` the rows ``out`` (and weight columns ``inputs``) of ``old``'s parameters; a BatchNorm
    (``inputs`` None) also its running statistics and batch count."""
    out_idx = torch.tensor(out)
    if inputs is None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, name).copy_(getattr(old, name)[out_idx])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
        return
    new.weight.copy_(old.weight[out_idx][:, torch.tensor(inputs)])
    new.bias.copy_(old.bias[out_idx])
