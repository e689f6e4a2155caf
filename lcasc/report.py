"""``report.md``: what a run found, as tables and PNG figures, written from ``results.json``."""

from __future__ import annotations

from lcasc.complexity import DCASE_MAX_MACS, DCASE_MAX_PARAMS
from lcasc.io import read_json, write_text


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _figure(run, name: str, caption: str) -> str:
    return f"![{caption}](figures/{name})\n" if (run.dir / "figures" / name).is_file() else ""


def write(run) -> str:
    res = run.results()
    data = res.get("data", {})
    parts = ["# lcasc run report", "",
             f"Dataset: `{data.get('root', '?')}` ({data.get('layout', '?')} layout), "
             f"{len(res['classes'])} classes: {', '.join(res['classes'])}.", ""]
    if data:
        seg = data.get("segments", {})
        parts += [_table(["split", "recordings", "1-s segments"],
                         [[s, data["recordings"].get(s, 0), seg.get(s, 0)] for s in ("train", "validate", "test")]),
                  "", f"Silent segments left out (RMS below {run.config.silence_db} dBFS): "
                      f"{data.get('silent_segments_dropped', 0)}. Files skipped: {data.get('skipped_files', 0)}; "
                      f"metadata rows skipped: {data.get('skipped_rows', 0)} (see `features/summary.json`).", ""]
    parts += ["## Networks", "",
              f"Accuracy, class-averaged accuracy and log-loss on the test split (1-second segments); "
              f"DCASE limits: {DCASE_MAX_PARAMS:,} parameters, {DCASE_MAX_MACS / 1e6:.0f} M MACs.", ""]
    parts.append(_table(
        ["network", "precision", "widths", "params", "size (KB)", "MACs", "accuracy %", "class-avg acc %",
         "log-loss", "recording acc %"],
        [[n["name"], n["precision"], n.get("widths", "–"), f"{n['params']:,}", n["size_kb"], f"{n['macs']:,}",
          _pct(n["accuracy"]), _pct(n.get("class_avg_accuracy")), f"{n['log_loss']:.3f}",
          _pct(n.get("recording_accuracy"))] for n in res["networks"]]))
    parts.append("")
    for n in res["networks"]:
        ev = read_json(run.model_dir(n["name"]) / "evaluation.json")
        if n["name"] != "unpruned" or not ev:
            continue
        t = ev["test"]
        parts += [f"### {n['name']}: per class", "",
                  _table(["class", "segments", "accuracy %"],
                         [[c, v["n"], _pct(v["accuracy"])] for c, v in t["per_class"].items()]), ""]
        if len(t.get("per_device", {})) > 1:
            parts += [f"### {n['name']}: per device", "",
                      _table(["device", "segments", "accuracy %", "log-loss"],
                             [[d, v["n"], _pct(v["accuracy"]), f"{v['log_loss']:.3f}"]
                              for d, v in t["per_device"].items()]), ""]
        parts.append(_figure(run, f"confusion_{n['name']}.png", f"confusion matrix of {n['name']}"))
        parts.append(_figure(run, f"training_{n['name']}.png", f"training curves of {n['name']}"))
    text = "\n".join(parts).rstrip() + "\n"
    write_text(run.dir / "report.md", text)
    return text
