"""Audio decoding: any file soundfile reads -> float32 mono at 44.1 kHz, cut into 1-second segments.

Every problem with a file is raised as :class:`AudioError` naming the file, so callers can skip it
with a warning (datasets) or report it in one line (predict).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 44_100
SEGMENT_SECONDS = 1.0
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus"}


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def to_mono_44k(x: np.ndarray, sample_rate: int, name: str = "<array>") -> np.ndarray:
    """(samples,) or (samples, channels) at any rate -> (samples,) float32 mono at 44.1 kHz.

    Channels are averaged; other rates are resampled with soxr (high quality). A clip whose peak exceeds
    1 is scaled by its peak (the DCASE baseline does the same before storing clips as int16).
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise AudioError(name, f"samples have type {x.dtype}, expected numbers")
    if np.issubdtype(x.dtype, np.integer):  # raw PCM from an array: scale to [-1, 1)
        x = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise AudioError(name, f"expected (samples,) or (samples, channels), got shape {x.shape}")
    if x.size == 0:
        raise AudioError(name, "no samples (empty audio)")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(name, f"{bad} of {x.size} samples are NaN or infinite")
    if sample_rate <= 0:
        raise AudioError(name, f"invalid sample rate {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        x = soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 1.0:
        x = x / peak
    return x


def load(path: str | Path) -> np.ndarray:
    """Decode ``path`` to (samples,) float32 mono at 44.1 kHz; raises :class:`AudioError`."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file does not exist")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot decode audio ({str(e).splitlines()[0].strip()})") from None
    return to_mono_44k(x, sr, str(path))


def n_segments(n_samples: int, min_last: float = 0.5) -> int:
    """Number of 1-second segments: full seconds, plus a padded last one if it holds >= ``min_last`` s.

    A recording shorter than one second still gives one (padded) segment.
    """
    seg = int(SAMPLE_RATE * SEGMENT_SECONDS)
    full, rest = divmod(n_samples, seg)
    return max(1, full + (1 if rest >= min_last * seg else 0))


def segment(x: np.ndarray, min_last: float = 0.5) -> np.ndarray:
    """(samples,) -> (n_segments, 44100) float32; the last partial segment is zero-padded."""
    seg = int(SAMPLE_RATE * SEGMENT_SECONDS)
    n = n_segments(x.size, min_last)
    out = np.zeros((n, seg), dtype=np.float32)
    flat = out.reshape(-1)
    m = min(x.size, flat.size)
    flat[:m] = x[:m]
    return out


def rms_db(segments: np.ndarray) -> np.ndarray:
    """(n, samples) -> (n,) RMS level in dB relative to full scale (-inf for digital silence)."""
    rms = np.sqrt(np.mean(np.square(segments, dtype=np.float64), axis=1))
    with np.errstate(divide="ignore"):
        return 20 * np.log10(rms)
