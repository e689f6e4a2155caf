"""Feature-map similarity between networks of one ensemble (paper §4 "Similarity analysis", Figure 5).

Networks pruned from the same unpruned network and fine-tuned separately keep many of their filters nearly
unchanged, so a map computed by one is often almost the map computed by another. METHOD-NOTES §7 (last
bullet): for two networks, the mean squared error between *corresponding* feature maps of a layer,
aggregated over 10k clips; maps with MSE <= 1e-4 count as shared.

Correspondence is by the filter's ORIGINAL index in the unpruned network: pruning removes filters, so map
``j`` of a pruned network is the map of original filter ``kept[j]`` (``kept`` = every original index minus
the removed ones, in order, as :func:`lcasc.prune.prune_network` keeps them). Two networks are compared on
the original indices both kept.

MSE of one map = mean over clips and positions of ``(a - b) ** 2`` of the maps after the layer's
activation (:meth:`LowComplexityCNN.features`). It is computed streaming (float64 running sums over
batches), so memory does not grow with the number of clips.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from lcasc.models import graph
from lcasc.models.cnn import LowComplexityCNN

LAYERS = graph.CONVS
DEFAULT_THRESHOLD = 1e-4  # paper: "similar with MSE <= 10^-4"
DEFAULT_CLIPS = 10_000  # paper: "10k audio examples from the validation dataset"


def from_json(data: dict) -> dict:
    """The :func:`feature_map_mse` result of one layer back from :func:`to_json` data (``similarity.json``):
    ``pairs`` with ``maps`` and float64 ``mse`` arrays (None -> NaN) and the ``shared`` maps, as computed."""
    shared: dict[tuple[str, str], list[int]] = {}
    for a, b, k in data["shared"]:
        shared.setdefault((a, b), []).append(int(k))
    pairs = {}
    for key, p in data["per_pair"].items():
        a, b = key.split("|")
        pairs[a, b] = {"maps": np.array(p["maps"], dtype=int),
                       "mse": np.array([np.nan if v is None else v for v in p["mse"]], dtype=np.float64),
                       "shared": shared.get((a, b), [])}
    return {"layer": data["layer"], "names": data["names"], "n_clips": data["n_clips"],
            "threshold": data["threshold"], "pairs": pairs}


# --------------------------------------------------------------------------------------------------------
# correspondence


def layer_width(spec, layer: str) -> int:
    """Number of filters of ``layer`` (C1, C2, C3) in the network ``spec`` describes."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(LAYERS)}")
    return graph.width(spec, layer)


