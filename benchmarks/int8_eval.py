"""INT8 evaluation at TAU22's size: TensorFlow Lite Micro's per-clip loop (the reference) against the C library
compiled for this machine in parallel processes (:mod:`lcasc.mcu.host_runner`, what the quantize stage uses),
on the INT8 files of a finished run.

Clips: the run's test and validation features, repeated until there are ``--clips`` (default 71,566: TAU22
fold1's 29,680 test clips plus the 41,886 of lcasc's validation holdout), each copy after the first with
Gaussian noise (0.05 of the features' std) so no two clips are the same. The C library runs all of them;
TFLM runs the first ``--reference-clips`` (its rate is the same on every clip: one ``invoke`` each), and the
int8 logits of those clips must be identical in both. Printed per network: seconds and clips/s of each, the
extrapolated TFLM time for all clips, and the speed-up; then the total for all networks.

Run: .venv/bin/python benchmarks/int8_eval.py --run runs/default [--clips 71566] [--reference-clips 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lcasc.io import read_json
from lcasc.mcu.host_runner import CompiledInt8Classifier
from lcasc.run import Run
from lcasc.runtimes import TFLiteMicroClassifier
from lcasc.workers import cpu_count

SEVEN = ["unpruned", "pruned_C1", "pruned_C2", "pruned_C3", "pruned_C12", "pruned_C23", "pruned_C123"]


def clips(run_dir: Path, n: int, seed: int = 0) -> np.ndarray:
    """(n, n_mels, n_frames) float32: the run's test + validation features, repeated with small noise."""
    run = Run(run_dir, progress=False)
    base = np.concatenate([run.split("test").X, run.split("validate").X]).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = 0.05 * float(base.std())
    out = [base] + [base + rng.normal(0, noise, base.shape).astype(np.float32) for _ in range(-(-n // len(base)) - 1)]
    return np.concatenate(out)[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a finished run directory with INT8 files")
    ap.add_argument("--clips", type=int, default=71_566, help="clips per network for the C library")
    ap.add_argument("--reference-clips", type=int, default=2_000, help="of those, clips TFLM runs (timed, compared)")
    ap.add_argument("--networks", nargs="+", default=SEVEN, help="networks whose model_int8.tflite to time")
    args = ap.parse_args(argv)
    classes = read_json(args.run / "results.json")["classes"]
    X = clips(args.run, args.clips)
    k = min(args.reference_clips, len(X))
    print(f"{args.run}: {len(X)} clips per network (TFLM on the first {k}), {cpu_count()} CPUs", flush=True)
    print(f"{'network':<13} {'TFLM clips/s':>12} {'C clips/s':>10} {'C s (all)':>10} {'TFLM s (all, est.)':>19}"
          f" {'speed-up':>9}  identical", flush=True)
    totals, bad = [0.0, 0.0], []
    for name in args.networks:
        path = args.run / "models" / name / "model_int8.tflite"
        tflm = TFLiteMicroClassifier(path, classes)
        Xq = tflm.quantize_input(X)
        t0 = time.perf_counter()
        ref = tflm.invoke_int8(Xq[:k])
        tflm_rate = k / (time.perf_counter() - t0)
        with CompiledInt8Classifier(path, classes) as fast:
            t0 = time.perf_counter()
            got = fast.invoke_int8(Xq)
            c_seconds = time.perf_counter() - t0
        same = bool(np.array_equal(got[:k], ref))
        bad += [] if same else [name]
        tflm_all = len(X) / tflm_rate
        totals[0] += tflm_all
        totals[1] += c_seconds
        print(f"{name:<13} {tflm_rate:12.0f} {len(X) / c_seconds:10.0f} {c_seconds:10.1f} {tflm_all:19.1f}"
              f" {tflm_all / c_seconds:8.1f}x  {same}", flush=True)
    print(f"all {len(args.networks)} networks, {len(X) * len(args.networks)} clip evaluations: C library "
          f"{totals[1]:.0f} s, TFLM (estimated from its measured rate) {totals[0]:.0f} s, "
          f"speed-up {totals[0] / totals[1]:.1f}x")
    print("int8 logits identical on every compared clip" if not bad else f"DIFFERENT: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
