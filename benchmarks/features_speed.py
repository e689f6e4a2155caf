"""Feature extraction speed of this checkout against a reference commit, on the same dataset, in the same run.

Each side runs in its own process (``PYTHONPATH`` pointing at its ``lcasc``) with a fresh, empty feature
cache, turns by turn (reference, this checkout, reference, ...), and reports: seconds to import lcasc and
load the dataset, seconds and CPU seconds of :func:`lcasc.features.extract` (all threads), clips/s, peak
resident memory of the process. The feature sets of both sides are then compared: every per-segment label,
index and name must be identical; X and the RMS levels are reported by their largest difference (a reference
before lcasc's float32 log-mel computed in float64: up to ~1e-3 in X, ~1e-6 dB in the levels). All files
are read once before the first turn, so the operating system's page cache is warm for every side alike (the
decode cost measured is lcasc's, not the disk's).

CPU seconds per clip are the figure to compare on a shared machine: wall time also counts the other
processes' share of the CPUs (the load average before and after each turn is printed).

Run: python benchmarks/features_speed.py --dataset scale-data/tau22-10000 --layout tau22 --reference main
(make a TAU22-layout tree with benchmarks/scale.py first; --dataset omitted: the embedded ESC-10 data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

DRIVER = r"""
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0 = time.perf_counter()
import torch  # noqa: F401  (lcasc's CLI has it imported before extracting)
import lcasc
from lcasc.data import load_dataset
from lcasc.features import extract
t1 = time.perf_counter()
dataset, layout, cache = sys.argv[1] or None, sys.argv[2] or None, sys.argv[3]
ds = load_dataset(dataset, layout)
t2 = time.perf_counter()
c = cpu()
fs, problems = extract(ds, cache_dir=cache, progress=False, silence_db=-60.0)
t3 = time.perf_counter()
import numpy as np
np.savez(cache + "/segments.npz", y=fs.y, recording=fs.recording, segment=fs.segment, split=fs.split,
         device=fs.device, level_db=fs.level_db, names=np.array(fs.names), problems=np.array(problems, dtype=str))
print(json.dumps({"lcasc": lcasc.__file__, "import_s": t1 - t0, "load_dataset_s": t2 - t1,
                  "extract_s": t3 - t2, "extract_cpu_s": cpu() - c, "files": len(ds.recordings),
                  "segments": len(fs), "problems": len(problems), "set": fs.file,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def load_average() -> float:
    return os.getloadavg()[0]


def run_side(package_root: Path, dataset: str, layout: str, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    out = subprocess.run([sys.executable, "-c", DRIVER, dataset, layout, str(cache)], env=env, check=True,
                         capture_output=True, text=True, cwd=package_root).stdout  # "" on sys.path: its lcasc
    return json.loads(out.strip().splitlines()[-1])


def same_features(a: dict, b: dict) -> dict:
    """How the two runs' feature sets differ: X (identical, and its largest absolute difference), the RMS
    levels (largest difference, dB), and whether every other per-segment array (label, recording, segment,
    split, device), the recording names and the skipped files are identical."""
    xa, xb = np.load(a["set"], mmap_mode="r"), np.load(b["set"], mmap_mode="r")
    if xa.shape != xb.shape:
        return {"same_shape": False, "shapes": [xa.shape, xb.shape]}
    blocks = [slice(s, s + 4096) for s in range(0, len(xa), 4096)]
    diff = max((float(np.max(np.abs(xa[s] - xb[s]))) for s in blocks), default=0.0)
    identical = all(np.array_equal(xa[s], xb[s]) for s in blocks)
    with np.load(Path(a["cache"]) / "segments.npz") as ma, np.load(Path(b["cache"]) / "segments.npz") as mb:
        # the embedded data's paths differ between the two package folders; the rest must not
        problems = [[str(m).split("lcasc/_data/")[-1] for m in z["problems"]] for z in (ma, mb)]
        segments_equal = all(np.array_equal(ma[k], mb[k]) for k in ma.files if k not in ("problems", "level_db")) \
            and problems[0] == problems[1]
        level_diff = float(np.max(np.abs(ma["level_db"] - mb["level_db"]), initial=0.0))
    return {"same_shape": True, "X_identical": identical, "X_max_abs_diff": diff,
            "level_db_max_abs_diff": level_diff, "segments_identical": segments_equal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="", help="dataset path (default: the embedded ESC-10 data)")
    ap.add_argument("--layout", default="", help="tau22 | folder | csv (default: detected)")
    ap.add_argument("--reference", default="main", help="git commit or branch to compare against")
    ap.add_argument("--turns", type=int, default=2, help="runs of each side (the fastest is reported)")
    ap.add_argument("--work", type=Path, default=None, help="where the caches go (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lcasc-features-speed-"))
    ref_root = work / "reference"
    if not (ref_root / "lcasc").is_dir():
        ref_root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.reference, "lcasc"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(ref_root)], input=archive, check=True)
    if args.dataset:  # warm the page cache for both sides alike
        for p in Path(args.dataset).rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    while fh.read(1 << 20):
                        pass
    sides = {f"reference ({args.reference})": ref_root, "this checkout": REPO}
    best: dict[str, dict] = {}
    for turn in range(args.turns):
        for name, root in sides.items():
            cache = work / f"cache-{'ref' if root == ref_root else 'new'}"
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            before = load_average()
            r = run_side(root, args.dataset, args.layout, cache)
            r.update(cache=str(cache), load_before=before, load_after=load_average())
            print(f"turn {turn + 1} {name:<22} extract {r['extract_s']:7.2f} s wall, {r['extract_cpu_s']:7.2f} s CPU "
                  f"({r['extract_cpu_s'] / r['files'] * 1e6:5.0f} us CPU/clip), "
                  f"{r['files'] / r['extract_s']:6.0f} clips/s; import {r['import_s']:.1f} s, "
                  f"load_dataset {r['load_dataset_s']:.2f} s; peak RSS {r['peak_rss_gb']:.2f} GB; "
                  f"load average {before:.1f} -> {r['load_after']:.1f}", flush=True)
            if name not in best or r["extract_s"] < best[name]["extract_s"]:
                best[name] = r
    (ref_name, ref), (new_name, new) = best.items()
    print(f"fastest turn: {ref['files'] / ref['extract_s']:.0f} -> {new['files'] / new['extract_s']:.0f} clips/s "
          f"({ref['extract_s'] / new['extract_s']:.2f}x wall), CPU per clip "
          f"{ref['extract_cpu_s'] / ref['files'] * 1e6:.0f} -> {new['extract_cpu_s'] / new['files'] * 1e6:.0f} us "
          f"({ref['extract_cpu_s'] / new['extract_cpu_s']:.2f}x); {os.cpu_count()} CPUs")
    print("features:", json.dumps(same_features(ref, new)))


if __name__ == "__main__":
    main()
