"""The TAU22 protocol is honest: nothing a run chooses or trains looks at the test labels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import make_tau22


def _permute_test_labels(root: Path) -> None:
    """Shuffle the scene labels of the fold1_evaluate clips (the holdout protocol's test split) in both
    fold1_evaluate.csv and meta.csv, so that every test label changes while everything else stays put."""
    evaluate = root / "evaluation_setup" / "fold1_evaluate.csv"
    header, *rows = evaluate.read_text().splitlines()
    names = [r.split("\t")[0] for r in rows]
    labels = [r.split("\t")[1] for r in rows]
    k = len(labels) // len(set(labels))  # rows come in blocks per class: rotating by a block changes them all
    permuted = labels[k:] + labels[:k]
    assert sum(a != b for a, b in zip(labels, permuted)) > len(labels) // 2
    new = dict(zip(names, permuted))
    evaluate.write_text("\n".join([header, *(f"{n}\t{new[n]}" for n in names)]) + "\n")
    meta = root / "meta.csv"
    header, *rows = meta.read_text().splitlines()
    out = [header]
    for r in rows:
        parts = r.split("\t")
        if parts[0] in new:
            parts[1] = new[parts[0]]
        out.append("\t".join(parts))
    meta.write_text("\n".join(out) + "\n")


def _run(root: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "lcasc", "-q", "run", "--dataset", str(root), "--out", str(out),
                    "--max-epochs", "2", "--patience", "2", "--silence-db", "nan", "--skip", "quantize"],
                   check=True, capture_output=True, text=True, timeout=900)
    return json.loads((out / "results.json").read_text())


def _validation_numbers(res: dict) -> dict:
    out = {}
    for kind in ("networks", "ensembles"):
        for e in res[kind]:
            out[e["name"]] = {k: e.get(k) for k in ("validation", "before_finetune_validation", "best_params",
                                                    "members", "threshold")}
    return out


def test_permuting_the_test_labels_changes_no_model_and_no_validation_number(tmp_path):
    honest = make_tau22(tmp_path / "tau", per_split=2)
    permuted = tmp_path / "tau_permuted"
    shutil.copytree(honest, permuted)
    _permute_test_labels(permuted)
    a, b = _run(honest, tmp_path / "run_a"), _run(permuted, tmp_path / "run_b")

    assert "holdout" in a["data"]["protocol"]
    assert _validation_numbers(a) == _validation_numbers(b)
    files = sorted(p.relative_to(tmp_path / "run_a") for p in (tmp_path / "run_a" / "models").rglob("*")
                   if p.suffix in (".pt", ".tflite", ".pkl", ".joblib"))
    assert any(f.name == "model.pt" for f in files) and len(files) >= 7
    for f in files:
        assert (tmp_path / "run_a" / f).read_bytes() == (tmp_path / "run_b" / f).read_bytes(), f
    # ... while the test numbers do see the labels (the permutation reached the test split).
    acc = {e["name"]: e["accuracy"] for e in a["networks"]}
    acc_b = {e["name"]: e["accuracy"] for e in b["networks"]}
    assert acc != acc_b
    for name in ("unpruned", "pruned_C1"):
        pa = np.load(tmp_path / "run_a" / "models" / name / "probabilities.npz")
        pb = np.load(tmp_path / "run_b" / "models" / name / "probabilities.npz")
        np.testing.assert_array_equal(pa["test"], pb["test"])  # same model, same clips: same probabilities
