"""The report stage: ``report.md``, what a run found, as tables and PNG figures, written from ``results.json``."""

from __future__ import annotations

from lcasc.complexity import DCASE_MAX_MACS, DCASE_MAX_PARAMS
from lcasc.io import read_json, write_text
from lcasc.markdown import pct, table
from lcasc.mcu.report_section import section as mcu_section


def _figure(run, name: str, caption: str) -> str:
    return f"![{caption}](figures/{name})\n" if (run.dir / "figures" / name).is_file() else ""


def run(run) -> str:
    """Write ``DIR/report.md`` from ``results.json`` and the figures; returns its text."""
    res = run.results()
    data = res.get("data", {})
    parts = ["# lcasc run report", "",
             f"Dataset: `{data.get('root', '?')}` ({data.get('layout', '?')} layout), "
             f"{len(res['classes'])} classes: {', '.join(res['classes'])}.", ""]
    if data:
        seg = data.get("segments", {})
        parts += [table(["split", "recordings", "1-s segments"],
                         [[s, data["recordings"].get(s, 0), seg.get(s, 0)] for s in ("train", "validate", "test")]),
                  "", f"Silent segments left out (RMS below {run.config.silence_db} dBFS): "
                      f"{data.get('silent_segments_dropped', 0)}. Files skipped: {data.get('skipped_files', 0)}; "
                      f"metadata rows skipped: {data.get('skipped_rows', 0)} (see `features/summary.json`).", ""]
        if data.get("protocol"):
            parts += [f"Protocol: {data['protocol']}.", ""]
        if data.get("split_aliases"):
            parts += ["**The validation split is the test split** (`split_aliases`): checkpoints, ensemble subsets "
                      "and baseline settings were chosen on the clips the test numbers are computed on, so those "
                      "numbers are optimistic.", ""]
    parts += ["## Networks", "",
              f"Accuracy, class-averaged accuracy and log-loss on the test split (1-second segments); "
              f"DCASE limits: {DCASE_MAX_PARAMS:,} parameters, {DCASE_MAX_MACS / 1e6:.0f} M MACs.", ""]
    parts.append(table(
        ["network", "precision", "widths", "params", "size (KB)", "MACs", "accuracy %", "class-avg acc %",
         "log-loss", "recording acc %"],
        [[n["name"], n["precision"], n.get("widths", "–"), f"{n['params']:,}", n["size_kb"], f"{n['macs']:,}",
          pct(n["accuracy"]), pct(n.get("class_avg_accuracy")), f"{n['log_loss']:.3f}",
          pct(n.get("recording_accuracy"))] for n in res["networks"]
         if n.get("kind") == "cnn" and n["precision"] == "float32"]))
    parts.append("")
    for n in res["networks"]:
        ev = read_json(run.model_dir(n["name"]) / "evaluation.json")
        if n["name"] != "unpruned" or not ev:
            continue
        t = ev["test"]
        parts += [f"### {n['name']}: per class", "",
                  table(["class", "segments", "accuracy %"],
                         [[c, v["n"], pct(v["accuracy"])] for c, v in t["per_class"].items()]), ""]
        if len(t.get("per_device", {})) > 1:
            parts += [f"### {n['name']}: per device", "",
                      table(["device", "segments", "accuracy %", "log-loss"],
                             [[d, v["n"], pct(v["accuracy"]), f"{v['log_loss']:.3f}"]
                              for d, v in t["per_device"].items()]), ""]
        parts.append(_figure(run, f"confusion_{n['name']}.png", f"confusion matrix of {n['name']}"))
        parts.append(_figure(run, f"training_{n['name']}.png", f"training curves of {n['name']}"))
    parts += _pruning_section(run, res)
    parts += _int8_section(res)
    parts += mcu_section(res)
    parts += _ensemble_section(run, res)
    parts += _similarity_section(run)
    parts += _fused_section(run, res)
    parts += _baseline_section(run, res)
    parts += _study_section(run)
    from lcasc.recipes import report_section

    parts += report_section(run)  # paper vs kd, when DIR/kd holds a kd run
    text = "\n".join(parts).rstrip() + "\n"
    write_text(run.dir / "report.md", text)
    return text


