"""The fused ensemble: the pruned networks with each group of shared feature maps computed once, and its
INT8 file."""

from __future__ import annotations

import logging

from lcasc import fused as fusing
from lcasc import fused_tradeoff, runtimes, saved_models, similarity
from lcasc.export import fused_tflite
from lcasc.io import read_json, write_json
from lcasc.models import graph
from lcasc.names import FUSED
from lcasc.run import Run, RunError
from lcasc.stages.evaluate import evaluate_classifier, evaluate_probs
from lcasc.stages.quantize import calibration_features, checked_against_litert, int8_available
from lcasc.stages.similarity import networks_with_kept

log = logging.getLogger("lcasc")
FUSE_THRESHOLDS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, float("inf"))  # the trade-off curve of fused.json
SIMILARITY_CLIPS = similarity.DEFAULT_CLIPS  # validation clips the MSE is measured on (the paper: 10k)


def run(run: Run, threshold: float = 1e-4, members: list[str] | None = None) -> list[dict]:
    """An ensemble that computes each group of shared feature maps once (the saving the paper only estimates):
    members default to the six similarity-pruned networks; maps whose validation MSE is at most ``threshold``
    are computed once. Recorded in ``results.json`` ``"ensembles"`` with ``"fused": true`` next to the unfused
    ensemble, with its trade-off over thresholds (``models/ensemble_fused/fused.json``, a PNG), and exported to
    a full-integer INT8 file run in tflite-micro."""
    names = members or [n["name"] for n in run.results()["networks"] if n["precision"] == "float32"
                        and n.get("criterion") == "similarity"]
    if len(names) < 2:
        raise RunError("a fused ensemble needs at least two pruned networks: run `lcasc prune` first")
    done = {e["name"]: e for e in run.results()["ensembles"]}
    folder, tflite = run.model_dir(FUSED), run.model_dir(FUSED) / "model_int8.tflite"
    float_done = (FUSED in done and done[FUSED]["members"] == names and done[FUSED]["threshold"] == threshold
                  and (folder / saved_models.FUSED_PLAN_FILE).is_file())
    int8_wanted = int8_available()
    if float_done and (not int8_wanted or (f"{FUSED}_int8" in done and tflite.is_file())):
        return [done[FUSED]] + ([done[f"{FUSED}_int8"]] if int8_wanted else [])  # finished earlier

    nets, kept = networks_with_kept(run, names)
    mse = _feature_map_mse(run, nets, kept, threshold)
    module = fusing.build_fused(nets, kept, mse, threshold)
    saved_models.save_fused_plan(folder, module)  # what `lcasc predict --ensemble ensemble_fused` rebuilds
    entries = [done[FUSED] if float_done else _evaluate(run, module, nets, kept, mse, threshold)]
    if int8_wanted:
        entries.append(_int8(run, module, entries[0], tflite))
    return entries


def _feature_map_mse(run: Run, nets: dict, kept: dict, threshold: float) -> dict:
    """Per layer, the MSE of corresponding maps of ``nets`` on validation clips (as the paper measured
    similarity; never on test): from ``similarity.json`` when the similarity stage measured these networks on
    the same clips, else measured here."""
    saved = read_json(run.dir / "similarity.json") or {}
    settings = saved.get("settings") or {}
    if set(nets) <= set(settings.get("networks", [])) and settings.get("clips") == SIMILARITY_CLIPS \
            and set(graph.CONVS) <= set(settings.get("layers", [])):
        return {layer: similarity.from_json(saved["layers"][layer]) for layer in graph.CONVS}
    clips = similarity.select_clips(run.split("validate").X, SIMILARITY_CLIPS, run.seed)
    return {layer: similarity.feature_map_mse(nets, clips, layer, kept={n: kept[n][layer] for n in nets},
                                              threshold=threshold) for layer in graph.CONVS}


def _evaluate(run: Run, module, nets: dict, kept: dict, mse: dict, threshold: float) -> dict:
    """The float fused ensemble's entry, next to the unfused ensemble; ``fused.json`` with the trade-off."""
    te, va = run.split("test"), run.split("validate")
    res = fused_tradeoff.fuse_and_evaluate(nets, kept, None, te.X, te.y, va.X, va.y, FUSE_THRESHOLDS, threshold,
                                   run.dir / "figures", mse=mse, fused=module)
    res.pop("module")
    probabilities = res.pop("probabilities")
    write_json(run.model_dir(FUSED) / "fused.json", res)
    cx = fusing.fused_complexity(module)
    fields = evaluate_probs(run, FUSED, probabilities["test"], probabilities["validate"], figure=False)
    entry = {"name": FUSED, "kind": "ensemble", "fused": True, "threshold": threshold, "members": list(nets),
             "precision": "float32", **fields, "params": cx.params, "macs": cx.macs, "size_kb": cx.size_kb,
             "within_dcase_limits": cx.within_dcase_limits,
             "unfused": {"params": res["unfused"]["params"], "macs": res["unfused"]["macs"],
                         **{k: round(v, 6) for k, v in res["unfused"]["test"].items()}},
             "saved": res["saved"],
             "distinct_maps": {layer: s["distinct_maps"] for layer, s in res["fused"]["sharing"].items()}}
    run.record("ensembles", entry)
    log.info("fused ensemble (MSE <= %g): %d params, %d MACs (unfused %d, %d); accuracy %.3f (unfused %.3f)",
             threshold, entry["params"], entry["macs"], entry["unfused"]["params"], entry["unfused"]["macs"],
             entry["accuracy"], entry["unfused"]["accuracy"])
    return entry


def _int8(run: Run, module, float_entry: dict, tflite) -> dict:
    """The fused ensemble's INT8 file, checked against LiteRT and evaluated in TFLite Micro."""
    fused_tflite.export_fused_tflite_int8(module, calibration_features(run), tflite)
    agreement = checked_against_litert(run, tflite)
    int8 = runtimes.TFLiteMicroClassifier(tflite, run.classes)
    entry = {**{k: float_entry[k] for k in ("kind", "fused", "threshold", "members", "params", "macs", "size_kb",
                                           "within_dcase_limits", "saved", "distinct_maps")},
             "name": f"{FUSED}_int8", "precision": "int8",
             **evaluate_classifier(run, int8, f"{FUSED}_int8", figure=False),
             "file": str(tflite.relative_to(run.dir)), "file_bytes": tflite.stat().st_size,
             "arena_bytes": int8.arena_size - runtimes.ARENA_MARGIN,
             "tflm_vs_litert_max_step_diff": agreement["kernel_max_step_diff"],
             "float_accuracy": float_entry["accuracy"], "float_log_loss": float_entry["log_loss"]}
    run.record("ensembles", entry)
    log.info("fused ensemble INT8: accuracy %.3f (float %.3f), %d bytes, arena %d bytes", entry["accuracy"],
             entry["float_accuracy"], entry["file_bytes"], entry["arena_bytes"])
    return entry
