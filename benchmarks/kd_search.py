"""Choose the kd recipe's settings on VALIDATION data: train the unpruned student under a few settings and
seeds for a fixed number of epochs, then read off each epoch's validation log-loss and accuracy.

Early stopping does not change what is trained up to the epoch it stops at, so one long training per setting
and seed shows every patience at once: for patience P the kept network is the one of the lowest validation
log-loss before P epochs passed without a lower one (what lcasc.train.fit keeps). The test split is never
read: settings chosen here are then measured on it by benchmarks/distillation.py.

    lcasc run --recipe kd --out DIR --skip quantize ensemble similarity fuse baselines   # caches the teacher
    python benchmarks/kd_search.py --run DIR --seeds 0 1 --epochs 150 \\
        "lam=0.2,tau=2" "lam=0.5,tau=2" "lam=0.2,tau=2,aug=none" "lam=1,aug=none"

A setting is ``key=value`` pairs: ``lam`` (λ, 1 = no distillation), ``tau``, ``aug`` (``kd``, ``none``, or
:func:`lcasc.study.parse_augment`'s ``key=value+key=value``). Teacher: the one cached in ``DIR/kd``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

PATIENCES = (20, 30, 50, 80)


def parse(setting: str) -> dict:
    out = {"lam": 0.2, "tau": 2.0, "aug": "kd"}
    for item in setting.split(","):
        key, _, value = item.partition("=")
        if key not in out or not value:
            raise SystemExit(f"setting {setting!r}: write key=value pairs with keys lam, tau, aug")
        out[key] = value if key == "aug" else float(value)
    return out


def stopped(loss: np.ndarray, patience: int) -> int:
    """The epoch lcasc.train.fit keeps with this patience (lowest validation log-loss before stopping)."""
    best = 0
    for e in range(1, len(loss)):
        if loss[e] < loss[best]:
            best = e
        elif e - best >= patience:
            break
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory whose kd/ holds the cached teacher logits")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("settings", nargs="+")
    args = p.parse_args()

    from lcasc.models.cnn import CNNClassifier
    from lcasc.recipes import KD_DIR, teacher_logits
    from lcasc.run import Run
    from lcasc.study import parse_augment

    kd = Run(Path(args.run) / KD_DIR, progress=False)
    tr, va = kd.split("train"), kd.split("validate")
    teacher = teacher_logits(kd)
    out = Path(args.run) / "kd_search"
    print(f"teacher: {kd.model_dir('teacher') / 'teacher.json'}; {len(tr.y)} training, {len(va.y)} validation "
          "segments; validation accuracy % at the epoch each patience keeps (counted from 1), its log-loss; "
          "means over seeds")
    print(f"{'setting':<36}" + "".join(f"{'patience ' + str(q):>22}" for q in PATIENCES) + f"{'last epoch':>22}")
    for setting in args.settings:
        s = parse(setting)
        cols = {q: [] for q in PATIENCES} | {"last": []}
        for seed in args.seeds:
            cfg = replace(kd.config.train, max_epochs=args.epochs, patience=args.epochs + 1, seed=seed, progress=False,
                          threads=args.threads, kd_lambda=s["lam"], kd_temperature=s["tau"],
                          augment=parse_augment(s["aug"].replace("+", ",")))
            folder = out / f"{setting.replace('=', '').replace(',', '_')}_seed{seed}"
            t0 = time.perf_counter()
            clf = CNNClassifier(kd.classes, spec=kd.config.spec(len(kd.classes)), train_config=cfg, workdir=folder)
            clf.fit(tr.X, tr.y, va.X, va.y, teacher if s["lam"] < 1 else None)
            loss = np.array([h["val_log_loss"] for h in clf.history])
            acc = np.array([h["val_accuracy"] for h in clf.history])
            for q in PATIENCES:
                e = stopped(loss, q)
                cols[q].append((acc[e], e + 1, loss[e]))
            cols["last"].append((acc[-1], len(acc), loss[-1]))
            print(f"  {setting} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        cells = [f"{100 * np.mean([c[0] for c in v]):6.2f} (ep {np.mean([c[1] for c in v]):3.0f}, "
                 f"ll {np.mean([c[2] for c in v]):.3f})" for v in cols.values()]
        print(f"{setting:<36}" + "".join(f"{c:>22}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
