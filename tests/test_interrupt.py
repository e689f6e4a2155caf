"""SIGKILL during feature caching, training, pruning and INT8 export, then the same command again: the run
finishes with the numbers of an uninterrupted run, and nothing half-written is ever trusted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lcasc.stages.quantize import int8_available

from .conftest import make_csv_dataset, real_clips

# Fewer stages keep this module short; the resumption of each stage is what is tested.
FAST = ["--max-epochs", "4", "--patience", "10", "--skip", "ensemble", "similarity", "fuse", "baselines"]


def start(out: Path, cache: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lcasc", "-q", "run", "--out", str(out), "--cache-dir",
                             str(cache), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.002)
    children = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Worker processes (parallel fine-tuning) end with the run: nothing goes on writing into the run directory.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "workers outlived the killed run"


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc; empty elsewhere)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def numbers(out: Path) -> dict:
    """results.json without what legitimately differs between runs (timings, absolute paths)."""
    res = json.loads((out / "results.json").read_text())
    res.pop("timings", None)
    res.get("data", {}).pop("root", None)
    return res


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic writes that a kill interrupted (``.name.XXXX.tmp``): nothing ever reads
    them, and the next invocation on the run directory removes them."""
    return sorted(folder.rglob(".*.tmp"))


def assert_artifacts_whole(folder: Path) -> None:
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())
    for path in folder.rglob("model.pt"):
        assert torch.load(path, weights_only=True)["state_dict"]


def linked_dataset(root: Path, per_class: int) -> Path:
    """A CSV dataset of the first ``per_class`` embedded recordings of each class and split, linked into
    ``root/audio`` and listed by their names there: where the feature cache's chunks end depends on these
    names only, not on where the checkout is."""
    (root / "audio").mkdir(parents=True)
    rows = ["filename,label,split"]
    for split in ("train", "validate", "test"):
        for path, label in real_clips(per_class, split):
            (root / "audio" / path.name).symlink_to(path)
            rows.append(f"audio/{path.name},{label},{split}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def test_killed_during_feature_caching_resumes_to_the_same_results(tmp_path):
    # 4 recordings per class and split: 10 minutes of audio in 5 cache chunks (130, 130, 259, 5 and 75 s), so a
    # kill between two is possible.
    dataset = linked_dataset(tmp_path / "ds", per_class=4)
    args = ["--dataset", str(dataset), "--max-epochs", "1", "--skip", "prune", "quantize", "ensemble", "baselines"]
    finish(start(tmp_path / "reference", tmp_path / "cache_ref", *args))
    n_chunks = len(list((tmp_path / "cache_ref").glob("logmel-*.npz")))
    assert n_chunks >= 3

    cache = tmp_path / "cache"
    proc = start(tmp_path / "run", cache, *args)
    kill_when(proc, lambda: any(cache.glob("logmel-*.npz")))
    assert not (tmp_path / "run" / "features" / "summary.json").exists()
    assert 1 <= len(list(cache.glob("logmel-*.npz"))) < n_chunks  # killed while chunks were under way
    finish(start(tmp_path / "run", cache, *args))
    assert len(list(cache.glob("logmel-*.npz"))) == n_chunks
    assert numbers(tmp_path / "run") == numbers(tmp_path / "reference")
    assert leftovers(tmp_path / "run") == []
    assert_artifacts_whole(tmp_path / "run")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_csv_dataset(tmp_path_factory.mktemp("interrupt") / "ds", per_class=2)


def test_killed_during_training_pruning_and_export_resumes_to_the_same_results(tmp_path, dataset):
    args = ["--dataset", str(dataset), *FAST]
    finish(start(tmp_path / "reference", tmp_path / "cache", *args))

    out = tmp_path / "run"
    proc = start(out, tmp_path / "cache", *args)
    kill_when(proc, lambda: (out / "models" / "unpruned" / "last.ckpt").is_file())
    assert not (out / "models" / "unpruned" / "model.pt").exists()  # killed mid-training

    proc = start(out, tmp_path / "cache", *args)  # resumes training, then prunes; killed while fine-tuning
    kill_when(proc, lambda: (out / "models" / "pruned_C12" / "last.ckpt").is_file())
    assert not (out / "models" / "pruned_C12" / "model.pt").exists()
    assert (out / "models" / "unpruned" / "model.pt").is_file()

    if int8_available():  # resumes fine-tuning, then exports INT8 files; killed between two exports
        proc = start(out, tmp_path / "cache", *args)
        kill_when(proc, lambda: (out / "models" / "unpruned" / "model_int8.tflite").is_file())
        assert not (out / "models" / "pruned_C123" / "model_int8.tflite").exists()

    finish(start(out, tmp_path / "cache", *args))
    assert numbers(out) == numbers(tmp_path / "reference")
    assert leftovers(out) == []
    assert_artifacts_whole(out)
