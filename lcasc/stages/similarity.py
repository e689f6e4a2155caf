"""Paper Figure 5: how similar the feature maps of the run's pruned networks are (``similarity.json``)."""

from __future__ import annotations

import logging

from lcasc import similarity
from lcasc.io import read_json, write_json
from lcasc.models import graph
from lcasc.models.cnn import CNNClassifier
from lcasc.names import UNPRUNED
from lcasc.run import Run, RunError

log = logging.getLogger("lcasc")


def networks_with_kept(run: Run, names: list[str]) -> tuple[dict, dict]:
    """({name: LowComplexityCNN}, {name: {layer: original filter indices}}) of float networks of the run."""
    entries = {n["name"]: n for n in run.results()["networks"]}
    unknown = [m for m in names if m not in entries or entries[m]["precision"] != "float32"
               or entries[m].get("kind", "cnn") != "cnn"]
    if unknown:
        raise RunError(f"not float CNNs of this run: {', '.join(unknown)}")
    base = CNNClassifier.load(run.model_dir(UNPRUNED)).spec
    nets = {m: CNNClassifier.load(run.model_dir(m)).net for m in names}
    return nets, {m: similarity.kept_from_removed(base, entries[m].get("removed")) for m in names}


def run(run: Run, layers: tuple[str, ...] = graph.CONVS, clips: int = 10_000,
                     threshold: float = 1e-4) -> dict:
    """Paper Figure 5: aggregated MSE between corresponding feature maps (same original filter) of every pair
    of the run's similarity-pruned networks and the unpruned one, on up to ``clips`` validation clips
    (the paper: 10k validation examples). Writes ``similarity.json`` and the figures."""
    names = [n["name"] for n in run.results()["networks"] if n["precision"] == "float32" and n.get("kind") == "cnn"
             and (n["name"] == UNPRUNED or n.get("criterion") == "similarity")]
    if len(names) < 2:
        raise RunError("the similarity analysis needs at least two networks: run `lcasc prune` first")
    settings = {"networks": names, "layers": list(layers), "clips": clips, "threshold": threshold}
    summary = read_json(run.dir / "similarity.json")
    if summary is not None and summary.get("settings") == settings:
        log.info("similarity: already computed for these networks and settings (similarity.json)")
        return summary
    nets, kept = networks_with_kept(run, names)
    summary = similarity.analyse(nets, kept, run.split("validate").X, tuple(layers), threshold,
                                 run.dir / "figures", clips, seed=run.seed)
    summary["settings"] = settings
    write_json(run.dir / "similarity.json", summary)
    counts = {layer: len(res["shared"]) for layer, res in summary["layers"].items()}
    run.update_results(similarity={"file": "similarity.json", "threshold": threshold,
                                   "n_clips": summary["n_clips"], "shared_maps": counts})
    log.info("similarity: %s pairs of maps with MSE <= %g over %d clips", ", ".join(
        f"{layer} {n}" for layer, n in counts.items()), threshold, summary["n_clips"])
    return summary
