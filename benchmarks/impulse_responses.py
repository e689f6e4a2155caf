"""What device-impulse-response augmentation (:mod:`lcasc.impulse`) costs: computing the convolved copies of
the training features, their disk space, and the training time with them, each next to its reference measured
in the same run.

Data: the embedded ESC-10 default (its training split: 5-s recordings), and ``--clips`` 1-second 24-bit WAV
clips cut from it, each its own file, as TAU22's (the basis of the TAU22 extrapolation). Impulse responses:
``--irs`` synthesised device-like responses (band-pass "microphones" of random corners, a resonance and a
short decaying tail, ``--ir-samples`` long at 44.1 kHz), since no impulse-response data set is on disk; the
cost depends on their number only through decoding them, and on their length through the convolution
(overlap-add).

Printed:
- the log-mel extraction of the whole data set into a fresh cache (decode + log-mel: the reference), and the
  seconds, segments per second and bytes of one copy of the training split (decode + convolve + log-mel);
  extrapolated to TAU22's 139,620 training segments (1-s clips) at the measured per-segment rate;
- training on the embedded default: the data path alone (one epoch of batches from the training loader, without
  and with the copies at p = ``--p``, alternately ``--repeats`` x 10 times; minima and medians), and
  ``--epochs`` epochs (0: skipped) of the paper's CNN without and with the copies, alternately ``--repeats``
  times: seconds per epoch, medians, ratio.

Run: python benchmarks/impulse_responses.py [--copies K] [--irs N] [--ir-samples N] [--clips N] [--epochs N]
[--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from lcasc import impulse
from lcasc.data import load_dataset
from lcasc.features import extract
from lcasc.logmel import FeatureParams
from lcasc.models.cnn import LowComplexityCNN
from lcasc.train import TrainConfig, fit, loader

TAU22_TRAIN_SEGMENTS = 139_620


def synthesise_irs(folder: Path, n: int, samples: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        lo, hi = rng.uniform(80, 600), rng.uniform(4000, 16000)
        b, a = scipy.signal.butter(2, [lo, hi], "bandpass", fs=44_100)
        pb, pa = scipy.signal.iirpeak(rng.uniform(1000, 6000), rng.uniform(2, 8), fs=44_100)
        h = scipy.signal.lfilter(pb, pa, scipy.signal.lfilter(b, a, scipy.signal.unit_impulse(samples)))
        h *= np.exp(-np.arange(samples) / (samples / 6))
        sf.write(folder / f"device_{i:02d}.wav", (0.5 * h / np.abs(h).max()).astype(np.float32), 44_100,
                 subtype="FLOAT")


def one_second_clips(folder: Path, n: int) -> Path:
    """A CSV dataset of ``n`` 1-s 24-bit clips cut from the embedded recordings (all training but 10 % each
    of validation and test, for the run's splits)."""
    import csv

    from lcasc.audio import load
    from lcasc.data.datasets import EMBEDDED

    with open(EMBEDDED, newline="") as fh:
        embedded = list(csv.DictReader(fh))
    rows, k = [], 0
    for r in embedded:
        x = load(EMBEDDED.parent / r["filename"])
        for s in range(len(x) // 44_100):
            if k == n:
                break
            name = f"clip{k:05d}.wav"
            sf.write(folder / name, x[s * 44_100:(s + 1) * 44_100], 44_100, subtype="PCM_24")
            rows.append((name, r["label"], (("train",) * 8 + ("validate", "test"))[k % 10]))
            k += 1
    with open(folder / "data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("filename", "label", "split"), *rows])
    return folder / "data.csv"


def copy_cost(dataset, irs: Path, cache: Path, args, what: str):
    """Extract the features into a fresh cache, then the copies; print both rates. Returns the features and
    the copies."""
    params = FeatureParams()
    t0 = time.perf_counter()
    fs, _ = extract(dataset, params, cache, progress=False, silence_db=-60.0)
    t_features = time.perf_counter() - t0
    tr = fs.subset("train")
    print(f"{what}: features of {len(fs)} segments ({len(tr)} training) in {t_features:.1f} s "
          f"({len(fs) / t_features:.0f} segments/s): decode + log-mel, the reference")
    recordings = sorted(dataset.recordings, key=lambda r: r.name)
    t0 = time.perf_counter()
    copies, _ = impulse.compute(tr, recordings, impulse.ImpulseConfig(str(irs), args.p, args.copies), params, cache,
                                seed=0, progress=False)
    per_copy = (time.perf_counter() - t0) / args.copies
    rate = len(tr) / per_copy
    disk = sum(Path(f).stat().st_size for f in copies.files) / args.copies
    print(f"{what}: {per_copy:.1f} s per copy of {len(tr)} training segments ({rate:.0f} segments/s, "
          f"{rate / (len(fs) / t_features):.2f}x the features' rate), {disk / 1e6:.2f} MB per copy")
    return fs, copies, rate, disk / len(tr)


def loader_seconds(tr, copies, epoch: int) -> float:
    t0 = time.perf_counter()
    for _ in loader(tr.X, tr.y, 64, 0, True, lambda: epoch, impulse=copies):
        pass
    return time.perf_counter() - t0


def train_seconds(tr, va, epochs: int, copies) -> float:
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        fit(LowComplexityCNN(), tr.X, tr.y, va.X, va.y,
            TrainConfig(max_epochs=epochs, patience=10**6, progress=False, compile=False), d, impulse=copies)
        return (time.perf_counter() - t0) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--irs", type=int, default=20)
    ap.add_argument("--ir-samples", type=int, default=4096)
    ap.add_argument("--p", type=float, default=0.4)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for d in ("irs", "clips"):
            (work / d).mkdir()
        synthesise_irs(work / "irs", args.irs, args.ir_samples)
        print(f"{args.irs} synthesised impulse responses of {args.ir_samples} samples, {args.copies} copies")
        fs, copies, _, _ = copy_cost(load_dataset(None), work / "irs", work / "cache", args, "embedded default")
        data = one_second_clips(work / "clips", args.clips)
        _, _, rate, row_bytes = copy_cost(load_dataset(str(data)), work / "irs", work / "cache1s", args,
                                          f"{args.clips} 1-s clips")
        t_copy, tau_bytes = TAU22_TRAIN_SEGMENTS / rate, TAU22_TRAIN_SEGMENTS * row_bytes
        print(f"TAU22 extrapolation ({TAU22_TRAIN_SEGMENTS:,} training clips, at the 1-s clips' rate): "
              f"{t_copy / 60:.1f} min and {tau_bytes / 1e9:.2f} GB per copy; {args.copies} copies: "
              f"{args.copies * t_copy / 60:.1f} min, {args.copies * tau_bytes / 1e9:.2f} GB")

        tr, va = fs.subset("train"), fs.subset("validate")
        plain, with_ir = [], []
        for e in range(10 * args.repeats):
            plain.append(loader_seconds(tr, None, e))
            with_ir.append(loader_seconds(tr, copies, e))
        extra = (min(with_ir) - min(plain)) / len(tr)
        print(f"data path, ms per epoch of {len(tr)} segments ({10 * args.repeats} epochs each, alternately): "
              f"without min {1e3 * min(plain):.1f} median {1e3 * statistics.median(plain):.1f}; with p={args.p} "
              f"min {1e3 * min(with_ir):.1f} median {1e3 * statistics.median(with_ir):.1f}; {1e6 * extra:.1f} us more "
              f"per segment (minima): {extra * TAU22_TRAIN_SEGMENTS:.1f} s more per TAU22 epoch")
        if args.epochs <= 0:
            return
        plain, with_ir = [], []
        for _ in range(args.repeats):
            plain.append(train_seconds(tr, va, args.epochs, None))
            with_ir.append(train_seconds(tr, va, args.epochs, copies))
        print(f"training, s per epoch (incl. validation and the trainer's setup / {args.epochs}), {args.repeats} "
              f"repeats alternately: without {[round(t, 3) for t in plain]}, with p={args.p} "
              f"{[round(t, 3) for t in with_ir]}; medians {statistics.median(plain):.3f} vs "
              f"{statistics.median(with_ir):.3f} s ({statistics.median(with_ir) / statistics.median(plain):.2f}x)")

if __name__ == "__main__":
    main()
