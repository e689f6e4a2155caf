"""Training: Adam, batch 64, cross-entropy, early stopping on validation log-loss (paper §3).

PyTorch Lightning runs the loop (devices, checkpoints, early stopping, progress bar); this module says
what to compute. Features stay in memory as tensors and batches are sliced from them, with the shuffle
order a function of (seed, epoch), so an interrupted run resumed from ``last.ckpt`` continues exactly as an
uninterrupted one would.

A training can run data-parallel (``TrainConfig.processes``, ``--train-processes``; :func:`processes`): in
processes of one thread each, every process computing its share of each batch of 64 (:func:`share`; Lightning's
DDP over gloo averages their gradients) and of each validation pass. Why: these networks' operations are too
small to split between threads: here two processes of one thread each ran 1.6x the compiled training steps of
one process of two threads, and the whole training (benchmarks/train_throughput.py) 1.69x the plain loop's
segments per second against 1.36x for one compiled process. What changes: each process's batch-norm layers
normalise over its own share of the batch (32 rows, not 64) and keep running statistics of their own shares,
averaged over the processes before each validation (so every process validates, and the checkpoints keep, the
same network): a data-parallel training equals a single-process one in distribution, not in bits (early in a
training it lags slightly: smaller batch-norm batches are noisier), so it is asked for, not the default. It is
deterministic for a given number of processes, and resumes as one.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from lcasc import augment, distill
from lcasc.allocator import release_freed_memory, release_mapped_pages
from lcasc.io import write_text
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")
for _name in ("lightning.pytorch", "lightning.fabric"):  # keep Lightning's INFO chatter out of our output
    logging.getLogger(_name).setLevel(logging.WARNING)


class _EpochBar(TQDMProgressBar):
    """One progress bar per epoch; no separate bar for the (short) validation pass."""

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar


@dataclass
class TrainConfig:
    max_epochs: int = 1000  # the paper's budget; early stopping ends training long before
    patience: int = 20  # epochs without a lower validation log-loss before stopping
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    progress: bool = True
    threads: int | None = None  # CPU threads; None: every core (fine-tuning jobs use one each, side by side)
    processes: int | None = 1  # data-parallel training processes; None: as :func:`processes` decides
    compile: bool | None = None  # torch.compile the training step; None: on CPU when the set is large (below)
    # Knowledge distillation (lcasc.distill): weight of the label loss (1: plain cross-entropy) and temperature.
    kd_lambda: float = 1.0
    kd_temperature: float = 2.0
    augment: augment.AugmentConfig = field(default_factory=augment.AugmentConfig)  # off by default (paper)

    def __post_init__(self):
        self.augment = augment.AugmentConfig.coerce(self.augment)
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise ValueError(f"kd_lambda must be in [0, 1], got {self.kd_lambda}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be positive, got {self.kd_temperature}")


# torch.compile's one-off cost (tens of seconds per training) pays off from about this many training segments
# on a CPU (benchmarks/train_throughput.py); smaller sets (the embedded data, tests) train eagerly.
COMPILE_MIN_SEGMENTS = 20_000
# Segments per forward pass when only predicting (validation, evaluation, ensembles). Small on purpose: one
# pass keeps several 16 x 40 x 51 float maps per segment alive (~0.13 MB each), and small batches are also
# faster on a CPU, their maps staying in cache. predict_logits, 2 threads, 2-core EPYC: batch 2048 on 8,192
# segments peaked at 1.37 GB RSS (0.69 at 256); on 20,000 TAU22-size segments, batch 256 ran 1,429-1,543
# segments/s and added 95-271 MB at its peak, batch 32 ran 2,518-3,119 segments/s and added 0-8 MB.
INFERENCE_BATCH = 32
# Batches (of training, validation or prediction) between two hand-backs of freed heap memory to the kernel.
RELEASE_EVERY = 32


def use_compile(config: TrainConfig, n_train: int) -> bool:
    """Whether :func:`fit` compiles the training step: as asked, else on CPU-only machines for large sets."""
    if config.compile is not None:
        return bool(config.compile)
    return n_train >= COMPILE_MIN_SEGMENTS and not torch.cuda.is_available()


def processes(config: TrainConfig, n_train: int) -> int:
    """How many processes :func:`fit` trains in, data-parallel: 1 when ``config.threads`` is set (fine-tuning
    and study jobs, which already run side by side in worker processes, a thread each); else as asked
    (``config.processes``, default 1), or for ``processes=None`` one per CPU (:func:`lcasc.workers.cpu_count`)
    on CPU-only machines for large sets (each process starts and compiles on its own: it pays off where
    compiling does)."""
    if config.threads is not None:
        return 1
    if config.processes is not None:
        return max(1, int(config.processes))
    if torch.cuda.is_available() or n_train < COMPILE_MIN_SEGMENTS:
        return 1
    return cpu_count()


def share(n: int, rank: int, world: int) -> tuple[int, int, float]:
    """Rows ``start:stop`` of a batch of ``n`` that process ``rank`` of ``world`` computes, and the weight of
    its mean loss: an even split, weighted ``len(share) * world / n`` so that the average of the processes'
    gradients (what DDP computes) is the whole batch's. A process whose share would be empty (``n < world``,
    a last batch) computes row 0 with weight 0: every process must run every step."""
    start, stop = rank * n // world, (rank + 1) * n // world
    return (start, stop, (stop - start) * world / n) if stop > start else (0, 1, 0.0)


class EpochBatches(torch.utils.data.Sampler):
    """Index batches of a shuffled permutation that depends only on (seed, epoch).

    ``epoch`` is asked for when an epoch's iteration starts (Lightning's ``set_epoch`` comes too late after
    a resume from a checkpoint, so the trainer's own epoch counter is read instead).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, epoch=lambda: 0, rank=lambda: (0, 1)):
        self.n, self.batch_size, self.seed, self.shuffle, self.epoch = n, batch_size, seed, shuffle, epoch
        self.rank = rank  # (this process's rank, processes): each batch is cut into their shares (:func:`share`)

    def __iter__(self):
        # A generator: the order is drawn when the first batch is fetched, when the epoch counter is current.
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        rank, world = self.rank()
        for batch in order.split(self.batch_size):
            start, stop, _ = share(len(batch), rank, world)
            yield batch[start:stop]

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size