def _pruning_section(run, res: dict) -> list[str]:
    """Paper Table 2 and Figure 3 analogues, one table per pruning criterion."""
    nets = [n for n in res["networks"] if n.get("precision") == "float32"]
    base = next((n for n in nets if n["name"] == "unpruned"), None)
    control = next((n for n in nets if n["name"] == "unpruned_ft"), None)
    criteria = sorted({n["criterion"] for n in nets if "criterion" in n}, key=lambda c: c != "similarity")
    out = []
    for crit in criteria:
        rows = [n for n in nets if n.get("criterion") == crit]
        out += [f"## Pruning ({crit}): Table 2 analogue", "",
                "Filters removed per layer: " + ", ".join(
                    f"{layer} {len(idx)}" for layer, idx in (read_json(run.dir / "models" / f"pruning_{crit}.json")
                                                           or {}).items()) + ".", ""]
        rows = [[n["name"], n.get("pruned_layers", "–"), n["widths"], f"{n['params']:,}", n["size_kb"],
                  f"{n['macs']:,}", pct(n["accuracy"]), f"{n['log_loss']:.3f}",
                  pct(n["before_finetune"]["accuracy"]) if "before_finetune" in n else "–",
                  f"{n['before_finetune']['log_loss']:.3f}" if "before_finetune" in n else "–"]
                 for n in [n for n in (base, control) if n] + rows]
        out += [table(["network", "pruned layers", "widths", "params", "size (KB)", "MACs", "accuracy %",
                        "log-loss", "acc % before fine-tuning", "log-loss before fine-tuning"], rows), ""]
        if control:
            out += ["`unpruned_ft` is the control: the unpruned network fine-tuned with the same recipe and budget "
                    "as the pruned ones. A pruned network that beats `unpruned` but not `unpruned_ft` owes its "
                    "gain to the extra training, not to pruning.", ""]
        out.append(_figure(run, f"pruning_{crit}.png", f"Figure 3 analogue ({crit})"))
    return out


def _int8_section(res: dict) -> list[str]:
    rows = [n for n in res["networks"] if n["precision"] == "int8"]
    if not rows and res.get("int8_skipped"):
        return ["## INT8", "", f"Skipped: {res['int8_skipped']}.", ""]
    if not rows:
        return []
    return ["## INT8 (full-integer TFLite, run in TensorFlow Lite Micro)", "",
            "Accuracy and log-loss computed by running each `.tflite` file in the `tflite-micro` interpreter "
            "on the test split. Size (KB) is the paper's convention; file bytes are the actual file; arena "
            "bytes the RAM TensorFlow Lite Micro needs.", "",
            table(["network", "widths", "float acc %", "INT8 acc %", "Δ points", "float log-loss",
                    "INT8 log-loss", "size (KB)", "file bytes", "arena bytes"],
                   [[n["name"], n["widths"], pct(n["float_accuracy"]), pct(n["accuracy"]),
                     f"{100 * (n['accuracy'] - n['float_accuracy']):+.2f}", f"{n['float_log_loss']:.3f}",
                     f"{n['log_loss']:.3f}", n["size_kb"], f"{n['file_bytes']:,}", f"{n['arena_bytes']:,}"]
                    for n in rows]), ""]


def _ensemble_section(run, res: dict) -> list[str]:
    ens = res["ensembles"]
    out = []
    if ens:
        out += ["## Ensembles: Table 3 analogue", "",
                "Equal-weight mean of member probabilities. `ensemble_best_budget*` is the subset with the lowest "
                "validation log-loss within the budget (chosen on validation, reported on test).", "",
                table(["ensemble", "members", "precision", "params", "size (KB)", "MACs", "within DCASE",
                        "accuracy %", "log-loss"],
                       [[e["name"], ", ".join(e["members"]), e["precision"], f"{e['params']:,}", e["size_kb"],
                         f"{e['macs']:,}", "yes" if e["within_dcase_limits"] else "no", pct(e["accuracy"]),
                         f"{e['log_loss']:.3f}"] for e in ens]), ""]
        base = next((n for n in res["networks"] if n["name"] == "unpruned"), None)
        best = max(ens, key=lambda e: e["validation"]["accuracy"])
        if base:
            out += ["## Table 4 analogue: best ensemble against the unpruned network", "",
                    "Best ensemble chosen by validation accuracy.", "",
                    table(["system", "params", "MACs", "size (KB)", "accuracy %", "log-loss"],
                           [[n["name"], f"{n['params']:,}", f"{n['macs']:,}", n["size_kb"], pct(n["accuracy"]),
                             f"{n['log_loss']:.3f}"] for n in (base, best)]), ""]
        out.append(_figure(run, "confusion_best_ensemble.png", "confusion matrix of the best ensemble"))
    if len(res["networks"]) > 1 or ens:
        from lcasc import plots

        plots.accuracy_vs_macs([n for n in res["networks"] if n.get("kind") == "cnn"], ens,
                               run.figure("accuracy_vs_macs.png"), DCASE_MAX_MACS)
        out += ["## Accuracy against MACs", "", _figure(run, "accuracy_vs_macs.png", "accuracy against MACs")]
    return out


