"""A core install (no extras): `lcasc run` and `lcasc predict` work with TensorFlow, tflite-micro, ONNX,
ONNX Runtime, librosa and Ray absent. They are made unimportable in the subprocesses (and their distributions
invisible to importlib.metadata, which libraries such as torchmetrics consult before importing), so this
runs in the full test environment too. CI also installs the core alone in a fresh venv (.ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import make_csv_dataset, real_clips

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("tensorflow", "tflite_micro", "onnx", "onnxruntime", "librosa", "ray")

SITECUSTOMIZE = f'''
import importlib.metadata
import sys

for _name in {OPTIONAL!r}:
    sys.modules[_name] = None  # import X -> ModuleNotFoundError; importlib.util.find_spec(X) -> None

_DISTRIBUTIONS = {{"tensorflow", "tensorflow-cpu", "tflite-micro", "onnx", "onnxruntime", "librosa", "ray"}}
_from_name = importlib.metadata.Distribution.from_name.__func__


def _hidden_from_name(cls, name):
    if name.lower().replace("_", "-") in _DISTRIBUTIONS:
        raise importlib.metadata.PackageNotFoundError(name)
    return _from_name(cls, name)


importlib.metadata.Distribution.from_name = classmethod(_hidden_from_name)
'''


def _lcasc(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lcasc", "-q", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_run_and_predict_without_any_extra(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True, env=env)
    assert check.returncode != 0 and "ModuleNotFoundError" in check.stderr

    csv_path = make_csv_dataset(tmp_path / "ds", per_class=1)
    out = tmp_path / "run"
    # Pruning (its fine-tuning workers are spawned processes: they get the sitecustomize too) and ensembles
    # run; similarity, fuse and baselines take another ~40 s here (the CI step runs them, without extras).
    done = _lcasc(["run", "--dataset", str(csv_path), "--out", str(out), "--max-epochs", "1",
                   "--cache-dir", str(tmp_path / "cache"), "--skip", "similarity", "fuse", "baselines"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "INT8" in line]
    assert len(warnings) == 1 and 'pip install "lcasc[tflite]"' in warnings[0], done.stderr
    assert "ONNX" not in done.stderr  # the ONNX files belong to the INT8 stage: skipped with it, no second warning
    res = json.loads((out / "results.json").read_text())
    assert res["int8_skipped"] and 'pip install "lcasc[tflite]"' in res["int8_skipped"]
    assert not [e["name"] for e in res["networks"] + res["ensembles"] if "int8" in e["precision"]]
    assert {"unpruned", "pruned_C123"} <= {e["name"] for e in res["networks"]}
    assert "ensemble_all" in {e["name"] for e in res["ensembles"]}
    assert "Skipped: TensorFlow / tflite-micro are not installed" in (out / "report.md").read_text()
    assert not list(out.rglob("*.tflite")) and not list(out.rglob("*.onnx"))

    clip, _ = real_clips(1, "test")[0]
    pred = _lcasc(["predict", "--run", str(out), "--format", "json", str(clip)], env, tmp_path)
    assert pred.returncode == 0, pred.stderr
    rows = json.loads(pred.stdout)
    assert rows and rows[0]["scene_label"] in res["classes"], pred.stdout
