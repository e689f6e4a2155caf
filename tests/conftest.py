"""Shared fixtures: small real datasets cut from the embedded ESC-10 recordings (no ../shared needed)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from filelock import FileLock

from lcasc.audio import load
from lcasc.data.datasets import EMBEDDED

ESC10 = EMBEDDED.parent


# lcasc computes in float32, as librosa does on the baseline's float32 audio. A float32 STFT's rounding error
# is about 1e-7 of a frame's largest bins, so the log of a band far quieter than the rest of its frame is off
# by more: on 5,000 TAU22-like 1-s clips (benchmarks/scale.py's tree) lcasc missed librosa's float64 result by
# up to 6.1e-4 and librosa's own float32 path by up to 1.5e-3 (on the embedded clips: 1.9e-4 and 2.6e-4).
FLOAT32_TOLERANCE = 2e-3  # log-mel units, absolute: what a float32 log-mel may differ by


# Optional extras whose tests skip locally (with the reason and the install command) when they are missing.
# CI sets LCASC_REQUIRE_EXTRAS=1: there a missing extra fails the run instead, so a green CI always means the
# INT8, ONNX, Ray and librosa-oracle tests ran.
EXTRAS = {"tensorflow": "lcasc[tflite]", "tflite_micro": "lcasc[tflite]", "onnx": "lcasc[onnx]",
          "onnxruntime": "lcasc[onnx]", "ray": "lcasc[ray]", "librosa": "lcasc[test]: the features' test oracle"}


# The slowest modules, slowest first (--durations on a 2-core machine). pytest-xdist (``--dist loadfile``, as
# ``make test``) hands the modules to its workers in collection order, so these start first and the many short
# ones fill in at the end; left to itself (--loadscope-reorder) it would hand them out by their number of tests,
# one-test modules last.
SLOWEST_FIRST = ["test_family", "test_interrupt", "test_quantize", "test_study", "test_export_c", "test_protocol",
                 "test_predict", "test_cli", "test_train"]


def pytest_configure(config):
    import importlib.util

    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order of SLOWEST_FIRST
        config.option.loadscopereorder = False
    missing = [f"{m} ({extra})" for m, extra in EXTRAS.items() if importlib.util.find_spec(m) is None]
    if os.environ.get("LCASC_REQUIRE_EXTRAS") == "1" and missing:
        raise pytest.UsageError("LCASC_REQUIRE_EXTRAS=1 but these packages are missing, so their tests would "
                                "be skipped: " + ", ".join(missing))


def pytest_collection_modifyitems(config, items):
    """The slowest modules first (for ``pytest -n N --dist loadfile``, ``make test``: each module's tests run on
    one worker, so its module fixtures are built once)."""
    def rank(item):
        name = item.module.__name__.rpartition(".")[2]
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the tests of a module keep their order


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets a feature cache of its own unless it passes one explicitly."""
    monkeypatch.setenv("LCASC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def embedded_rows() -> list[dict]:
    with open(EMBEDDED, newline="") as fh:
        return list(csv.DictReader(fh))


def real_clips(n_per_class: int = 1, split: str = "train") -> list[tuple[Path, str]]:
    """(path, label) of the first ``n_per_class`` embedded recordings of each class in ``split``."""
    out, count = [], {}
    for row in embedded_rows():
        if row["split"] == split and count.get(row["label"], 0) < n_per_class:
            count[row["label"]] = count.get(row["label"], 0) + 1
            out.append((ESC10 / row["filename"], row["label"]))
    return out


def make_tau22(root: Path, classes=("dog_bark", "rain", "rooster"), per_split: int = 2) -> Path:
    """A TAU-2022-style tree of 1-second 24-bit WAV clips cut from real ESC-10 recordings."""
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    meta, folds = [], {"train": [], "evaluate": [], "test": []}
    devices = ["a", "b", "s1"]
    for label in classes:
        for split in ("train", "validate", "test"):
            for k, (path, _) in enumerate([c for c in real_clips(8, split) if c[1] == label][:per_split]):
                x = load(path)
                for seg in range(2):
                    dev = devices[(k + seg) % 3]
                    name = f"audio/{label}-city{k}-{k}{split[:2]}-{seg}-{dev}.wav"
                    sf.write(root / name, x[seg * 44100:(seg + 1) * 44100], 44100, subtype="PCM_24")
                    meta.append((name, label, f"{label}-city{k}-{split[:2]}", dev))  # location, as TAU's
                    folds["train" if split == "train" else "evaluate"].append((name, label))
                    if split == "test":
                        folds["test"].append((name,))
    # The development set's test list is its evaluate list without labels.
    with open(root / "meta.csv", "w") as fh:
        fh.write("filename\tscene_label\tidentifier\tsource_label\n")
        fh.writelines(f"{n}\t{lab}\t{i}\t{d}\n" for n, lab, i, d in meta)
    for fold, rows in folds.items():
        with open(root / "evaluation_setup" / f"fold1_{fold}.csv", "w") as fh:
            fh.write("filename\tscene_label\n" if fold != "test" else "filename\n")
            fh.writelines("\t".join(r) + "\n" for r in rows)
    return root


def make_csv_dataset(root: Path, per_class: int = 2, classes=None, extra_rows=()) -> Path:
    """A ``filename,label,split`` CSV over real embedded recordings (paths relative to the CSV)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split in ("train", "validate", "test"):
        for path, label in real_clips(per_class, split):
            if classes is None or label in classes:
                rows.append((str(path), label, split))
    with open(root / "data.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "label", "split"])
        w.writerows(rows)
        w.writerows(extra_rows)
    return root / "data.csv"


def white_noise(seconds: float, sr: int = 44100, channels: int = 1, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 0.1, (int(seconds * sr), channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def synthetic_logmel(n: int, seed: int, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(n, 40, 51) float32 log-mel-like clips and (n,) labels: around -8 (natural-log magnitude), a
    class-dependent Gaussian bump over mel bands, modulated in time, under noise of std 3 (a network trained
    briefly on it reaches about 80 %, so its probabilities are not saturated)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    mel, t = np.arange(40)[None, :, None], np.arange(51)[None, None, :]
    bump = 1.5 * np.exp(-0.5 * ((mel - (3 + 3.5 * y)[:, None, None]) / 2.0) ** 2)
    modulation = 1 + 0.5 * np.sin(2 * np.pi * t * (1 + y[:, None, None] % 3) / 51 + rng.uniform(0, 6.3, (n, 1, 1)))
    X = (-8 + 1.8 * (40 - mel) / 40 + bump * modulation + rng.normal(0, 3.0, (n, 40, 51))
         + rng.normal(0, 1.0, (n, 1, 1)))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def one_thread():
    """Small convolutions run several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adam_steps(net, X: np.ndarray, y: np.ndarray, steps: int, seed: int, lr: float,
          freeze_c1: bool = False) -> torch.nn.Module:
    """Adam steps (batch 32) on ``net`` in place; ``freeze_c1`` keeps conv1 and bn1 (incl. running stats) fixed."""
    torch.manual_seed(seed)
    if freeze_c1:
        for p in (*net.conv1.parameters(), *net.bn1.parameters()):
            p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    net.train()
    if freeze_c1:
        net.bn1.eval()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(X), 32))
        loss = torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in net.parameters():
        p.requires_grad_(True)
    return net.eval()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``build(folder)`` makes, made once per ``pytest`` invocation even when pytest-xdist runs it in
    several workers (the pattern of pytest-xdist's documentation: the first worker to ask builds it under a
    file lock in the folder all workers share; the others wait for it and use the same folder)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the workers' basetemps are popen-gw0, popen-gw1, ... of one folder
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def family_run(tmp_path_factory) -> Path:
    """One small real run (2 recordings per class and split, 3 epochs): the unpruned network, its six pruned
    variants, their INT8 files, ensembles, baselines. Built once per ``pytest`` invocation and shared by the
    test modules of every worker: read it, never write into it (see :func:`copy_of`)."""
    def build(folder: Path) -> None:
        csv_path = make_csv_dataset(folder / "ds", per_class=2)
        done = subprocess.run([sys.executable, "-m", "lcasc", "-q", "run", "--dataset", str(csv_path), "--out",
                               str(folder / "run"), "--max-epochs", "3", "--cache-dir", str(folder / "cache")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    return built_once(tmp_path_factory, "family", build) / "run"


def copy_of(run_dir: Path, tmp_path_factory) -> Path:
    """A copy of the run directory ``run_dir`` for a test module that changes it (commands that add networks,
    ensembles or measurements to the run): the copy shares the original's dataset and feature cache."""
    return Path(shutil.copytree(run_dir, tmp_path_factory.mktemp("run_copy") / "run"))