class _InMemory(torch.utils.data.Dataset):
    """Features as one tensor; a memory-mapped float32 X (lcasc.features) is wrapped, not copied.

    With ``impulse`` (:class:`lcasc.impulse.Copies`), an example is replaced by one of its convolved copies
    as :func:`lcasc.impulse.draws` says for (``seed``, the current epoch)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, teacher: np.ndarray | None = None, impulse=None,
                 seed: int = 0, epoch=lambda: 0):
        with warnings.catch_warnings():  # read-only maps (a worker's): batches are copied out, never written
            warnings.filterwarnings("ignore", ".*not writable.*")
            self.X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).unsqueeze(1)
            self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
            self.teacher = None if teacher is None else torch.from_numpy(np.asarray(teacher, dtype=np.float32))
        self.impulse, self.seed, self.epoch = impulse, seed, epoch
        if impulse is not None:
            self.copies, self.slot = impulse.open()
            self._draws = (None, None)  # (epoch, its draws)

    def __len__(self):
        return len(self.y)

    def _convolved(self, idx: torch.Tensor) -> torch.Tensor:
        """The examples ``idx``, those drawn this epoch replaced by their convolved copy."""
        from lcasc.impulse import draws

        x = self.X[idx]
        epoch = self.epoch()
        if self._draws[0] != epoch:
            self._draws = (epoch, draws(self.seed, epoch, self.slot, len(self.copies), self.impulse.p))
        chosen = self._draws[1][idx.numpy()]
        for k in np.unique(chosen[chosen >= 0]):
            at = np.flatnonzero(chosen == k)
            x[at, 0] = torch.from_numpy(np.ascontiguousarray(self.copies[k][self.slot[idx.numpy()[at]]]))
        return x

    def __getitem__(self, idx):  # idx is a whole batch of indices
        x = self.X[idx] if self.impulse is None else self._convolved(idx)
        if self.teacher is None:
            return x, self.y[idx]
        return x, self.y[idx], self.teacher[idx]


def loader(X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool, epoch=lambda: 0,
           teacher: np.ndarray | None = None, impulse=None, rank=lambda: (0, 1)):
    return torch.utils.data.DataLoader(_InMemory(X, y, teacher, impulse, seed, epoch), batch_size=None,
                                       sampler=EpochBatches(len(y), batch_size, seed, shuffle, epoch, rank))


def compiled_forward(net: nn.Module):
    """``net``'s forward pass compiled by torch.compile (Inductor), channels-last.

    Why: on a CPU the small convolutions of these networks are dominated by per-op overhead, which Inductor
    fuses away; channels-last lets it vectorise over channels (measured side by side:
    benchmarks/train_throughput.py). ``net``'s weights are switched to channels-last in place (same values);
    :func:`fit` switches them back. A machine where compilation fails (no C++ compiler) falls back to eager.
    """
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # fall back to eager rather than fail a training
    net.to(memory_format=torch.channels_last)
    compiled = torch.compile(net, dynamic=False)  # two static shapes: full batches and the last one

    def forward(x):
        return compiled(x.contiguous(memory_format=torch.channels_last))

    return forward


class Classification(L.LightningModule):
    """Any torch module mapping features to logits, trained with cross-entropy, or with the distillation loss
    of :mod:`lcasc.distill` when batches carry teacher logits, on batches augmented by :mod:`lcasc.augment`."""

    def __init__(self, net: nn.Module, lr: float = 1e-3, config: TrainConfig | None = None, compiled: bool = False,
                 rows: tuple[int, int] = (0, 0)):
        super().__init__()
        self.net, self.lr = net, lr
        self.config = config or TrainConfig()
        self.rows = rows  # (training, validation) segments: where each batch ends, for the processes' shares
        # The training forward pass, compiled or not. Kept out of the module's children (and so out of its
        # state_dict and checkpoints): it shares ``net``'s parameters. Validation runs ``net`` eagerly.
        self.__dict__["_train_forward"] = compiled_forward(net) if compiled else net
        self.history: list[dict] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._train_loss: list[torch.Tensor] = []

    def forward(self, x):
        return self.net(x)

    def _weight(self, rows: int, batch_size: int, batch_idx: int) -> float:
        """This process's weight for its share of batch ``batch_idx`` of ``rows`` (:func:`share`)."""
        n = min(batch_size, rows - batch_idx * batch_size)
        return share(n, self.trainer.global_rank, self.trainer.world_size)[2]

    def setup(self, stage):
        if self.trainer.world_size > 1:  # in each training process: the CPUs shared out between them
            torch.set_num_threads(max(1, cpu_count() // self.trainer.world_size))

    def training_step(self, batch, batch_idx):
        x, y, *teacher = batch
        mix = None
        if self.config.augment.active:  # the paper recipe: nothing drawn, the batch as it comes
            x, mix = augment.apply(x, self.config.augment, augment.batch_rng(self.config.seed, self.current_epoch,
                                                                               batch_idx))
        loss = distill.kd_loss(self._train_forward(x), y, teacher[0] if teacher else None, self.config.kd_lambda,
                               self.config.kd_temperature, mix)
        if self.trainer.world_size > 1:
            loss = loss * self._weight(self.rows[0], self.config.batch_size, batch_idx)
        self._train_loss.append(loss.detach())
        return loss

    def on_validation_epoch_start(self):
        # each process has kept the batch-norm running statistics of its own shares: validate (and keep) their
        # average, the same in every process (a collective per epoch, not one per training step)
        if self.trainer.world_size > 1:
            buffers = [b for b in self.net.buffers() if b.is_floating_point()]
            flat = torch.cat([b.flatten() for b in buffers])
            torch.distributed.all_reduce(flat)
            flat /= self.trainer.world_size
            for b, v in zip(buffers, flat.split([b.numel() for b in buffers])):
                b.copy_(v.view_as(b))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.trainer.world_size == 1 or self._weight(self.rows[1], INFERENCE_BATCH, batch_idx) > 0:
            self._val.append((self.net(x).float(), y))

    def on_validation_epoch_end(self):
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val])
        self._val.clear()
        # sums over this process's share, then over all processes: the log-loss (cross-entropy of the softmax
        # probabilities) and accuracy of the whole validation set, the same in every process
        train = torch.stack(self._train_loss).double() if self._train_loss else torch.zeros(0, dtype=torch.float64)
        sums = torch.stack([F.cross_entropy(logits.double(), y, reduction="sum"),
                            (logits.argmax(1) == y).sum().double(), torch.tensor(float(len(y)), dtype=torch.float64),
                            train.sum(), torch.tensor(float(len(train)), dtype=torch.float64)])
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(sums)
        val_loss, val_acc = (sums[0] / sums[2]).float(), (sums[1] / sums[2]).float()
        self.log("val_log_loss", val_loss, prog_bar=True)
        self.log("val_accuracy", val_acc, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        # the mean over steps of the batch's loss (each process holds its weighted share of every step's)
        train_loss = (sums[3] / sums[4]).item() if sums[4] > 0 else float("nan")
        self._train_loss.clear()
        self.history.append({"epoch": self.current_epoch, "train_loss": round(train_loss, 6),
                             "val_log_loss": round(val_loss.item(), 6), "val_accuracy": round(val_acc.item(), 6)})

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint):
        self.history = checkpoint.get("history", [])


