"""Log-mel features of the DCASE 2022 Task 1 baseline (METHOD-NOTES §2), batched and cached.

One 1-second segment at 44.1 kHz -> a (40, 51) float32 matrix: periodic Hamming window of 1764 samples
(40 ms) inside a 2048-point FFT, hop 882 (20 ms), centred frames with reflect padding, magnitude
spectrogram, 40 Slaney mel bands 0-22,050 Hz (librosa's filterbank), natural log with eps = 2.2e-16.
The STFT runs in float64 on many segments per call: float32 misses librosa by up to 1.4e-4 in
near-silent bands, float64 matches it to 1e-12.

Caching: the files are processed in chunks; each chunk is stored under a hash of the feature parameters
and its files' names, sizes and modification times. Changing a parameter or a file recomputes only what it
touches; a killed extraction resumes at the first chunk not yet written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import torch
from tqdm.auto import tqdm

from lcasc import audio
from lcasc.data import Dataset, Recording
from lcasc.io import atomic_path

log = logging.getLogger("lcasc")
EPS = float(np.spacing(1))
CHUNK_RECORDINGS = 256
FORMAT_VERSION = 1


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

    @property
    def n_frames(self) -> int:
        return 1 + self.sample_rate // self.hop_length

    def key(self) -> str:
        return json.dumps({**asdict(self), "version": FORMAT_VERSION}, sort_keys=True)


_FILTERBANKS: dict[FeatureParams, tuple[torch.Tensor, torch.Tensor]] = {}


def _window_and_mel(params: FeatureParams) -> tuple[torch.Tensor, torch.Tensor]:
    if params not in _FILTERBANKS:
        import librosa  # only for its Slaney filterbank; imported lazily (slow import)

        window = scipy.signal.get_window(params.window, params.win_length, fftbins=True)
        mel = librosa.filters.mel(sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels,
                                  fmin=params.fmin, fmax=params.fmax)
        _FILTERBANKS[params] = (torch.from_numpy(window), torch.from_numpy(mel.astype(np.float64)))
    return _FILTERBANKS[params]


def logmel(segments: np.ndarray, params: FeatureParams = FeatureParams(), batch: int = 128) -> np.ndarray:
    """(n, 44100) float waveforms -> (n, 40, 51) float32 log-mel, many segments per STFT call."""
    segments = np.atleast_2d(np.asarray(segments))
    window, mel = _window_and_mel(params)
    out = np.empty((len(segments), params.n_mels, params.n_frames), dtype=np.float32)
    for start in range(0, len(segments), batch):
        x = torch.from_numpy(np.asarray(segments[start:start + batch], dtype=np.float64)) + EPS
        spec = torch.stft(x, params.n_fft, params.hop_length, params.win_length, window, center=True,
                          pad_mode="reflect", return_complex=True).abs()
        out[start:start + batch] = torch.log(torch.matmul(mel, spec) + EPS).numpy()
    return out


@dataclass
class FeatureSet:
    """Features of every segment of a dataset, with what each segment belongs to.

    X (N, 40, 51) float32; y (N,) int64 class index (-1: no label); recording (N,) index into ``names``;
    segment (N,) position in its recording; split, device (N,) str; level_db (N,) RMS level of the segment.
    """

    X: np.ndarray
    y: np.ndarray
    recording: np.ndarray
    segment: np.ndarray
    split: np.ndarray
    device: np.ndarray
    level_db: np.ndarray
    names: list[str]
    classes: list[str]

    def select(self, mask: np.ndarray) -> FeatureSet:
        return FeatureSet(self.X[mask], self.y[mask], self.recording[mask], self.segment[mask], self.split[mask],
                          self.device[mask], self.level_db[mask], self.names, self.classes)

    def subset(self, split: str) -> FeatureSet:
        return self.select(self.split == split)

    def __len__(self) -> int:
        return len(self.X)


def _decode(rec: Recording, params: FeatureParams) -> tuple[np.ndarray | None, str | None]:
    try:
        return audio.segment(audio.load(rec.path), params.min_last_segment), None
    except audio.AudioError as e:
        return None, str(e)


def _chunk_key(chunk: list[Recording], params: FeatureParams) -> str:
    h = hashlib.sha256(params.key().encode())
    for r in chunk:
        st = r.path.stat()
        h.update(f"{r.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _compute_chunk(chunk: list[Recording], params: FeatureParams, pool: ThreadPoolExecutor) -> dict:
    segs, owners, positions, errors = [], [], [], []
    for i, (s, err) in enumerate(pool.map(lambda r: _decode(r, params), chunk)):
        if err is not None:
            errors.append(err)
            continue
        segs.append(s)
        owners.append(np.full(len(s), i))
        positions.append(np.arange(len(s)))
    waves = np.concatenate(segs) if segs else np.zeros((0, int(params.sample_rate)), np.float32)
    return {"X": logmel(waves, params), "owner": np.concatenate(owners) if owners else np.zeros(0, int),
            "segment": np.concatenate(positions) if positions else np.zeros(0, int),
            "level_db": audio.rms_db(waves) if len(waves) else np.zeros(0),
            "errors": np.array(errors, dtype=str)}


def _load_chunk(path: Path) -> dict | None:
    """A cached chunk, or None if it is missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("X", "owner", "segment", "level_db", "errors")}
        if not (len(data["X"]) == len(data["owner"]) == len(data["segment"]) == len(data["level_db"])):
            raise ValueError("arrays of different lengths")
        return data
    except Exception as e:  # a damaged cache file is never trusted
        log.warning("feature cache %s is damaged (%s); recomputing it", path, e)
        return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("LCASC_CACHE_DIR", Path.home() / ".cache" / "lcasc" / "features"))


def extract(dataset: Dataset, params: FeatureParams = FeatureParams(), cache_dir: str | Path | None = None,
            progress: bool = True) -> tuple[FeatureSet, list[str]]:
    """Features of every recording of ``dataset``; returns them and one line per file that was skipped."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    recs = sorted(dataset.recordings, key=lambda r: r.name)
    chunks = [recs[i:i + CHUNK_RECORDINGS] for i in range(0, len(recs), CHUNK_RECORDINGS)]
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    parts, problems = [], []
    torch.set_num_threads(os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            tqdm(total=len(recs), desc="features", unit="file", disable=not progress) as bar:
        for ci, chunk in enumerate(chunks):
            path = cache / f"logmel-{_chunk_key(chunk, params)}.npz"
            data = _load_chunk(path)
            if data is None:
                data = _compute_chunk(chunk, params, pool)
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **data)
            for err in data["errors"]:
                log.warning("skipped: %s", err)
                problems.append(str(err))
            parts.append((ci * CHUNK_RECORDINGS, chunk, data))
            bar.update(len(chunk))
    owner = np.concatenate([base + d["owner"] for base, _, d in parts]).astype(np.int64)
    fs = FeatureSet(
        X=np.concatenate([d["X"] for _, _, d in parts]).astype(np.float32, copy=False),
        y=np.array([class_index.get(recs[o].label, -1) for o in owner], dtype=np.int64),
        recording=owner,
        segment=np.concatenate([d["segment"] for _, _, d in parts]).astype(np.int64),
        split=np.array([recs[o].split for o in owner], dtype=str),
        device=np.array([recs[o].device for o in owner], dtype=str),
        level_db=np.concatenate([d["level_db"] for _, _, d in parts]),
        names=[r.name for r in recs], classes=list(dataset.classes))
    return fs, problems
