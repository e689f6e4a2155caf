"""Batched log-mel augmentation inside the training loop: Freq-MixStyle, mixup, frequency/time masking,
time rolling.

Every augmentation works on a whole batch ``x`` of shape (B, 1, 40, 51) float32 at once and is off at
probability 0 (then the batch is returned unchanged, the same tensor). Randomness comes from a NumPy
generator the caller seeds with (seed, epoch, batch index), so a resumed training draws exactly what an
uninterrupted one would have drawn.

Defaults are those of the anchors (CP-JKU's DCASE 2023 system, Schmid et al.; the DCASE 2024 Task 1
baseline): Freq-MixStyle p = 0.4, Beta(0.3, 0.3); mixup Beta(0.3, 0.3); masks of up to 8 of the 40 mel bands
(CP-JKU: 48 of 256) and up to 10 of the 51 frames; rolling by up to ±10 frames. The paper's recipe uses
none of them (every probability 0); the ``kd`` recipe switches them on (:func:`recipe_defaults`).

Only mixup changes the labels: it returns the permutation and the per-example weights with which the
loss mixes the two labels (and the two teachers' outputs), see :mod:`lcasc.distill`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch


@dataclass
class AugmentConfig:
    """Probabilities (0: off) and strengths of each augmentation; recorded in ``config.yaml``."""

    mixstyle_p: float = 0.0  # per batch: mix frequency-wise statistics (mean/std over time) between examples
    mixstyle_alpha: float = 0.3  # Beta(alpha, alpha) mixing weight
    mixup_p: float = 0.0  # per batch: mix examples and their labels
    mixup_alpha: float = 0.3
    freq_mask_p: float = 0.0  # per example: one band of up to freq_mask_bands mel bands set to the example's mean
    freq_mask_bands: int = 8
    time_mask_p: float = 0.0  # per example: one run of up to time_mask_frames frames set to the example's mean
    time_mask_frames: int = 10
    roll_p: float = 0.0  # per example: circular shift in time by up to roll_frames frames either way
    roll_frames: int = 10

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= v <= 1.0:
                raise ValueError(f"augmentation probability {f.name} must be in [0, 1], got {v}")
            if f.name.endswith("_alpha") and v <= 0:
                raise ValueError(f"{f.name} must be positive (Beta(alpha, alpha)), got {v}")
            if f.name.endswith(("_bands", "_frames")) and (int(v) != v or v < 0):
                raise ValueError(f"{f.name} must be a non-negative integer, got {v}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self) if f.name.endswith("_p"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def coerce(cls, value) -> AugmentConfig:
        """An AugmentConfig from itself, a dict (``config.yaml``) or None (all off)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {', '.join(sorted(unknown))}")
        return cls(**value)


def recipe_defaults(recipe: str) -> AugmentConfig:
    """The augmentation of a recipe: ``paper`` none; ``kd`` Freq-MixStyle, mixup-free, masks and rolling as
    CP-JKU trains its students (mixup is left off by default: it blurs the teacher's targets on 1-s clips)."""
    if recipe == "paper":
        return AugmentConfig()
    if recipe == "kd":
        return AugmentConfig(mixstyle_p=0.4, freq_mask_p=0.5, time_mask_p=0.5, roll_p=0.5)
    raise ValueError(f"unknown recipe {recipe!r}; choose paper or kd")


@dataclass
class Mix:
    """What mixup did to a batch: example i became w[i]·x[i] + (1 − w[i])·x[perm[i]]."""

    perm: torch.Tensor  # (B,) int64
    weight: torch.Tensor  # (B,) float32


def freq_mixstyle(x: torch.Tensor, rng: np.random.Generator, p: float, alpha: float,
                  eps: float = 1e-6) -> torch.Tensor:
    """Freq-MixStyle (Schmid et al. 2023): with probability p per batch, normalise each example per mel band
    (mean and std over channels and time) and re-scale it with a Beta(α, α) mix of its own and another
    example's band statistics. Labels unchanged."""
    if p <= 0 or rng.random() >= p or len(x) < 2:
        return x
    mu = x.mean(dim=(1, 3), keepdim=True).detach()
    sig = (x.var(dim=(1, 3), keepdim=True) + eps).sqrt().detach()
    lam = torch.from_numpy(rng.beta(alpha, alpha, len(x)).astype(np.float32)).view(-1, 1, 1, 1)
    perm = torch.from_numpy(rng.permutation(len(x)))
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


