"""Training throughput of the paper's CNN: lcasc's training (:func:`lcasc.train.fit`) against a plain PyTorch loop.

Both train the same network (same initial weights) with the same recipe (Adam 1e-3, batch 64, cross-entropy,
one validation pass per epoch in batches of INFERENCE_BATCH), on the same real features (the embedded ESC-10
log-mel, repeated to ``--segments``) in the same shuffled batches (lcasc's sampler), one after the other,
``--repeats`` times alternately (fair under a shared machine's changing load). The plain loop runs in this
process on all its threads; lcasc as ``lcasc run`` would for this many segments (compiled), or with
``--processes N`` data-parallel in N processes of one thread each (``--train-processes``). Printed: training
segments per second of each epoch after the first (the first holds the one-off costs: torch.compile,
starting the processes; printed apart), their medians and the ratio, and each loop's final validation
log-loss and accuracy (equal in distribution, not in bits: the compiled step computes the same function in
another order of floating-point operations, and data-parallel processes normalise each batch-norm layer over
their own share of the batch, 32 of its 64 rows).

Run: python benchmarks/train_throughput.py [--segments N] [--epochs N] [--repeats N] [--compile auto|on|off]
     [--processes N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lcasc.data import load_dataset
from lcasc.features import extract
from lcasc.models.cnn import LowComplexityCNN
from lcasc.train import INFERENCE_BATCH, TrainConfig, fit, loader, processes, use_compile
from lcasc.workers import cpu_count


def plain_loop(X, y, Xv, yv, epochs: int) -> tuple[list[float], float, float]:
    """The textbook loop; returns seconds per epoch, final validation log-loss and accuracy."""
    torch.manual_seed(0)
    net = LowComplexityCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train, val = loader(X, y, 64, 0, True), loader(Xv, yv, INFERENCE_BATCH, 0, False)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        for xb, yb in train:
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(xb) for xb, _ in val])
        times.append(time.perf_counter() - t0)
    yt = torch.from_numpy(yv)
    return times, F.cross_entropy(logits, yt).item(), (logits.argmax(1) == yt).float().mean().item()


class _EpochTimer(L.Callback):
    """Seconds of each epoch (training and validation), appended to ``path`` by the first training process
    (with several, they run in processes of their own)."""

    def __init__(self, path):
        self.path, self._t0 = path, 0.0

    def on_train_epoch_start(self, trainer, module):
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, module):  # after the epoch's validation, as the plain loop
        if trainer.is_global_zero:
            with open(self.path, "a") as fh:
                fh.write(f"{time.perf_counter() - self._t0}\n")


def lcasc_loop(X, y, Xv, yv, epochs: int, compile_: bool | None, processes: int | None
               ) -> tuple[list[float], float, float]:
    torch.manual_seed(0)
    times = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    timer = _EpochTimer(times)
    import lcasc.train as train

    original = train.L.Trainer

    def trainer(*a, callbacks=(), **k):  # lcasc's own Trainer settings, plus the timer
        return original(*a, callbacks=[*callbacks, timer], **k)

    train.L.Trainer = trainer
    try:
        with tempfile.TemporaryDirectory() as d:
            _, history = fit(LowComplexityCNN(), X, y, Xv, yv, TrainConfig(
                max_epochs=epochs, patience=10**6, progress=False, compile=compile_, processes=processes), d)
    finally:
        train.L.Trainer = original
    seconds = [float(t) for t in Path(times).read_text().split()]
    Path(times).unlink()
    return seconds, history[-1]["val_log_loss"], history[-1]["val_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=20_480, help="training segments per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per training (the first is reported apart)")
    ap.add_argument("--repeats", type=int, default=1, help="trainings of each loop, alternating")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="lcasc's torch.compile setting (auto: what lcasc run would do for this many segments)")
    ap.add_argument("--processes", type=int, default=1,
                    help="lcasc's data-parallel training processes, as --train-processes (0: one per CPU); default 1")
    args = ap.parse_args()
    torch.set_num_threads(cpu_count())
    fs, _ = extract(load_dataset(None), progress=False, silence_db=-60.0)
    tr, va = fs.subset("train"), fs.subset("validate")
    idx = np.resize(np.arange(len(tr)), args.segments)
    X, y = np.ascontiguousarray(tr.X[idx]), tr.y[idx]
    Xv, yv = np.ascontiguousarray(va.X), va.y
    compile_ = {"auto": None, "on": True, "off": False}[args.compile]
    compiled = use_compile(TrainConfig(compile=compile_), len(X))
    asked = args.processes or None  # 0: one per CPU, as lcasc's --train-processes 0
    world = processes(TrainConfig(processes=asked), len(X))
    plain_loop(X[:256], y[:256], Xv[:64], yv[:64], 1)  # warm-up
    rates = {"plain": [], "lcasc": []}
    first, final = {"plain": [], "lcasc": []}, {}
    for _ in range(args.repeats):
        for name in ("plain", "lcasc"):
            times, loss, acc = (plain_loop(X, y, Xv, yv, args.epochs) if name == "plain"
                                else lcasc_loop(X, y, Xv, yv, args.epochs, compile_, asked))
            rates[name] += [len(X) / t for t in times[1:]]
            first[name].append(times[0])
            final[name] = (loss, acc)
    print(f"{cpu_count()} CPUs (torch threads {torch.get_num_threads()}), load average "
          f"{__import__('os').getloadavg()[0]:.1f}; {len(X)} real training segments (ESC-10 repeated), "
          f"{len(Xv)} validation, batch 64, {args.epochs} epochs x {args.repeats}; lcasc torch.compile: {compiled}, "
          f"{world} data-parallel process(es)")
    for name, label in (("plain", "plain PyTorch loop"), ("lcasc", "lcasc.train.fit")):
        r = rates[name]
        print(f"{label:<20} median {statistics.median(r):7.0f} segments/s (epochs 2+: "
              f"{', '.join(f'{v:.0f}' for v in r)}); first epoch {statistics.median(first[name]):.1f} s; "
              f"final val log-loss {final[name][0]:.4f}, accuracy {final[name][1]:.4f}")
    ratio = statistics.median(rates["lcasc"]) / statistics.median(rates["plain"])
    print(f"lcasc / plain: {ratio:.2f}x (medians of training+validation epochs after the first)")


if __name__ == "__main__":
    main()