def kept_from_removed(base_spec, removed: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Original filter indices a network pruned from ``base_spec`` with ``removed`` keeps, per layer.

    The same as :func:`lcasc.prune.prune_network` keeps (:func:`lcasc.models.graph.kept_channels`):
    ``kept[layer] = range(width) - removed[layer]``, ascending; channel ``j`` of the pruned layer is original
    filter ``kept[layer][j]``.
    """
    return graph.kept_channels(base_spec, removed, LAYERS)


def _kept_for(net: LowComplexityCNN, layer: str, kept: list[int] | None) -> list[int]:
    width = layer_width(net.spec, layer)
    kept = list(range(width)) if kept is None else [int(k) for k in kept]
    if len(kept) != width:
        raise ValueError(f"{layer}: {len(kept)} kept indices given for a layer of {width} filters")
    if len(set(kept)) != len(kept) or any(k < 0 for k in kept):
        raise ValueError(f"{layer}: kept indices must be distinct and non-negative, got {kept}")
    return kept


def pair_key(a: str, b: str) -> str:
    """JSON key of the pair (a, b)."""
    return f"{a}|{b}"


# --------------------------------------------------------------------------------------------------------
# clips and MSE


def select_clips(X: np.ndarray, n: int = DEFAULT_CLIPS, seed: int = 0) -> np.ndarray:
    """``n`` clips of ``X`` (N, n_mels, n_frames) for the analysis: all of them when N <= n, otherwise a fixed
    random subset (drawn with ``seed``) in the original order."""
    X = np.asarray(X)
    if len(X) <= n:
        return X
    return X[np.sort(np.random.default_rng(seed).choice(len(X), n, replace=False))]


def feature_map_mse(nets: dict[str, LowComplexityCNN], X: np.ndarray, layer: str = "C1", batch_size: int = 512,
                    kept: dict[str, list[int]] | None = None, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Aggregated MSE between corresponding feature maps of ``layer`` for every pair of ``nets``.

    ``X``: (N, n_mels, n_frames) or (N, 1, n_mels, n_frames) log-mel. ``kept``: per network, the original
    filter index of each of its ``layer`` channels (default ``range(width)``, i.e. unpruned in that layer).

    Returns a dict:

    - ``layer``, ``names`` (network order), ``n_clips``, ``threshold``;
    - ``pairs``: ``{(a, b): {"maps": (M,) int original indices both kept, ascending, "mse": (M,) float64
      MSE per map, "shared": [original indices with MSE <= threshold]}}`` for every a before b in ``names``;
    - ``mean_mse``: (n, n) float64 symmetric, mean of the per-map MSE over the maps a pair compares
      (NaN when a pair has none; 0 on the diagonal);
    - ``n_shared``, ``n_compared``: (n, n) int, maps under the threshold / maps compared per pair.
    """
    names = list(nets)
    if len(names) < 2:
        raise ValueError("feature-map similarity needs at least two networks")
    kept = kept or {}
    idx = {n: _kept_for(nets[n], layer, kept.get(n)) for n in names}
    pairs = list(combinations(names, 2))
    # per pair: the shared original indices and where they sit in each network's channels
    common = {}
    for a, b in pairs:
        maps = sorted(set(idx[a]) & set(idx[b]))
        pos_a = torch.tensor([idx[a].index(k) for k in maps], dtype=torch.long)
        pos_b = torch.tensor([idx[b].index(k) for k in maps], dtype=torch.long)
        common[a, b] = (np.array(maps, dtype=int), pos_a, pos_b)
    sums = {p: torch.zeros(len(common[p][0]), dtype=torch.float64) for p in pairs}

    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 4 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 3 or len(X) == 0:
        raise ValueError(f"X must be (N, n_mels, n_frames) with N >= 1, got shape {X.shape}")
    modes = {n: nets[n].training for n in names}
    positions = 0
    try:
        for n in names:
            nets[n].eval()
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(X[start:start + batch_size])).unsqueeze(1)
                x = x.to(next(nets[names[0]].parameters()).device)
                maps = {n: nets[n].features(x.to(next(nets[n].parameters()).device), upto=layer).cpu()
                        for n in names}
                positions += maps[names[0]].shape[0] * maps[names[0]].shape[2] * maps[names[0]].shape[3]
                for a, b in pairs:
                    _, pos_a, pos_b = common[a, b]
                    # float32 difference (exactly 0 for identical maps), squared and summed in float64
                    d = (maps[a].index_select(1, pos_a) - maps[b].index_select(1, pos_b)).double()
                    sums[a, b] += (d * d).sum(dim=(0, 2, 3))
    finally:
        for n in names:
            nets[n].train(modes[n])

    n = len(names)
    mean = np.zeros((n, n))
    n_shared = np.zeros((n, n), dtype=int)
    n_compared = np.zeros((n, n), dtype=int)
    out_pairs = {}
    for a, b in pairs:
        maps_ab = common[a, b][0]
        mse = (sums[a, b] / positions).numpy()
        shared = [int(k) for k, v in zip(maps_ab, mse) if v <= threshold]
        out_pairs[a, b] = {"maps": maps_ab, "mse": mse, "shared": shared}
        i, j = names.index(a), names.index(b)
        mean[i, j] = mean[j, i] = float(mse.mean()) if len(mse) else np.nan
        n_shared[i, j] = n_shared[j, i] = len(shared)
        n_compared[i, j] = n_compared[j, i] = len(mse)
    return {"layer": layer, "names": names, "n_clips": int(len(X)), "threshold": float(threshold),
            "pairs": out_pairs, "mean_mse": mean, "n_shared": n_shared, "n_compared": n_compared}


def pair_result(result: dict, a: str, b: str) -> dict:
    """The entry of ``result["pairs"]`` for (a, b) in either order (``maps``, ``mse``, ``shared``)."""
    pairs = result["pairs"]
    if (a, b) in pairs:
        return pairs[a, b]
    if (b, a) in pairs:
        return pairs[b, a]
    raise KeyError(f"no pair ({a}, {b}) in the {result.get('layer')} result")


