"""One job of the study: train and evaluate one (variant, seed) network, in a worker process or a Ray task."""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Job:
    """One (variant, repeat): plain data only, so it pickles to a process or a Ray task."""

    variant: str
    kernel_size: int
    activations: str
    repeat: int
    seed: int
    spec: dict  # CNNSpec.to_dict()
    train: dict  # TrainConfig fields (progress off)
    workdir: str
    recipe: str = "paper"  # kd: distilled from the teacher logits of the run's kd recipe (DIR/kd)
    ir_p: float = 0.0  # probability of training on a device-impulse-response copy (0: never)

    @property
    def result_path(self) -> Path:
        return Path(self.workdir) / "job.json"


@contextlib.contextmanager
def _one_thread():
    """torch on one thread for the whole job (training and evaluation), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _weights_digest(net) -> str:
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_job(job: Job, X_train, y_train, X_val, y_val, X_test, y_test, teacher=None, impulse=None) -> dict:
    """Train and evaluate one network; returns the job's result (``job.json``). Deterministic for a seed.
    ``impulse``: the run's :class:`lcasc.impulse.Copies`, trained on with probability ``job.ir_p``."""
    from dataclasses import replace

    import torch

    from lcasc import metrics
    from lcasc.models.cnn import CNNSpec, LowComplexityCNN
    from lcasc.train import TrainConfig, fit, predict_logits

    t0 = time.perf_counter()
    spec = CNNSpec.from_dict(job.spec)
    config = TrainConfig(**job.train, progress=False, threads=1)
    with _one_thread(), warnings.catch_warnings():
        # Features arrive read-only (memory-mapped .npy or Ray's object store); nothing writes to them.
        warnings.filterwarnings("ignore", ".*not writable.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")  # job_config.json, or a resume
        torch.manual_seed(job.seed)
        net = LowComplexityCNN.from_spec(spec)
        net, history = fit(net, X_train, y_train, X_val, y_val, config, job.workdir,
                           np.asarray(teacher) if job.recipe == "kd" else None,
                           replace(impulse, p=job.ir_p) if job.ir_p > 0 else None)
        threads = torch.get_num_threads()
        test = metrics.scores(torch.softmax(torch.from_numpy(predict_logits(net, X_test)), 1).numpy(), y_test,
                              spec.n_classes)
        val = metrics.scores(torch.softmax(torch.from_numpy(predict_logits(net, X_val)), 1).numpy(), y_val,
                             spec.n_classes)
    best = min(history, key=lambda h: h["val_log_loss"]) if history else {"epoch": None}
    return {"variant": job.variant, "kernel_size": job.kernel_size, "activations": job.activations,
            "recipe": job.recipe, "augment": config.augment.to_dict() if config.augment.active else None,
            "ir_p": job.ir_p,
            "widths": spec.widths, "repeat": job.repeat, "seed": job.seed,
            "accuracy": test["accuracy"], "class_avg_accuracy": test["class_avg_accuracy"],
            "log_loss": test["log_loss"], "val_log_loss": val["log_loss"], "val_accuracy": val["accuracy"],
            "epochs": len(history), "best_epoch": best["epoch"], "n_test": int(len(y_test)),
            "weights_sha256": _weights_digest(net), "threads": threads,
            "seconds": round(time.perf_counter() - t0, 2), "train": job.train, "spec": job.spec}