def _baseline_section(run, res: dict) -> list[str]:
    base = [n for n in res["networks"] if n.get("kind") == "baseline"]
    if not base:
        return []
    from lcasc import plots

    cnn = [n for n in res["networks"] if n.get("kind") == "cnn" and n["precision"] == "float32"]
    compare = base + cnn[:1] + sorted(cnn[1:], key=lambda n: -n["validation"]["accuracy"])[:1]
    if res["ensembles"]:
        compare.append(max(res["ensembles"], key=lambda e: e["validation"]["accuracy"]))
    plots.method_accuracies(compare, run.figure("methods.png"))
    rows = []
    for n in base:
        note = ", ".join(f"{k}={v}" for k, v in n.get("best_params", {}).items())
        if n["name"] == "vggish":
            note = ("pretrained VGGish weights" if n.get("pretrained") else
                    "trained from scratch (no pretrained weights given)") + (f"; {note}" if note else "")
        rows.append([n["name"], "–" if n.get("params") is None else f"{n['params']:,}",
                     "–" if n.get("macs") is None else f"{n['macs']:,}", pct(n["accuracy"]),
                     f"{n['log_loss']:.3f}", note])
    return ["## Comparison with other methods (Figure 4 analogue)", "",
            "Baselines of paper section 4 on the time-averaged log-mel (GMM, RF, MLP, DLSI) or the full input "
            "(VGGish); hyper-parameters chosen on the validation split by log-loss.", "",
            table(["method", "params", "MACs", "accuracy %", "log-loss", "notes"], rows), "",
            _figure(run, "methods.png", "accuracy of every method")]


def _study_section(run) -> list[str]:
    summary = read_json(run.dir / "study" / "summary.json")
    if not summary:
        return []
    from lcasc.study.figures import study_table_markdown

    train = summary.get("train", {})
    return ["## Architecture study (Figures 1 and 2 analogue)", "",
            f"Widths {summary['widths']}; every variant trained {summary['repeats']} times (seeds "
            f"{summary['base_seed']}..{summary['base_seed'] + summary['repeats'] - 1}, at most "
            f"{train.get('max_epochs')} epochs, patience {train.get('patience')}), evaluated on the "
            f"{summary['evaluated_on']} split; mean ± {summary['std']}. Executor: {summary['executor']}.", "",
            study_table_markdown(summary),
            _figure(run, "study_kernels.png", "accuracy and log-loss against kernel size (Figure 1 analogue)"),
            _figure(run, "study_activations.png", "activation patterns (Figure 2 analogue)")]


def _similarity_section(run) -> list[str]:
    summary = read_json(run.dir / "similarity.json")
    if not summary:
        return []
    out = ["## Feature-map similarity (Figure 5 analogue)", "",
           f"Mean squared error between corresponding feature maps (same original filter) of two networks, "
           f"aggregated over {summary['n_clips']:,} validation clips; maps with MSE ≤ {summary['threshold']:g} "
           f"count as shared.", ""]
    for layer, res in summary["layers"].items():
        names = res["names"]
        rows = []
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                rows.append([a, names[j], res["n_compared"][i][j], res["n_shared"][i][j],
                             f"{res['mean_mse'][i][j]:.2e}"])
        out += [f"### {layer}", "", table(["network A", "network B", "maps compared", "maps shared", "mean MSE"],
                                           rows), "", _figure(run, f"similarity_mse_{layer}.png",
                                                              f"pairwise mean MSE of {layer} maps")]
    a, b = summary.get("figure5_pair", ["?", "?"])
    out += [f"Figure 5 analogue: MSE per map for {a} and {b}, and two of their maps side by side.", "",
            _figure(run, "similarity_fig5a.png", "MSE per map"), _figure(run, "similarity_fig5b.png", "example maps")]
    return out


def _fused_section(run, res: dict) -> list[str]:
    fused = [e for e in res["ensembles"] if e.get("fused")]
    if not fused:
        return []
    f = fused[0]
    u = f["unfused"]
    rows = [["unfused ensemble", f"{u['params']:,}", f"{u['macs']:,}", pct(u["accuracy"]), f"{u['log_loss']:.3f}",
             "–", "–"]]
    rows += [[e["name"], f"{e['params']:,}", f"{e['macs']:,}", pct(e["accuracy"]), f"{e['log_loss']:.3f}",
              f"{e['file_bytes']:,}" if "file_bytes" in e else "–",
              f"{e['arena_bytes']:,}" if "arena_bytes" in e else "–"] for e in fused]
    out = ["## Fused ensemble: shared feature maps computed once", "",
           f"Members: {', '.join(f['members'])}. A map is computed once for every member whose map of the same "
           f"original filter has validation MSE ≤ {f['threshold']:g} against it and whose inputs are themselves "
           f"shared; distinct maps computed per layer: "
           + ", ".join(f"{layer} {n}" for layer, n in f["distinct_maps"].items())
           + f". Saved: {f['saved']['params']:,} parameters and {f['saved']['macs']:,} MACs.", "",
           table(["system", "params", "MACs", "accuracy %", "log-loss", "INT8 file bytes", "arena bytes"], rows), ""]
    detail = read_json(run.model_dir(f["name"]) / "fused.json")
    if detail and detail.get("tradeoff"):
        out += ["Trade-off over thresholds (test split):", "",
                table(["MSE threshold", "params", "MACs", "MACs saved", "accuracy %", "log-loss"],
                       [["no limit" if r["threshold"] is None else f"{r['threshold']:g}", f"{r['params']:,}",
                         f"{r['macs']:,}", f"{r['macs_saved']:,}", pct(r["test"]["accuracy"]),
                         f"{r['test']['log_loss']:.3f}"] for r in detail["tradeoff"]]), ""]
    out.append(_figure(run, "fused_tradeoff.png", "MACs saved against accuracy"))
    return out
