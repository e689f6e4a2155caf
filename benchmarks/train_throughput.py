"""Training throughput of the paper's CNN: PyTorch Lightning (what lcasc uses) against a plain PyTorch loop.

Same data in memory, same batches, same optimiser; prints segments per second of each and the overhead.
Run: .venv/bin/python benchmarks/train_throughput.py [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from lcasc.models.cnn import LowComplexityCNN
from lcasc.train import TrainConfig, fit, loader


def plain_loop(X, y, Xv, yv, epochs: int) -> float:
    torch.manual_seed(0)
    net = LowComplexityCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train, val = loader(X, y, 64, 0, True), loader(Xv, yv, 1024, 0, False)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for xb, yb in train:
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for xb, yb in val:
                F.cross_entropy(net(xb), yb)
    return time.perf_counter() - t0


def lightning_loop(X, y, Xv, yv, epochs: int) -> float:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        fit(LowComplexityCNN(), X, y, Xv, yv, TrainConfig(max_epochs=epochs, patience=10**6, progress=False), d)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--segments", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.segments, 40, 51)).astype(np.float32)
    y = rng.integers(0, 10, args.segments)
    Xv, yv = X[: args.segments // 4], y[: args.segments // 4]
    plain_loop(X[:256], y[:256], Xv[:64], yv[:64], 1)  # warm-up
    t_plain = plain_loop(X, y, Xv, yv, args.epochs)
    t_light = lightning_loop(X, y, Xv, yv, args.epochs)
    n = args.segments * args.epochs
    print(f"threads {torch.get_num_threads()}, {args.segments} training segments x {args.epochs} epochs")
    print(f"plain PyTorch : {n / t_plain:8.0f} segments/s ({t_plain:.2f} s)")
    print(f"Lightning     : {n / t_light:8.0f} segments/s ({t_light:.2f} s)")
    print(f"Lightning overhead: {100 * (t_light / t_plain - 1):+.1f} %")


if __name__ == "__main__":
    main()