def mixup(x: torch.Tensor, rng: np.random.Generator, p: float, alpha: float) -> tuple[torch.Tensor, Mix | None]:
    """With probability p per batch, mix every example with another (random permutation) with a per-example
    Beta(α, α) weight; returns the mixed batch and the :class:`Mix` the loss needs (None when not applied)."""
    if p <= 0 or rng.random() >= p or len(x) < 2:
        return x, None
    w = torch.from_numpy(rng.beta(alpha, alpha, len(x)).astype(np.float32))
    perm = torch.from_numpy(rng.permutation(len(x)))
    wx = w.view(-1, 1, 1, 1)
    return wx * x + (1 - wx) * x[perm], Mix(perm, w)


def _mask(x: torch.Tensor, rng: np.random.Generator, p: float, width: int, axis: int) -> torch.Tensor:
    """Per example with probability p: a run of [0, width] positions along ``axis`` (2: mel, 3: time) set to
    the example's mean (the mean, not zero: zero is a loud value on a log-magnitude scale)."""
    if p <= 0 or width <= 0:
        return x
    n, size = len(x), x.shape[axis]
    hit = rng.random(n) < p
    widths = rng.integers(0, min(width, size) + 1, n) * hit
    starts = rng.integers(0, size - widths + 1)
    if not widths.any():
        return x
    pos = torch.arange(size)
    lo, hi = torch.from_numpy(starts)[:, None], torch.from_numpy(starts + widths)[:, None]
    m = (pos[None, :] >= lo) & (pos[None, :] < hi)
    m = m.view(n, 1, size, 1) if axis == 2 else m.view(n, 1, 1, size)
    return torch.where(m, x.mean(dim=(1, 2, 3), keepdim=True), x)


def freq_mask(x: torch.Tensor, rng: np.random.Generator, p: float, bands: int) -> torch.Tensor:
    return _mask(x, rng, p, bands, 2)


def time_mask(x: torch.Tensor, rng: np.random.Generator, p: float, frames: int) -> torch.Tensor:
    return _mask(x, rng, p, frames, 3)


def time_roll(x: torch.Tensor, rng: np.random.Generator, p: float, frames: int) -> torch.Tensor:
    """Per example with probability p: circular shift along time by an integer in [−frames, frames]."""
    if p <= 0 or frames <= 0:
        return x
    n, t = len(x), x.shape[3]
    shifts = rng.integers(-frames, frames + 1, n) * (rng.random(n) < p)
    if not shifts.any():
        return x
    idx = (torch.arange(t)[None, :] - torch.from_numpy(shifts)[:, None]) % t  # out[:, t] = x[:, t - shift]
    return torch.gather(x, 3, idx.view(n, 1, 1, t).expand_as(x))


def apply(x: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> tuple[torch.Tensor, Mix | None]:
    """All augmentations of ``config`` on a batch (B, 1, 40, 51), in a fixed order: rolling, Freq-MixStyle,
    mixup, masks. Returns the batch and the mixup record (None without mixup)."""
    if not config.active:
        return x, None
    x = time_roll(x, rng, config.roll_p, config.roll_frames)
    x = freq_mixstyle(x, rng, config.mixstyle_p, config.mixstyle_alpha)
    x, mix = mixup(x, rng, config.mixup_p, config.mixup_alpha)
    x = freq_mask(x, rng, config.freq_mask_p, config.freq_mask_bands)
    x = time_mask(x, rng, config.time_mask_p, config.time_mask_frames)
    return x, mix


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of one training batch: a function of (seed, epoch, batch) only, so resuming from a
    checkpoint repeats the same draws."""
    return np.random.default_rng([seed, epoch, batch, 0xA06])
