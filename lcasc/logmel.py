"""Log-mel features of the DCASE 2022 Task 1 baseline (METHOD-NOTES §2), batched.

One 1-second segment at 44.1 kHz -> a (40, 51) float32 matrix: periodic Hamming window of 1764 samples
(40 ms) inside a 2048-point FFT, hop 882 (20 ms), centred frames with reflect padding, magnitude
spectrogram, 40 Slaney mel bands 0-22,050 Hz (librosa's filterbank, computed here by :func:`mel_filterbank`),
natural log with eps = 2.2e-16.
Everything runs in float32, as librosa's STFT does on the baseline's float32 audio (complex64): a float32
STFT rounds to about 1e-7 of a frame's largest bins, about the quantisation noise of the 24-bit recordings
themselves, so only the log of a band far quieter than the rest of its frame moves: lcasc misses librosa's
float64 result by up to 6e-4 on TAU22-like clips, librosa's own float32 path by up to 1.5e-3
(tests/test_features.py). float64 would take twice the time (the FFT, the magnitude and every buffer).
It runs in small blocks of segments on all CPUs: pocketfft on pre-padded frames, a sparse mel product.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
import scipy.signal
import scipy.sparse
from numpy.lib.stride_tricks import sliding_window_view

from lcasc.workers import cpu_count

EPS = float(np.spacing(1))
EPS32 = np.float32(EPS)  # 2.2e-16 is a normal float32 number: the same eps, in the computation's type
FORMAT_VERSION = 3  # of the features: a change of the numbers computed here bumps it (and the caches' keys)


@dataclass(frozen=True)
class FeatureParams:
    sample_rate: int = 44_100
    n_fft: int = 2048
    win_length: int = 1764
    hop_length: int = 882
    window: str = "hamming"
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float = 22_050.0
    min_last_segment: float = 0.5  # seconds: a shorter tail of a recording is dropped, a longer one padded

    def __post_init__(self):
        if self.sample_rate <= 0 or not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"feature settings: need 0 <= fmin < fmax <= sample_rate / 2, got fmin {self.fmin}, "
                             f"fmax {self.fmax}, sample_rate {self.sample_rate}")

    @property
    def n_frames(self) -> int:
        return 1 + self.sample_rate // self.hop_length

    def key(self) -> str:
        return json.dumps({**asdict(self), "version": FORMAT_VERSION}, sort_keys=True)


_FILTERS: dict[FeatureParams, tuple[np.ndarray, scipy.sparse.csr_matrix]] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}  # worker count -> pool, kept for the life of the process
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads: make new pools there
    os.register_at_fork(after_in_child=_POOLS.clear)


def _filters(params: FeatureParams) -> tuple[np.ndarray, scipy.sparse.csr_matrix]:
    """(win_length,) float32 analysis window and the (n_mels, 1 + n_fft // 2) float32 Slaney mel filterbank, sparse:
    each FFT bin falls in at most two triangles, so a sparse product does ~2 instead of 40 MACs per bin."""
    if params not in _FILTERS:
        window = scipy.signal.get_window(params.window, params.win_length, fftbins=True).astype(np.float32)
        mel = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
        _FILTERS[params] = (window, scipy.sparse.csr_matrix(mel))
    return _FILTERS[params]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox): linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    mel = hz / (200.0 / 3)
    log_part = hz >= 1000.0
    mel[log_part] = 1000.0 / (200.0 / 3) + np.log(hz[log_part] / 1000.0) / (np.log(6.4) / 27.0)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    mel = np.atleast_1d(np.asarray(mel, dtype=np.float64))
    hz = (200.0 / 3) * mel
    log_part = mel >= 1000.0 / (200.0 / 3)
    hz[log_part] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_part] - 1000.0 / (200.0 / 3)))
    return hz


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 mel filterbank: Slaney mel scale, Slaney area normalisation.

    What: ``n_mels`` triangles whose corners are ``n_mels + 2`` frequencies equally spaced on Slaney's mel
    scale (linear below 1 kHz, logarithmic above) from ``fmin`` to ``fmax`` (default ``sample_rate / 2``),
    evaluated at the FFT bin frequencies ``k * sample_rate / n_fft``; triangle ``i`` is scaled by
    ``2 / (f[i + 2] - f[i])`` so that every band has the same area (about constant energy per band).
    This is ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` with
    its defaults (``htk=False``, ``norm="slaney"``, float32), computed with the same operations in the same
    order, so it is bit for bit the same matrix (tests/test_features.py checks it against librosa).

    Why lcasc computes it itself: librosa (with numba and llvmlite, ~0.2 GB) was a dependency for this one
    call; it stays as the test oracle only.
    """
    if fmax is None:
        fmax = float(sample_rate) / 2
    n_mels = int(n_mels)
    weights = np.zeros((n_mels, int(1 + n_fft // 2)), dtype=np.float32)
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin)[0], _hz_to_mel(fmax)[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_freqs)
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]  # rising edge, 0 at edges[i], 1 at edges[i + 1]
        upper = ramps[i + 2] / widths[i + 1]  # falling edge, 1 at edges[i + 1], 0 at edges[i + 2]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, np.newaxis]  # float64 product, rounded to float32
    return weights


_LOCAL = threading.local()

def _pocketfft_r2c():
    """scipy.fft's pocketfft binding, which (unlike ``scipy.fft.rfft``) writes into a given array of any
    layout; None when this scipy's does not (then :func:`_rfft_columns` copies)."""
    try:
        from scipy.fft._pocketfft.pypocketfft import r2c

        frames = np.arange(8, dtype=np.float32).reshape(2, 4)
        out = np.empty((3, 2), np.complex64)
        r2c(frames, (1,), True, 0, out.T, 1)  # the call _rfft_columns makes
        return r2c if np.allclose(out.T, np.fft.rfft(frames, axis=-1)) else None
    except Exception:  # noqa: BLE001 - a private module: any change of it means the public function
        return None


_R2C = _pocketfft_r2c()


def _rfft_columns(frames: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The real FFT of each row of ``frames`` (rows, n_fft) float32 into the columns of ``out``
    (1 + n_fft // 2, rows) complex64.

    Why columns: the sparse mel product reads (bins, frames); written so by pocketfft, the magnitude is a
    contiguous pass (taking it from a transposed view instead cost ~40 us a clip more)."""
    if _R2C is not None:
        _R2C(frames, (1,), True, 0, out.T, 1)
    else:  # pragma: no cover - another scipy
        out[...] = scipy.fft.rfft(frames, axis=-1).T
    return out


def _workspace(b: int, n_samples: int, n_frames: int, params: FeatureParams) -> dict[str, np.ndarray]:
    """Per-thread float32 buffers for a block of ``b`` segments, reused from call to call.

    Why: a fresh multi-MB array per step costs more than the step itself here, because glibc hands large
    blocks back to the kernel when they are freed and the next block page-faults them in again (measured:
    ~500 minor faults and ~1 ms per second of audio, more than the FFT). ``frames`` is zero beyond
    ``win_length`` and is never written there.
    """
    key = (n_samples, n_frames, params.n_fft, params.win_length)
    ws = getattr(_LOCAL, "workspace", None)
    if ws is None or ws["key"] != key or len(ws["padded"]) < b:
        bins = params.n_fft // 2 + 1
        ws = _LOCAL.workspace = {
            "key": key,
            "padded": np.empty((b, n_samples + 2 * (params.n_fft // 2)), np.float32),
            "frames": np.zeros((b, n_frames, params.n_fft), np.float32),
            "spectrum": np.empty((bins, b * n_frames), np.complex64),  # transposed: see _rfft_columns
            "magnitude": np.empty((bins, b * n_frames), np.float32),
        }
    # a smaller (last) block uses the front
    return {k: v if k == "key" else v[:, :b * n_frames] if k in ("spectrum", "magnitude") else v[:b]
            for k, v in ws.items()}


def _logmel_block(segments: np.ndarray, params: FeatureParams, out: np.ndarray) -> None:
    """(b, L) waveforms -> ``out`` (b, n_mels, 1 + L // hop) float32, computed in float32 throughout.

    Equal to ``torch.stft``/librosa with ``center=True``, reflect padding and the window centred in
    ``n_fft``: each frame's ``win_length`` windowed samples go to the *start* of a zero ``n_fft`` buffer
    instead of its middle, a circular shift that changes the phase of every bin but not its magnitude.
    That lets one contiguous buffer feed pocketfft, which is ~5x faster on a pre-padded buffer than with
    its own ``n=`` padding and ~4x faster than ``torch.stft`` here.
    """
    window, mel = _filters(params)
    b, n = segments.shape
    half = params.n_fft // 2
    n_frames = 1 + n // params.hop_length
    ws = _workspace(b, n, n_frames, params)
    padded = ws["padded"]
    # + EPS as the DCASE baseline (no log(0) on digital silence); then reflect padding by hand (what
    # np.pad(mode="reflect") does, without allocating).
    if n > half + 1:
        np.add(segments, EPS32, out=padded[:, half:half + n], dtype=np.float32)
        padded[:, :half] = padded[:, 2 * half:half:-1]
        padded[:, half + n:] = padded[:, half + n - 2:n - 2:-1]
    else:  # shorter than half a frame: reflections of reflections, as np.pad does them
        padded[:] = np.pad(np.asarray(segments, np.float32) + EPS32, ((0, 0), (half, half)), mode="reflect")
    offset = (params.n_fft - params.win_length) // 2  # where librosa puts the window inside n_fft
    frames = sliding_window_view(padded, params.win_length, axis=1)[:, offset::params.hop_length][:, :n_frames]
    np.multiply(frames, window, out=ws["frames"][..., :params.win_length])
    spectrum = _rfft_columns(ws["frames"].reshape(b * n_frames, -1), ws["spectrum"])  # (bins, b * frames)
    magnitude = np.abs(spectrum, out=ws["magnitude"])
    energy = mel @ magnitude  # (n_mels, b * frames) float32; sparse, deterministic
    energy += EPS32
    np.log(energy.reshape(params.n_mels, b, n_frames).transpose(1, 0, 2), out=out)


def logmel(segments: np.ndarray, params: FeatureParams = FeatureParams(), batch: int = 4,
           workers: int | None = None) -> np.ndarray:
    """(n, 44100) float waveforms -> (n, 40, 51) float32 log-mel.

    Blocks of ``batch`` segments run on ``workers`` threads (default: the CPUs available; numpy and
    pocketfft release the GIL). Small blocks keep a block's buffers (~0.8 MB per segment) in cache. Every
    segment's features are computed on their own, so they do not depend on ``batch`` or ``workers``.
    """
    segments = np.atleast_2d(np.asarray(segments))
    batch = max(1, int(batch))
    if segments.ndim != 2:
        raise ValueError(f"segments must be (n, samples), got shape {segments.shape}")
    n_frames = 1 + segments.shape[1] // params.hop_length
    out = np.empty((len(segments), params.n_mels, n_frames), dtype=np.float32)
    starts = range(0, len(segments), batch)
    workers = cpu_count() if workers is None else max(1, int(workers))
    if workers == 1 or len(starts) == 1:
        for s in starts:
            _logmel_block(segments[s:s + batch], params, out[s:s + batch])
        return out
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lcasc-logmel")
    # list() re-raises the first exception of any block
    list(_POOLS[workers].map(lambda s: _logmel_block(segments[s:s + batch], params, out[s:s + batch]), starts))
    return out
