"""Ensembles of the run's networks: paper Table 3 (all members, each leave-one-out subset) for float and
INT8 members, and the best subset within the DCASE budget (chosen on validation, reported on test)."""

from __future__ import annotations

import numpy as np

from lcasc import complexity, plots
from lcasc.classifier import mean_probabilities
from lcasc.ensemble import best_subset, paper_table3_subsets
from lcasc.io import read_json
from lcasc.registry import resolve
from lcasc.run import Run, RunError
from lcasc.stages.evaluate import evaluate_probs, test_and_validation_probs


def member_classifier(run: Run, entry: dict):
    """The classifier behind a ``results.json`` network entry (float model in PyTorch or INT8 file in TFLM),
    from the registry ``lcasc predict`` uses too."""
    backend = "tflite" if entry.get("precision") == "int8" else "torch"
    return resolve(run.dir, entry["name"], backend, run.results()).classifier


def _cost(entry: dict) -> complexity.Complexity:
    return complexity.Complexity(entry["params"], entry["macs"], round(entry["size_kb"] * 1000))


def run(run: Run, members: list[str] | None = None, budget_params: int = complexity.DCASE_MAX_PARAMS,
                   budget_macs: int = complexity.DCASE_MAX_MACS) -> list[dict]:
    """Paper Table 3 (all members and each leave-one-out subset) for float and INT8 members, and the best
    subset of all networks within a budget, chosen on the validation split and reported on the test split."""
    nets = {n["name"]: n for n in run.results()["networks"] if n.get("kind", "cnn") == "cnn"}
    va = run.split("validate")
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def member_probs(name):
        if name not in probs:
            probs[name] = run.probabilities(name)
        if probs[name] is None:
            probs[name] = test_and_validation_probs(run, member_classifier(run, nets[name]))
        return probs[name]

    def record(name, subset, extra):
        cost = complexity.total([_cost(nets[m]) for m in subset])
        fields = evaluate_probs(run, name, mean_probabilities([member_probs(m)[0] for m in subset]),
                                mean_probabilities([member_probs(m)[1] for m in subset]), figure=False)
        entry = {"name": name, "kind": "ensemble", "members": list(subset),
                 "precision": "/".join(sorted({nets[m]["precision"] for m in subset})), **fields,
                 "params": cost.params, "macs": cost.macs, "size_kb": cost.size_kb,
                 "within_dcase_limits": cost.within_dcase_limits, **extra}
        run.record("ensembles", entry)
        return entry

    entries = []
    unknown = [m for m in members or [] if m not in nets]
    if unknown:
        raise RunError(f"unknown network(s) {', '.join(unknown)}; known: {', '.join(nets)}")
    for precision, suffix in (("float32", ""), ("int8", "_int8")):
        group = members or [n for n, e in nets.items() if e["precision"] == precision and e.get("criterion") ==
                            "similarity"]
        group = [m for m in group if nets[m]["precision"] == precision]
        if len(group) < 2:
            continue
        short = {m: nets[m].get("pruned_layers", m).removesuffix("_int8") for m in group}
        # The default family is paper Table 3 (all / without_X); other member sets are named by their members,
        # so that they never replace the default entries.
        prefix = "ensemble" if not members else "ensemble_" + "_".join(short[m] for m in group)
        for subset in paper_table3_subsets(group):
            left_out = [short[m] for m in group if m not in subset]
            label = f"without_{left_out[0]}" if left_out else "all"
            entries.append(record(f"{prefix}_{label}{suffix}", subset,
                                  {"table": "paper_table3" if not members else "members"}))
        candidates = {m: member_probs(m)[1] for m in nets if nets[m]["precision"] == precision}
        best = best_subset(candidates, va.y, {m: _cost(nets[m]) for m in candidates}, budget_params, budget_macs)
        if best is not None:
            default_budget = (budget_params, budget_macs) == (complexity.DCASE_MAX_PARAMS, complexity.DCASE_MAX_MACS)
            name = "ensemble_best_budget" + ("" if default_budget else f"_{budget_params}p_{budget_macs}macs")
            entry = record(f"{name}{suffix}", best[0],
                           {"table": "budget", "budget": {"params": budget_params, "macs": budget_macs}})
            entries.append(entry)
    if entries:
        best = max(entries, key=lambda e: e["validation"]["accuracy"])
        ev = read_json(run.model_dir(best["name"]) / "evaluation.json")["test"]
        plots.confusion(np.array(ev["confusion"]), run.classes, run.figure("confusion_best_ensemble.png"),
                        f"best ensemble {best['name']}: test accuracy {100 * ev['accuracy']:.1f} %")
    return entries
