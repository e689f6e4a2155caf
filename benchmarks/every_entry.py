"""Does every name of a run's results.json run as it was evaluated? For each entry (networks, INT8 networks,
baselines, ensembles, fused ones), ``lcasc.load(DIR, NAME)`` on the run's whole test split against the
probabilities its evaluation saved (``models/<name>/probabilities.npz``): the largest absolute difference,
whether they are bit-identical, the backend that ran and the seconds it took (loading included).

The unit test (tests/test_family.py) checks the same on a small run and, for INT8 entries, on the first
test segments only (TFLite Micro runs clip by clip); this goes through every segment of a real run.

Run: .venv/bin/python benchmarks/every_entry.py --run runs/default
Exit status 1 when a float entry differs by more than 1e-5 or an INT8 (TFLM) entry is not bit-identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import lcasc
from lcasc.io import read_json
from lcasc.run import Run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a finished run directory")
    args = parser.parse_args(argv)
    results = read_json(args.run / "results.json")
    X = Run(args.run, progress=False).split("test").X
    print(f"{args.run}: {len(X)} test segments")
    print(f"{'entry':<34} {'backend':<12} {'max |diff|':>10}  identical  seconds")
    bad = []
    for entry in results["networks"] + results["ensembles"]:
        name = entry["name"]
        t0 = time.perf_counter()
        p = lcasc.load(args.run, name)
        got = np.asarray(p.classifier.predict_proba(X))
        seconds = time.perf_counter() - t0
        with np.load(args.run / "models" / name / "probabilities.npz") as z:
            want = z["test"]
        diff = float(np.abs(got.astype(np.float64) - want).max())
        same = bool(np.array_equal(got.astype(np.float32), want))
        if ("tflite" in p.backend and not same) or diff > 1e-5:
            bad.append(name)
        print(f"{name:<34} {p.backend:<12} {diff:10.2e}  {str(same):<9}  {seconds:7.2f}", flush=True)
    print("all entries reproduce their evaluation" if not bad else f"DIFFERENT: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
