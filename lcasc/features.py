"""Log-mel features of the DCASE 2022 Task 1 baseline (METHOD-NOTES §2), batched and cached.

One 1-second segment at 44.1 kHz -> a (40, 51) float32 matrix: periodic Hamming window of 1764 samples
(40 ms) inside a 2048-point FFT, hop 882 (20 ms), centred frames with reflect padding, magnitude
spectrogram, 40 Slaney mel bands 0-22,050 Hz (librosa's filterbank, computed here by :func:`mel_filterbank`),
natural log with eps = 2.2e-16.
The STFT runs in float64 (float32 misses librosa by up to 1.4e-4 in near-silent bands, float64 matches it
to 1e-12), in small blocks of segments on all CPUs: pocketfft on pre-padded frames, a sparse mel product.

Caching: the files are processed in chunks of about 5 minutes of audio (content-defined: adding a file
changes its own chunk only); each chunk is stored under a hash of the feature parameters and its files'
names, sizes and modification times. Changing a parameter or a file recomputes only what it touches; a
killed extraction resumes at the first chunk not yet written. The chunks are then gathered into one
memory-mapped ``.npy`` file per feature set, rows grouped by split: training, the fine-tuning and study
workers all read that one file (each split is a view of it), so the features are never held twice.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal
import scipy.sparse
from numpy.lib.stride_tricks import sliding_window_view
from tqdm.auto import tqdm

from lcasc import audio
from lcasc.data import Dataset, Recording
from lcasc.io import atomic_path
from lcasc.workers import cpu_count  # noqa: F401  (re-exported: lcasc.features.cpu_count)

log = logging.getLogger("lcasc")
EPS = float(np.spacing(1))
CHUNK_SECONDS = 300.0  # seconds of audio per feature chunk, on average (its waveforms: ~50 MB, at most 4x)
FORMAT_VERSION = 2


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
    """(win_length,) float64 analysis window and the (n_mels, 1 + n_fft // 2) Slaney mel filterbank, sparse:
    each FFT bin falls in at most two triangles, so a sparse product does ~2 instead of 40 MACs per bin."""
    if params not in _FILTERS:
        window = scipy.signal.get_window(params.window, params.win_length, fftbins=True).astype(np.float64)
        mel = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
        _FILTERS[params] = (window, scipy.sparse.csr_matrix(mel.astype(np.float64)))
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


def _rfft_takes_out() -> bool:
    """numpy >= 2 writes FFT output into a given array (same pocketfft algorithm as scipy.fft, same numbers)."""
    try:
        return "out" in inspect.signature(np.fft.rfft).parameters
    except (TypeError, ValueError):
        return False


_FFT_OUT = _rfft_takes_out()


def _workspace(b: int, n_samples: int, n_frames: int, params: FeatureParams) -> dict[str, np.ndarray]:
    """Per-thread float64 buffers for a block of ``b`` segments, reused from call to call.

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
            "padded": np.empty((b, n_samples + 2 * (params.n_fft // 2))),
            "frames": np.zeros((b, n_frames, params.n_fft)),
            "spectrum": np.empty((b, n_frames, bins), np.complex128),
            "magnitude": np.empty((b, n_frames, bins)),
        }
    return {k: v if k == "key" else v[:b] for k, v in ws.items()}  # a smaller (last) block uses the front


def _logmel_block(segments: np.ndarray, params: FeatureParams, out: np.ndarray) -> None:
    """(b, L) waveforms -> ``out`` (b, n_mels, 1 + L // hop) float32; float64 throughout.

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
    # + EPS as the DCASE baseline (no log(0) on digital silence), in float64; then reflect padding by hand
    # (what np.pad(mode="reflect") does, without allocating).
    if n > half + 1:
        np.add(segments, EPS, out=padded[:, half:half + n], dtype=np.float64)
        padded[:, :half] = padded[:, 2 * half:half:-1]
        padded[:, half + n:] = padded[:, half + n - 2:n - 2:-1]
    else:  # shorter than half a frame: reflections of reflections, as np.pad does them
        padded[:] = np.pad(np.asarray(segments, np.float64) + EPS, ((0, 0), (half, half)), mode="reflect")
    offset = (params.n_fft - params.win_length) // 2  # where librosa puts the window inside n_fft
    frames = sliding_window_view(padded, params.win_length, axis=1)[:, offset::params.hop_length][:, :n_frames]
    np.multiply(frames, window, out=ws["frames"][..., :params.win_length])
    if _FFT_OUT:
        spectrum = np.fft.rfft(ws["frames"], axis=-1, out=ws["spectrum"])
    else:
        spectrum = scipy.fft.rfft(ws["frames"], axis=-1)
    magnitude = np.abs(spectrum, out=ws["magnitude"])  # (b, frames, bins)
    energy = mel @ magnitude.reshape(-1, magnitude.shape[-1]).T  # (n_mels, b * frames); sparse, deterministic
    out[:] = np.log(energy.reshape(params.n_mels, b, n_frames).transpose(1, 0, 2) + EPS)


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


@dataclass(frozen=True)
class MappedRows:
    """Rows ``start:stop`` of a memory-mapped ``.npy`` file: what a worker process is handed instead of a
    pickled copy of the features. ``open()`` maps the file again in the worker; the operating system shares
    its pages between every process that maps it."""

    path: str
    start: int
    stop: int

    def open(self) -> np.ndarray:
        # copy-on-write: writable for torch.from_numpy, but the file and the shared pages stay as they are
        return np.load(self.path, mmap_mode="c")[self.start:self.stop]


def opened(arrays) -> tuple:
    """``arrays`` with every :class:`MappedRows` opened (in a worker process); other arrays as they are."""
    return tuple(a.open() if isinstance(a, MappedRows) else a for a in arrays)


@dataclass
class FeatureSet:
    """Features of every segment of a dataset, with what each segment belongs to.

    X (N, 40, 51) float32; y (N,) int64 class index (-1: no label); recording (N,) index into ``names``;
    segment (N,) position in its recording; split, device (N,) str; level_db (N,) RMS level of the segment.

    X of :func:`extract` is a memory map (copy-on-write: the file is never written) of one ``.npy`` file
    whose rows are grouped by split, so a split (and any contiguous selection) is a view of it, never a copy;
    ``file``/``start`` say where X lives in that file (None when X is an ordinary in-memory array).
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
    file: str | None = None
    start: int = 0
    silent_dropped: int = 0  # segments quieter than the silence level that extract() left out

    def select(self, mask: np.ndarray) -> FeatureSet:
        """The segments where ``mask`` is true: a view of X when they are contiguous, else a copy."""
        idx = np.flatnonzero(mask)
        if len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx):
            rows = slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)
            file, start = self.file, self.start + rows.start
        else:
            rows, file, start = idx, None, 0
        return FeatureSet(self.X[rows], self.y[rows], self.recording[rows], self.segment[rows], self.split[rows],
                          self.device[rows], self.level_db[rows], self.names, self.classes, file, start)

    def subset(self, split: str) -> FeatureSet:
        return self.select(self.split == split)

    def mapped(self) -> MappedRows | None:
        """Where X lives in its memory-mapped file (to hand to a worker process), or None if in memory only."""
        return MappedRows(self.file, self.start, self.start + len(self)) if self.file is not None else None

    def shareable_X(self):
        """X as a worker process should receive it: a :class:`MappedRows` reference when memory-mapped."""
        return self.mapped() or self.X

    def __len__(self) -> int:
        return len(self.X)


def _decode(rec: Recording, params: FeatureParams) -> tuple[np.ndarray | None, str | None]:
    try:
        x = audio.load(rec.path, params.sample_rate)
        return audio.segment(x, params.min_last_segment, params.sample_rate), None
    except audio.AudioError as e:
        return None, str(e)


def _duration(rec: Recording) -> float:
    """Seconds of audio in ``rec`` from its header (0 when unreadable: decoding reports the problem later)."""
    import soundfile as sf

    try:
        info = sf.info(str(rec.path))
        return info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - any unreadable file is handled (named) when it is decoded
        return 0.0


def chunk_recordings(recs: list[Recording], seconds: list[float], chunk_seconds: float) -> list[list[Recording]]:
    """Cut the (name-sorted) recordings into chunks of about ``chunk_seconds`` of audio.

    A recording of d seconds ends a chunk when a hash of its name falls below d / chunk_seconds: chunks hold
    ``chunk_seconds`` of audio on average, and where they end depends only on each file's own name and
    length, so adding or removing a file changes its own chunk only (content-defined chunking). A chunk is
    also ended at 4 x ``chunk_seconds``, which bounds the memory of one chunk."""
    chunks, current, total = [], [], 0.0
    for rec, d in zip(recs, seconds):
        current.append(rec)
        total += d
        draw = int.from_bytes(hashlib.sha256(rec.name.encode()).digest()[:8], "big") / 2.0 ** 64
        if draw < d / chunk_seconds or total >= 4 * chunk_seconds:
            chunks.append(current)
            current, total = [], 0.0
    if current:
        chunks.append(current)
    return chunks


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
    # One waveform array, filled recording by recording while each decoded recording is let go: the chunk's
    # audio is held once, not twice (as np.concatenate of the list would).
    waves = np.empty((sum(len(s) for s in segs), int(params.sample_rate)), np.float32)
    row = 0
    for i in range(len(segs)):
        waves[row:row + len(segs[i])] = segs[i]
        row += len(segs[i])
        segs[i] = None
    return {"X": logmel(waves, params), "owner": np.concatenate(owners) if owners else np.zeros(0, int),
            "segment": np.concatenate(positions) if positions else np.zeros(0, int),
            # in blocks: rms_db works in float64, which would double the chunk's audio twice over at once
            "level_db": np.concatenate([audio.rms_db(waves[s:s + 256]) for s in range(0, len(waves), 256)])
            if len(waves) else np.zeros(0),
            "errors": np.array(errors, dtype=str)}


_META = ("owner", "segment", "level_db", "errors")


def _load_chunk(path: Path, with_X: bool = True) -> dict | None:
    """A cached chunk (its metadata only unless ``with_X``), or None if it is missing or unreadable (then it
    is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in (("X", *_META) if with_X else _META)}
            with z.zip.open("X.npy") as fh:  # X's shape from its header, without reading X
                major, _ = np.lib.format.read_magic(fh)
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                shape = read_header(fh)[0]
        if shape[0] != len(data["owner"]) or not (len(data["owner"]) == len(data["segment"]) ==
                                                  len(data["level_db"])):
            raise ValueError("arrays of different lengths")
        data["n"], data["shape"] = shape[0], tuple(shape[1:])
        return data
    except Exception as e:  # a damaged cache file is never trusted
        log.warning("feature cache %s is damaged (%s); recomputing it", path, e)
        return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("LCASC_CACHE_DIR", Path.home() / ".cache" / "lcasc" / "features"))


SPLIT_ORDER = ("train", "validate", "test")


def _open_set(path: Path, n: int, shape: tuple) -> np.ndarray | None:
    """The memory-mapped feature set at ``path`` if it holds (n, *shape) float32, else None."""
    if not path.is_file():
        return None
    try:
        X = np.load(path, mmap_mode="c")
    except Exception as e:  # a damaged file is rebuilt, never trusted
        log.warning("feature set %s is damaged (%s); rebuilding it", path, e)
        return None
    return X if X.shape == (n, *shape) and X.dtype == np.float32 else None


def extract(dataset: Dataset, params: FeatureParams = FeatureParams(), cache_dir: str | Path | None = None,
            progress: bool = True, silence_db: float | None = None, chunk_seconds: float = CHUNK_SECONDS
            ) -> tuple[FeatureSet, list[str]]:
    """Features of every recording of ``dataset``; returns them and one line per file that was skipped.

    Segments quieter than ``silence_db`` (RMS, dBFS) are left out when it is given (``fs.silent_dropped``
    counts them). X is a (copy-on-write) memory map of one ``.npy`` file in the cache (``set-<key>.npy``, keyed by
    the chunks, the splits and ``silence_db``), with rows grouped by split in :data:`SPLIT_ORDER` (recording
    order within a split), so that each split is a view of it. Chunks of about ``chunk_seconds`` of audio are
    computed (and cached) one at a time, so memory holds one chunk's audio, never the whole dataset.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    recs = sorted(dataset.recordings, key=lambda r: r.name)
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    parts, problems, keys = [], [], []
    import torch  # training comes next in the same process: let it use every CPU

    torch.set_num_threads(cpu_count())
    with ThreadPoolExecutor(max_workers=cpu_count()) as pool:
        seconds = list(pool.map(_duration, recs))
        chunks = chunk_recordings(recs, seconds, chunk_seconds)
        with tqdm(total=len(recs), desc="features", unit="file", disable=not progress) as bar:
            base = 0
            for chunk in chunks:
                keys.append(_chunk_key(chunk, params))
                path = cache / f"logmel-{keys[-1]}.npz"
                data = _load_chunk(path, with_X=False)
                if data is None:
                    data = _compute_chunk(chunk, params, pool)
                    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                        np.savez(fh, **data)
                    data = {**{k: data[k] for k in _META}, "n": len(data["X"]), "shape": data["X"].shape[1:]}
                for err in data["errors"]:
                    log.warning("skipped: %s", err)
                    problems.append(str(err))
                parts.append((base, path, data))
                base += len(chunk)
                bar.update(len(chunk))
    owner = np.concatenate([b + d["owner"] for b, _, d in parts]).astype(np.int64)
    level_db = np.concatenate([d["level_db"] for _, _, d in parts]) if parts else np.zeros(0)
    split = np.array([recs[o].split for o in owner], dtype=str)
    keep = np.ones(len(owner), bool) if silence_db is None else level_db >= silence_db
    rank = {s: i for i, s in enumerate([*SPLIT_ORDER, *sorted(set(split) - set(SPLIT_ORDER))])}
    order = np.flatnonzero(keep)
    order = order[np.argsort(np.array([rank[s] for s in split[order]], dtype=np.int64), kind="stable")]
    shape = next((tuple(d["shape"]) for _, _, d in parts if d["n"]), (params.n_mels, params.n_frames))

    h = hashlib.sha256(f"{FORMAT_VERSION}\0{silence_db}\0".encode())
    h.update("\0".join(keys).encode())
    h.update("\0".join(f"{r.name}:{r.split}" for r in recs).encode())
    set_path = cache / f"set-{h.hexdigest()[:32]}.npy"
    X = _open_set(set_path, len(order), shape)
    if X is None:
        X = _write_set(set_path, parts, order, shape, len(owner), progress)
    fs = FeatureSet(
        X=X, y=np.array([class_index.get(recs[o].label, -1) for o in owner[order]], dtype=np.int64),
        recording=owner[order], segment=np.concatenate([d["segment"] for _, _, d in parts]).astype(np.int64)[order],
        split=split[order], device=np.array([recs[o].device for o in owner[order]], dtype=str),
        level_db=level_db[order], names=[r.name for r in recs], classes=list(dataset.classes),
        file=str(set_path), start=0, silent_dropped=int((~keep).sum()))
    return fs, problems


def _write_set(path: Path, parts: list, order: np.ndarray, shape: tuple, n_all: int, progress: bool) -> np.ndarray:
    """Write the rows ``order`` (indices into the chunks' concatenated segments) of every chunk into one
    ``.npy`` file, chunk by chunk, with positioned writes (not through a memory map, whose dirty pages would
    count as this process's memory), atomically (under a temporary name, renamed when complete); map it."""
    dest = np.full(n_all, -1, np.int64)
    dest[order] = np.arange(len(order))
    row_bytes = int(np.prod(shape)) * 4
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (len(order), *shape)})
        header = fh.tell()
        fh.truncate(header + len(order) * row_bytes)
        fd, row = fh.fileno(), 0
        for _, chunk_path, meta in tqdm(parts, desc="feature set", unit="chunk", disable=not progress):
            where = dest[row:row + meta["n"]]
            row += meta["n"]
            if not (where >= 0).any():
                continue
            data = _load_chunk(chunk_path)
            if data is None:
                raise RuntimeError(f"feature cache {chunk_path} vanished or was damaged while in use; run again")
            X = np.ascontiguousarray(data["X"], dtype="<f4")
            kept = np.flatnonzero(where >= 0)
            # runs of rows that go to consecutive places of the file: one write each
            breaks = np.flatnonzero((np.diff(kept) != 1) | (np.diff(where[kept]) != 1)) + 1
            for run in np.split(kept, breaks):
                os.pwrite(fd, X[run[0]:run[-1] + 1].tobytes(), header + int(where[run[0]]) * row_bytes)
    return np.load(path, mmap_mode="c")
