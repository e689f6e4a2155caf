"""Device impulse responses (DIR): training clips as other recording devices would have captured them.

CP-JKU's DCASE 2023 system (Schmid et al.; Morocutti et al., "Device-robust acoustic scene classification via
impulse response augmentation") convolves, with probability p = 0.4, a training waveform recorded by device
``a`` with a device impulse response drawn at random from the MicIRP collection, before the log-mel. Here the
waveform must be convolved before the log-mel too, but the features are cached (:mod:`lcasc.features`); so
``copies`` (K) augmented copies of the training features are computed once, and the training loop takes, per
example and epoch, with probability p one of the K copies instead of the original (:func:`draws`, a function
of (seed, epoch) only, so a resumed training draws what an uninterrupted one would have drawn).

Copy k convolves each training recording (whole, before it is cut into 1-s segments) with one impulse
response drawn for (seed, k, recording); the result keeps the recording's length (``full`` convolution cut to
the input's length, as CP-JKU's). Each impulse response is decoded, made mono and resampled to the features'
rate like the audio (:func:`lcasc.audio.load`), then scaled to unit energy (sum of squares 1): a unit impulse
leaves the waveform as it is, and white noise keeps its level whatever the file's gain. ``devices`` restricts
the augmentation to the training segments of those devices (CP-JKU: ``a`` only); empty: every segment.

Each copy is one memory-mapped ``.npy`` file in the feature cache (``ir-<key>-<k>.npy``, keyed by the feature
set, the impulse-response files' names, sizes and modification times, the devices and the seed), written
under a temporary name and renamed when complete: a killed computation resumes at the first missing copy, and
the paper and kd run directories of one ``lcasc run --recipe kd`` share them. Validation and test features
are never convolved.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal
from tqdm.auto import tqdm

from lcasc import audio
from lcasc.io import atomic_path
from lcasc.logmel import FORMAT_VERSION, FeatureParams, logmel
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")
RECORDINGS_PER_BLOCK = 256  # recordings decoded and convolved at once (their audio is held in memory)


@dataclass
class ImpulseConfig:
    """``--impulse-responses`` and its settings; recorded in ``config.yaml`` (``folder`` None: off)."""

    folder: str | None = None  # a folder of impulse responses (WAV files, searched recursively)
    p: float = 0.4  # per training example and epoch: the probability of taking a convolved copy
    copies: int = 3  # K convolved copies of the training features, computed once
    devices: list[str] = field(default_factory=list)  # only the training segments of these devices; []: all

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"impulse-response probability must be in [0, 1], got {self.p}")
        if int(self.copies) != self.copies or self.copies < 1:
            raise ValueError(f"impulse-response copies must be a positive integer, got {self.copies}")
        self.copies, self.devices = int(self.copies), [str(d) for d in self.devices]

    @property
    def active(self) -> bool:
        return self.folder is not None and self.p > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def coerce(cls, value) -> ImpulseConfig:
        """An ImpulseConfig from itself, a dict (``config.yaml``) or None (off)."""
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**value)


def ir_files(folder: str | Path) -> list[Path]:
    """The ``.wav`` files under ``folder`` (recursively, sorted); an error naming the folder when there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--impulse-responses {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise ValueError(f"--impulse-responses {folder}: no .wav files in the folder")
    return files


def load_irs(folder: str | Path, sample_rate: int) -> list[np.ndarray]:
    """Every impulse response of ``folder``: mono, at ``sample_rate``, unit energy (float64).

    A file that cannot be decoded, or is silent, stops with an error naming it."""
    irs = []
    for path in ir_files(folder):
        try:
            h = audio.load(path, sample_rate).astype(np.float64)
        except audio.AudioError as e:
            raise ValueError(f"impulse response {e}") from None
        energy = float(np.sum(h * h))
        if not energy > 0:
            raise ValueError(f"impulse response {path}: silent (all samples zero)")
        irs.append(h / np.sqrt(energy))
    return irs


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` (samples,) convolved with the impulse response ``h``, cut to ``x``'s length (float32)."""
    return scipy.signal.oaconvolve(x, h, mode="full")[:len(x)].astype(np.float32)


@dataclass(frozen=True)
class Copies:
    """K convolved copies of some training segments, as a training process is handed them (picklable: file
    names, not data). ``rows`` (M,): the training-split rows they copy; each file holds (M, n_mels, n_frames)."""

    files: tuple[str, ...]
    rows: np.ndarray
    n_train: int
    p: float

    def open(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The K memory-mapped copies and ``slot`` (n_train,): each training row's row in them (-1: none)."""
        slot = np.full(self.n_train, -1, np.int64)
        slot[self.rows] = np.arange(len(self.rows))
        return [np.load(f, mmap_mode="r") for f in self.files], slot


def draws(seed: int, epoch: int, slot: np.ndarray, k: int, p: float) -> np.ndarray:
    """Per training row, which copy the epoch takes instead of the original (-1: the original): with
    probability p among the rows that have copies, uniformly among the K copies. A function of
    (seed, epoch) only."""
    rng = np.random.default_rng([seed, epoch, 0xD1B])
    take = (rng.random(len(slot)) < p) & (slot >= 0)
    return np.where(take, rng.integers(0, k, len(slot)), -1)


def _key(train, folder: str, files: list[Path], config: ImpulseConfig, params: FeatureParams, seed: int) -> str:
    h = hashlib.sha256(f"{FORMAT_VERSION}\0{params.key()}\0{Path(train.file).name}\0{train.start}\0{len(train)}\0"
                       f"{sorted(config.devices)}\0{seed}\0".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def compute(train, recordings: list, config: ImpulseConfig, params: FeatureParams, cache_dir: str | Path,
            seed: int, progress: bool = True) -> tuple[Copies, dict]:
    """The K copies of the training split ``train`` (a :class:`lcasc.features.FeatureSet` whose ``recording``
    indexes ``recordings``), computed or found in ``cache_dir``; returns them and a summary (files, rows,
    seconds and bytes per copy computed now)."""
    folder = Path(config.folder).expanduser().resolve()
    files = ir_files(folder)
    eligible = np.ones(len(train), bool) if not config.devices else np.isin(train.device, config.devices)
    rows = np.flatnonzero(eligible)
    if len(rows) == 0:
        raise ValueError(f"--ir-devices {' '.join(config.devices)}: no training segment was recorded by "
                         f"{'that device' if len(config.devices) == 1 else 'those devices'} (the training "
                         f"split's devices: {', '.join(sorted(set(train.device)))})")
    key = _key(train, folder, files, config, params, seed)
    paths = [Path(cache_dir) / f"ir-{key}-{k}.npy" for k in range(config.copies)]
    shape = (len(rows), *train.X.shape[1:])
    todo = [k for k, p in enumerate(paths) if not _complete(p, shape)]
    summary = {"folder": str(folder), "impulse_responses": len(files), "rows": len(rows), "copies": config.copies,
               "computed": len(todo), "bytes_per_copy": int(np.prod(shape)) * 4 + 128}
    if todo:
        irs = load_irs(folder, params.sample_rate)
        t0 = time.perf_counter()
        for k in todo:
            _write_copy(paths[k], train, rows, recordings, irs, np.random.default_rng([seed, k, 0xD1B]), params,
                        progress, f"impulse responses {k + 1}/{config.copies}")
        summary["seconds_per_copy"] = round((time.perf_counter() - t0) / len(todo), 2)
        log.info("impulse responses: %d copies of %d training segments in %.1f s each, %.1f MB each (%s)",
                 len(todo), len(rows), summary["seconds_per_copy"], summary["bytes_per_copy"] / 1e6, folder)
    return Copies(tuple(str(p) for p in paths), rows, len(train), config.p), summary


def _complete(path: Path, shape: tuple) -> bool:
    try:
        X = np.load(path, mmap_mode="r")
    except Exception:  # missing or damaged: computed again, never trusted
        return False
    return X.shape == shape and X.dtype == np.float32


def _write_copy(path: Path, train, rows: np.ndarray, recordings: list, irs: list[np.ndarray],
                rng: np.random.Generator, params: FeatureParams, progress: bool, desc: str) -> None:
    """One copy: each recording with an eligible training segment, convolved with a random impulse response,
    cut into segments like the features; the log-mel of the segments ``rows`` asks for, in that order."""
    owners = train.recording[rows]
    recs = np.unique(owners)  # sorted: the draw of a recording does not depend on the others
    choice = dict(zip(recs.tolist(), rng.integers(0, len(irs), len(recs)).tolist(), strict=True))

    def segments(r: int) -> np.ndarray:
        x = audio.load(recordings[r].path, params.sample_rate)
        return audio.segment(convolve(x, irs[choice[r]]), params.min_last_segment, params.sample_rate)

    with atomic_path(path) as tmp, open(tmp, "wb") as fh, ThreadPoolExecutor(cpu_count()) as pool:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (len(rows), *train.X.shape[1:])})
        # one run of rows per recording (features.extract keeps a split's rows in recording order)
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        with tqdm(total=len(rows), desc=desc, unit="segment", disable=not progress) as bar:
            for b in range(0, len(starts), RECORDINGS_PER_BLOCK):
                runs = list(zip(starts[b:b + RECORDINGS_PER_BLOCK], ends[b:b + RECORDINGS_PER_BLOCK], strict=True))
                waves = list(pool.map(lambda se: segments(int(owners[se[0]]))[train.segment[rows[se[0]:se[1]]]],
                                      runs))
                fh.write(np.ascontiguousarray(logmel(np.concatenate(waves), params), "<f4").tobytes())
                bar.update(runs[-1][1] - runs[0][0])