class _ReleaseFreedMemory(Callback):
    """Gives the heap's free holes back to the kernel every ``every`` batches of training and of validation and
    after each validation, so that a long training does not grow its process
    (:func:`lcasc.allocator.release_freed_memory`); and, with the training batches and after each validation,
    the pages it has read of read-only memory-mapped ``mapped`` features (:func:`lcasc.allocator.
    release_mapped_pages`)."""

    def __init__(self, every: int = RELEASE_EVERY, mapped: tuple = ()):
        self.every, self.mapped = every, mapped

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (batch_idx + 1) % self.every == 0:
            release_freed_memory()
            release_mapped_pages(*self.mapped)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        # the heap grows during validation too: at TAU22 size a fine-tuning worker under load went from 0.4 to
        # 1.8 GB anonymous within one validation pass over 36,108 segments, and back at its end
        if (batch_idx + 1) % self.every == 0:
            release_freed_memory()

    def on_validation_end(self, trainer, module):
        release_freed_memory()
        release_mapped_pages(*self.mapped)


class _EpochLog(Callback):
    """Rewrites ``train_log.csv`` (one row per epoch) after each validation."""

    def __init__(self, path: Path):
        self.path = path

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or not module.history or not trainer.is_global_zero:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(module.history[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(module.history)
        write_text(self.path, buf.getvalue())


def fit(net: nn.Module, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
        config: TrainConfig, workdir: str | Path, teacher_logits: np.ndarray | None = None, impulse=None
        ) -> tuple[nn.Module, list[dict]]:
    """Train ``net`` in place; returns it with the weights of the lowest validation log-loss, and the history.

    ``workdir`` holds ``last.ckpt`` (resumed from if present), ``best.ckpt`` and ``train_log.csv``.
    X: (N, 40, 51) float32, y: (N,) int64; ``teacher_logits`` (N, n_classes): distil from them with
    ``config.kd_lambda`` and ``config.kd_temperature`` (early stopping still watches the validation log-loss).
    ``impulse`` (:class:`lcasc.impulse.Copies` of these training rows): per example and epoch, with its
    probability, a device-impulse-response copy is trained on instead (validation is never convolved).
    Trains in :func:`processes` processes (forked from this one, which waits for them; see the module's notes).
    """
    if teacher_logits is not None and (np.ndim(teacher_logits) != 2 or len(teacher_logits) != len(y)):
        raise ValueError(f"teacher logits of shape {np.shape(teacher_logits)} for {len(y)} training segments")
    if impulse is not None and impulse.n_train != len(y):
        raise ValueError(f"impulse-response copies of {impulse.n_train} training segments for {len(y)}")
    if impulse is not None and impulse.p <= 0:
        impulse = None  # probability 0: the features as they are
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if len(X) == 0 or len(X_val) == 0:
        raise ValueError(f"cannot train with {len(X)} training and {len(X_val)} validation segments")
    L.seed_everything(config.seed, workers=True, verbose=False)
    torch.set_num_threads(config.threads or cpu_count())
    world = processes(config, len(X))
    module = Classification(net.train(), config.lr, config, compiled=use_compile(config, len(X)),
                            rows=(len(X), len(X_val)))
    best = ModelCheckpoint(dirpath=workdir, filename="best", monitor="val_log_loss", mode="min", save_top_k=1,
                           save_last=True, enable_version_counter=False)
    callbacks = [best, EarlyStopping("val_log_loss", patience=config.patience, mode="min"), _EpochLog(workdir /
                 "train_log.csv"), _ReleaseFreedMemory(mapped=(X, X_val))]
    if config.progress:
        callbacks.append(_EpochBar(leave=False))
    devices = dict(accelerator="auto", devices=1)
    if world > 1:
        # forked, not spawned (nothing to pickle: they share the memory-mapped features); each step's one
        # collective is the gradients' average (the batch-norm buffers are averaged before validation)
        devices = dict(accelerator="cpu", devices=world, strategy=DDPStrategy(
            start_method="fork", process_group_backend="gloo", forward_sync_buffers=False,
            gradient_as_bucket_view=True))
    trainer = L.Trainer(max_epochs=config.max_epochs, logger=False, use_distributed_sampler=False, **devices,
                        callbacks=callbacks, enable_progress_bar=config.progress, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=True, default_root_dir=workdir)
    rank = lambda: (trainer.global_rank, trainer.world_size)  # noqa: E731 - asked in each process
    last = workdir / "last.ckpt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*(LeafSpec|treespec|TreeSpec).*")
        # workdir holds finetune.json (the budget), or the checkpoints of a training being resumed
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        # the validation metrics are already the whole set's in every process (on_validation_epoch_end)
        warnings.filterwarnings("ignore", ".*sync_dist=True.*")
        trainer.fit(module, loader(X, y, config.batch_size, config.seed, True, lambda: trainer.current_epoch,
                                        teacher_logits, impulse, rank),
                    loader(X_val, y_val, INFERENCE_BATCH, config.seed, False, rank=rank),
                    ckpt_path=str(last) if last.is_file() else None)
    state = torch.load(best.best_model_path or last, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    net = module.net.cpu().eval().to(memory_format=torch.contiguous_format)
    if world == 1:
        return net, module.history
    # several processes: this one trained none of it; the first wrote every epoch to train_log.csv (last.ckpt
    # may have been saved before the last epoch's row)
    with open(workdir / "train_log.csv", newline="") as fh:
        return net, [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def predict_logits(net: nn.Module, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """(N, 40, 51) -> (N, n_classes) logits, in eval mode, in batches of ``batch_size`` (default INFERENCE_BATCH)."""
    batch_size = batch_size or INFERENCE_BATCH
    net.eval()
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for i, start in enumerate(range(0, len(X), batch_size)):
            x = torch.from_numpy(np.ascontiguousarray(X[start:start + batch_size], dtype=np.float32))
            out.append(net(x.unsqueeze(1).to(device)).float().cpu())
            if (i + 1) % RELEASE_EVERY == 0:  # a long prediction (a split, not a few files): as in training
                release_freed_memory()
    if len(X) > RELEASE_EVERY * batch_size:
        release_freed_memory()
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