def to_json(result: dict) -> dict:
    """A :func:`feature_map_mse` result as plain JSON data (NaN -> None, pair keys ``"a|b"``)."""
    def clean(v):
        return None if v is None or not np.isfinite(v) else float(v)

    return {
        "layer": result["layer"], "names": result["names"], "n_clips": result["n_clips"],
        "threshold": result["threshold"],
        "mean_mse": [[clean(v) for v in row] for row in np.asarray(result["mean_mse"])],
        "n_shared": np.asarray(result["n_shared"]).tolist(),
        "n_compared": np.asarray(result["n_compared"]).tolist(),
        "shared": [[a, b, k] for (a, b), p in result["pairs"].items() for k in p["shared"]],
        "per_pair": {pair_key(a, b): {"maps": [int(k) for k in p["maps"]], "mse": [clean(v) for v in p["mse"]]}
                     for (a, b), p in result["pairs"].items()},
    }


# --------------------------------------------------------------------------------------------------------
# figures


def plot_mse_matrix(result: dict, path: str | Path) -> None:
    """Heat map of the pairwise mean MSE (log10 colour scale), each cell annotated with the mean MSE and
    ``shared/compared`` maps."""
    from lcasc.plots import _save, plt

    names, mean = result["names"], np.asarray(result["mean_mse"], dtype=float)
    n = len(names)
    shown = np.full_like(mean, np.nan)
    off = ~np.eye(n, dtype=bool) & np.isfinite(mean) & (mean > 0)
    shown[off] = np.log10(mean[off])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * n, 1.2 + 0.9 * n))
    im = ax.imshow(shown, cmap="viridis_r")
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            value = mean[i, j]
            text = "n/a" if not np.isfinite(value) else f"{value:.1e}"
            text += f"\n{result['n_shared'][i][j]}/{result['n_compared'][i][j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black")
    ax.set_xticks(range(n), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_title(f"{result['layer']}: mean feature-map MSE ({result['n_clips']} clips)\n"
                 f"cells: mean MSE, maps with MSE <= {result['threshold']:g} / maps compared", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="log10 mean MSE")
    _save(fig, path)


def plot_mse_per_map(result: dict, a: str, b: str, path: str | Path) -> None:
    """Figure 5(a) analogue: MSE per original map index for the pair (a, b), log y axis, threshold line."""
    from lcasc.plots import _save, plt

    p = pair_result(result, a, b)
    thr = result["threshold"]
    mse = np.asarray(p["mse"], dtype=float)
    floor = 1e-12  # identical maps (MSE exactly 0) are drawn at the bottom of the log axis
    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(mse) + 2), 3.4))
    colors = ["C2" if v <= thr else "C0" for v in mse]
    ax.bar(np.arange(len(mse)), np.maximum(mse, floor), color=colors)
    ax.set_yscale("log")
    ax.axhline(thr, color="red", ls="--", lw=1, label=f"threshold {thr:g} ({len(p['shared'])} maps under it)")
    ax.set_xticks(np.arange(len(mse)), [str(k) for k in p["maps"]], fontsize=7)
    ax.set_xlabel("feature map (original filter index)")
    ax.set_ylabel("MSE")
    ax.set_title(f"{result['layer']}: {a} vs {b} ({result['n_clips']} clips)", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_example_maps(net_a: LowComplexityCNN, net_b: LowComplexityCNN, clip: np.ndarray, layer: str,
                      maps: list[int], path: str | Path, names: tuple[str, str] = ("A", "B"),
                      kept_a: list[int] | None = None, kept_b: list[int] | None = None,
                      mse: dict[int, float] | None = None) -> None:
    """Figure 5(b) analogue: for each original map index in ``maps`` (e.g. one similar, one different), that
    map of ``net_a`` and of ``net_b`` side by side for one ``clip`` (n_mels, n_frames), same colour scale."""
    from lcasc.plots import _save, plt

    ka, kb = _kept_for(net_a, layer, kept_a), _kept_for(net_b, layer, kept_b)
    x = torch.from_numpy(np.asarray(clip, np.float32).reshape(1, 1, *np.shape(clip)[-2:]))
    modes = net_a.training, net_b.training
    try:
        net_a.eval()
        net_b.eval()
        with torch.inference_mode():
            fa, fb = net_a.features(x, upto=layer)[0].numpy(), net_b.features(x, upto=layer)[0].numpy()
    finally:
        net_a.train(modes[0])
        net_b.train(modes[1])
    fig, axes = plt.subplots(len(maps), 2, figsize=(7.5, 2.5 * len(maps)), squeeze=False, layout="constrained")
    for row, k in enumerate(maps):
        a, b = fa[ka.index(k)], fb[kb.index(k)]
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        for col, (m, name) in enumerate(((a, names[0]), (b, names[1]))):
            ax = axes[row, col]
            im = ax.imshow(m, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
            title = f"{name}: {layer} map {k}"
            if mse is not None and k in mse:
                title += f" (MSE {mse[k]:.1e})"
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("frame", fontsize=7)
            ax.set_ylabel("mel band", fontsize=7)
        fig.colorbar(im, ax=axes[row].tolist(), fraction=0.03)
    _save(fig, path)


# --------------------------------------------------------------------------------------------------------
# the analysis the pipeline runs


def _figure5_pair(result: dict) -> tuple[str, str]:
    """The pair with the most maps under the threshold (ties: the lower mean MSE, then name order)."""
    def key(pair):
        p = result["pairs"][pair]
        mse = np.asarray(p["mse"], dtype=float)
        return -len(p["shared"]), float(mse.mean()) if len(mse) else np.inf

    return min(result["pairs"], key=key)


def analyse(nets: dict[str, LowComplexityCNN], kept: dict[str, dict[str, list[int]]], X: np.ndarray,
            layers: tuple[str, ...] = LAYERS, threshold: float = DEFAULT_THRESHOLD, figure_dir: Path | None = None,
            n_clips: int = DEFAULT_CLIPS, batch_size: int = 512, seed: int = 0,
            pair: tuple[str, str] | None = None) -> dict:
    """Feature-map similarity of ``nets`` on up to ``n_clips`` clips of ``X`` (N, n_mels, n_frames), per layer.

    ``kept``: network name -> layer -> original filter indices of its channels (networks or layers missing
    are unpruned there; see :func:`kept_from_removed`). Figures go to ``figure_dir`` (skipped when None):
    ``similarity_mse_<layer>.png`` (pairwise mean-MSE heat map per layer), ``similarity_fig5a.png`` (MSE per
    map of one pair on the first layer: ``pair`` or the pair sharing the most maps) and
    ``similarity_fig5b.png`` (the most similar and the most different map of that pair for the first clip).

    Returns JSON-serialisable data: ``threshold``, ``n_clips``, ``layers`` (layer -> :func:`to_json` of its
    :func:`feature_map_mse`: ``names``, ``mean_mse`` and ``n_shared``/``n_compared`` matrices, ``shared`` as
    ``[netA, netB, original map index]`` triples, ``per_pair`` MSE per map), ``figure5_pair`` and
    ``figures`` (file names written).
    """
    X = select_clips(X, n_clips, seed)
    results = {layer: feature_map_mse(nets, X, layer, batch_size, {n: kept.get(n, {}).get(layer) for n in nets},
                                      threshold)
               for layer in layers}
    first = results[layers[0]]
    a, b = pair if pair is not None else _figure5_pair(first)
    figures = []
    if figure_dir is not None:
        figure_dir = Path(figure_dir)
        for layer, res in results.items():
            name = f"similarity_mse_{layer}.png"
            plot_mse_matrix(res, figure_dir / name)
            figures.append(name)
        plot_mse_per_map(first, a, b, figure_dir / "similarity_fig5a.png")
        p = pair_result(first, a, b)
        mse = np.asarray(p["mse"], dtype=float)
        if len(mse):
            maps = [int(p["maps"][np.argmin(mse)])]
            if len(mse) > 1:
                maps.append(int(p["maps"][np.argmax(mse)]))
            plot_example_maps(nets[a], nets[b], np.asarray(X[0]).reshape(X.shape[-2:]), first["layer"], maps,
                              figure_dir / "similarity_fig5b.png", (a, b), kept.get(a, {}).get(first["layer"]),
                              kept.get(b, {}).get(first["layer"]), dict(zip(p["maps"].tolist(), mse.tolist())))
            figures += ["similarity_fig5a.png", "similarity_fig5b.png"]
        else:
            figures.append("similarity_fig5a.png")
    return {"threshold": float(threshold), "n_clips": int(len(X)),
            "layers": {layer: to_json(res) for layer, res in results.items()},
            "figure5_pair": [a, b], "figures": figures}
