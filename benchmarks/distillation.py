"""Does the kd recipe beat the paper's? Mean ± std over seeds on one dataset (default: the embedded ESC-10).

For each seed, ``lcasc run --recipe kd --seed S --out OUT/seedS`` (the paper recipe in ``OUT/seedS``, the kd
recipe in ``OUT/seedS/kd``; finished runs are reused, interrupted ones resume), then, on the test split:

- every network (unpruned, the six pruned) under both recipes and the gain (issue 14 goal: >= +3 points);
- the distilled ``pruned_C123`` against the best paper-recipe network or ensemble of the same run (best by
  validation accuracy, as a user would pick it; and by test accuracy, the stricter comparison);
- the all-six ensemble under both recipes (goal: >= +3 points);
- INT8 against float for the distilled networks (goal: within 2 points);
- the wall time of each recipe.

    python benchmarks/distillation.py --out /tmp/kd-bench --seeds 0 1 2 [-- extra lcasc run options]

Everything after ``--`` goes to ``lcasc run`` (e.g. ``-- --kd-lambda 0.5 --teacher-widths 64-64-128-256``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NETWORKS = ["unpruned", "pruned_C1", "pruned_C2", "pruned_C3", "pruned_C12", "pruned_C23", "pruned_C123"]


def _entries(path: Path) -> dict:
    res = json.loads(path.read_text())
    return {e["name"]: e for e in res["networks"] + res["ensembles"]}, res


def _ms(values) -> str:
    v = 100 * np.asarray(values, float)
    return f"{v.mean():6.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:5.2f}"


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/kd-benchmark", help="base folder; one run directory per seed")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--skip", nargs="*", default=["similarity", "fuse", "baselines"],
                   help="lcasc run stages to leave out (INT8 and ensembles are needed here)")
    args = p.parse_args(argv)
    base = Path(args.out)
    walls = {}
    for seed in args.seeds:
        out = base / f"seed{seed}"
        cmd = [sys.executable, "-m", "lcasc", "-q", "run", "--recipe", "kd", "--seed", str(seed), "--out", str(out),
               *(["--skip", *args.skip] if args.skip else []), *extra]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        walls[seed] = time.perf_counter() - t0

    rows = {"paper": [], "kd": []}
    timing = {"paper": [], "kd": []}
    for seed in args.seeds:
        for recipe, path in (("paper", base / f"seed{seed}" / "results.json"),
                             ("kd", base / f"seed{seed}" / "kd" / "results.json")):
            entries, res = _entries(path)
            rows[recipe].append(entries)
            timing[recipe].append(sum(res.get("timings", {}).values()) + res.get("teacher_seconds", 0))

    print(f"\n{len(args.seeds)} seeds {args.seeds}; test accuracy %, mean ± sample std; extra options: {extra or '-'}")
    print(f"{'network':<24}{'paper':>16}{'kd':>16}{'gain (points)':>18}")
    gains = {}
    for name in NETWORKS + ["ensemble_all", "ensemble_best_budget", "unpruned_int8", "pruned_C123_int8",
                            "ensemble_all_int8"]:
        if not all(name in r for r in rows["paper"] + rows["kd"]):
            continue
        a = [r[name]["accuracy"] for r in rows["paper"]]
        b = [r[name]["accuracy"] for r in rows["kd"]]
        gains[name] = np.subtract(b, a)
        print(f"{name:<24}{_ms(a):>16}{_ms(b):>16}{_ms(gains[name]):>18}")
    nets = [n for n in NETWORKS if n in gains]
    print(f"\nmean gain over the {len(nets)} networks: {100 * np.mean([gains[n].mean() for n in nets]):+.2f} points; "
          f"networks with a mean gain >= 3 points: {sum(gains[n].mean() >= 0.03 for n in nets)}/{len(nets)}")

    def best(entries: dict, key) -> tuple[str, float]:
        cands = [e for e in entries.values() if e.get("kind") in ("cnn", "ensemble") and e["precision"] == "float32"]
        top = max(cands, key=key)
        return top["name"], top["accuracy"]

    print("\ndistilled pruned_C123 against the best paper-recipe network or ensemble of the same run:")
    for label, key in (("by validation accuracy", lambda e: e["validation"]["accuracy"]),
                       ("by test accuracy", lambda e: e["accuracy"])):
        picks = [best(r, key) for r in rows["paper"]]
        c123 = [r["pruned_C123"]["accuracy"] for r in rows["kd"]]
        diff = np.subtract(c123, [p[1] for p in picks])
        print(f"  best {label}: {', '.join(p[0] for p in picks)}: {_ms([p[1] for p in picks])} vs kd pruned_C123 "
              f"{_ms(c123)}: difference {_ms(diff)} points; kd C123 at least as accurate in "
              f"{int((diff >= 0).sum())}/{len(diff)} seeds")
    if all("pruned_C123" in r for r in rows["kd"]):
        print(f"  MACs: kd pruned_C123 {np.mean([r['pruned_C123']['macs'] for r in rows['kd']]) / 1e6:.2f} M, "
              f"paper ensemble_all {np.mean([r['ensemble_all']['macs'] for r in rows['paper']]) / 1e6:.2f} M")

    print("\nINT8 against float, kd networks (points, int8 - float): ")
    worst, seen = 0.0, False
    for name in nets:
        if all(f"{name}_int8" in r for r in rows["kd"]):
            seen = True
            d = [r[f"{name}_int8"]["accuracy"] - r[name]["accuracy"] for r in rows["kd"]]
            worst = max(worst, max(abs(x) for x in d))
            print(f"  {name:<14} {_ms(d)}  (max |diff| {100 * max(abs(x) for x in d):.2f})")
    if seen:
        print(f"  largest |INT8 - float| over networks and seeds: {100 * worst:.2f} points")
    else:
        print("  no INT8 entries in the kd runs (quantize skipped)")
    print(f"\nwall time per seed (s): {', '.join(f'{s}: {w:.0f}' for s, w in walls.items())}; stage time paper "
          f"{np.mean(timing['paper']):.0f} s, kd (teacher included) {np.mean(timing['kd']):.0f} s on average "
          "(a resumed seed counts only the work it did)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
