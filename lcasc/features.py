"""The features of a dataset: the log-mel (:mod:`lcasc.logmel`) of every 1-second segment, cached.

Caching: the files are processed in chunks of about 5 minutes of audio (content-defined: adding a file
changes its own chunk only); each chunk is stored under a hash of the feature parameters and its files'
names, sizes and modification times. Changing a parameter or a file recomputes only what it touches; a
killed extraction resumes at the first chunk not yet written. The chunks are then gathered into one
memory-mapped ``.npy`` file per feature set, rows grouped by split: training, the fine-tuning and study
workers all read that one file (each split is a view of it), so the features are never held twice.

Speed: every CPU runs a thread that decodes a few files straight into a buffer it keeps and turns them into
features while they are in the CPU cache (:func:`_features_of`); the next chunk's work is queued while a
chunk is written. The FFT takes the largest share of the time (``benchmarks/features_speed.py`` measures it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lcasc import audio
from lcasc.data import Dataset, Recording
from lcasc.io import atomic_path
from lcasc.logmel import FORMAT_VERSION, FeatureParams, logmel
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")
CHUNK_SECONDS = 300.0  # seconds of audio per feature chunk, on average (its waveforms: ~50 MB, at most 4x)
DEFAULT_PARAMS = FeatureParams()  # METHOD-NOTES §2


@dataclass(frozen=True)
class MappedRows:
    """Rows ``start:stop`` of a memory-mapped ``.npy`` file: what a worker process is handed instead of a
    pickled copy of the features. ``open()`` maps the file again in the worker; the operating system shares
    its pages between every process that maps it."""

    path: str
    start: int
    stop: int

    def open(self) -> np.ndarray:
        # read-only: a worker only reads its features, and can hand the pages it has read back to the page
        # cache (lcasc.allocator.release_mapped_pages)
        return np.load(self.path, mmap_mode="r")[self.start:self.stop]


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


def _file_facts(recs: list[Recording], root: Path, cache: Path) -> list[tuple[float, int, int]]:
    """(seconds of audio, size in bytes, modification time in ns) of each recording.

    The seconds come from each file's header, read once: they are kept in the cache (``facts-<key>.npz``,
    one per dataset root) with the size and modification time the file had, so that reopening a cached
    dataset costs one ``os.stat`` per file (TAU22's 169,300 headers took 12-40 s to read again in every
    process); a file whose size or modification time changed, or a new one, has its header read again.
    All in the calling thread: the work per file is a few microseconds of Python between system calls, so
    threads only contend for the GIL (10,000 new TAU22 clips, page cache warm: 0.14 s in one thread, 0.34 s
    on two)."""
    path = cache / f"facts-{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.npz"
    known = _load_facts(path)

    result, read = [], 0
    for r in recs:
        st = os.stat(r.path)
        seen = known.get(str(r.path))
        if seen is not None and seen[1:] == (st.st_size, st.st_mtime_ns):
            result.append(seen)
        else:
            result.append((audio.duration(r.path), st.st_size, st.st_mtime_ns))
            read += 1
    if read:
        # the facts of other files under the same root (another list of the same folder) are kept too
        kept = {**known, **{str(r.path): f for r, f in zip(recs, result)}}
        seconds, size, mtime_ns = (list(c) for c in zip(*kept.values()))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # paths joined by NUL, which no path holds
            np.savez(fh, paths=np.frombuffer("\0".join(kept).encode(), np.uint8),
                     seconds=np.array(seconds, np.float64), size=np.array(size, np.int64),
                     mtime_ns=np.array(mtime_ns, np.int64))
    return result


def _load_facts(path: Path) -> dict[str, tuple[float, int, int]]:
    """The facts kept at ``path`` by :func:`_file_facts` (path -> (seconds, size, mtime_ns)); {} when missing or
    unreadable (then every header is read again)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            paths = z["paths"].tobytes().decode().split("\0") if len(z["paths"]) else []
            seconds, size, mtime = z["seconds"].tolist(), z["size"].tolist(), z["mtime_ns"].tolist()
        if not len(paths) == len(seconds) == len(size) == len(mtime):
            raise ValueError("arrays of different lengths")
        return dict(zip(paths, zip(seconds, size, mtime)))
    except Exception as e:  # noqa: BLE001 - a damaged file is never trusted
        log.warning("feature cache %s is damaged (%s); reading the files' headers again", path, e)
        return {}


def _chunk_key(chunk: list[Recording], facts: list[tuple[float, int, int]], params: FeatureParams) -> str:
    """The cache key of a chunk: the feature parameters and its files' paths, sizes and modification times."""
    h = hashlib.sha256(params.key().encode())
    for r, (_, size, mtime_ns) in zip(chunk, facts):
        h.update(f"{r.path}\0{size}\0{mtime_ns}\n".encode())
    return h.hexdigest()[:32]


BLOCK_FILES = 8  # recordings per task of the thread pool (decoded and turned into features in one go)
BLOCK_SEGMENTS = 8  # segments decoded before their log-mel is computed (in the CPU cache all the while)
_LOCAL = threading.local()


def _features_of(recs: list[Recording], params: FeatureParams) -> tuple[list, list, list[int], list[str]]:
    """Decode ``recs`` and compute the log-mel and RMS level of their segments, all in this thread: pieces of
    X and of level_db (in recording order), the number of segments of each recording (0: it was skipped) and
    one line per skipped file.

    Segments are decoded into a buffer kept per thread and turned into features a few at a time, while
    they are in the CPU cache; no array of a clip's size is allocated per file (fresh arrays of that size
    are page-faulted in on every call, which costs more than decoding a clip)."""
    seg = int(params.sample_rate * audio.SEGMENT_SECONDS)
    waves = getattr(_LOCAL, "waves", None)
    if waves is None or waves.shape[1] != seg:
        waves = _LOCAL.waves = np.empty((4 * BLOCK_SEGMENTS, seg), np.float32)
        _LOCAL.squares = np.empty((4 * BLOCK_SEGMENTS, seg), np.float32)
    X, level_db, counts, errors = [], [], [], []

    def add(w: np.ndarray) -> None:
        for s in range(0, len(w), len(waves)):  # a long recording in blocks of the buffers' size
            block = w[s:s + len(waves)]
            X.append(logmel(block, params, workers=1))
            level_db.append(audio.rms_db(block, work=_LOCAL.squares[:len(block)]))

    rows = 0
    for rec in recs:
        if rows >= BLOCK_SEGMENTS:
            add(waves[:rows])
            rows = 0
        try:
            s = audio.load_segments(rec.path, params.min_last_segment, params.sample_rate, out=waves[rows:])
        except audio.AudioError as e:
            errors.append(str(e))
            counts.append(0)
            continue
        counts.append(len(s))
        if np.may_share_memory(s, waves):
            rows += len(s)
        else:  # a long recording: the segments before it, then it on its own
            if rows:
                add(waves[:rows])
                rows = 0
            add(s)
    if rows:
        add(waves[:rows])
    return X, level_db, counts, errors


def read_ahead(recs: list[Recording]) -> None:
    """Ask the operating system to read ``recs``' files into the page cache in the background
    (``posix_fadvise(WILLNEED)``; nothing where it does not exist).

    Why: on a first run the files come from disk, and the decoding threads each wait for their own file, so
    the disk serves one or two reads at a time while the CPUs wait; asked for a chunk ahead, it reads while
    they compute. A file that cannot be opened is left to the decoder, which names the problem."""
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - not Linux
        return
    for r in recs:
        try:
            fd = os.open(r.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _computed_chunks(chunks: list[list[Recording]], params: FeatureParams, pool: ThreadPoolExecutor):
    """The features of each of ``chunks``, in order, as dicts of X, owner (index in the chunk), segment,
    level_db and errors. Each chunk is cut into tasks of :data:`BLOCK_FILES` recordings for the pool's
    threads; the next chunk's tasks are queued before this one's are gathered, so the threads keep working
    while the caller writes a chunk to the cache; the files of the chunk after that are read ahead
    (:func:`read_ahead`)."""
    def queue(i: int) -> list:
        if i + 1 < len(chunks):
            read_ahead(chunks[i + 1])
        return [pool.submit(_features_of, chunks[i][s:s + BLOCK_FILES], params)
                for s in range(0, len(chunks[i]), BLOCK_FILES)]

    ahead = queue(0) if chunks else []
    for i, chunk in enumerate(chunks):
        current, ahead = ahead, queue(i + 1) if i + 1 < len(chunks) else []
        X, level_db, counts, errors = [], [], [], []
        for x, levels, n, err in (f.result() for f in current):
            X += x
            level_db += levels
            counts += n
            errors += err
        counts = np.array(counts, dtype=np.int64)
        owner = np.repeat(np.arange(len(chunk)), counts)
        yield {"X": np.concatenate(X) if X else np.zeros((0, params.n_mels, params.n_frames), np.float32),
               "owner": owner, "segment": np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts),
               "level_db": np.concatenate(level_db) if level_db else np.zeros(0),
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


def extract(dataset: Dataset, params: FeatureParams = DEFAULT_PARAMS, cache_dir: str | Path | None = None,
            progress: bool = True, silence_db: float | None = None, chunk_seconds: float = CHUNK_SECONDS
            ) -> tuple[FeatureSet, list[str]]:
    """Features of every recording of ``dataset``; returns them and one line per file that was skipped.

    Segments quieter than ``silence_db`` (RMS, dBFS) are left out when it is given (``fs.silent_dropped``
    counts them). X is a (copy-on-write) memory map of one ``.npy`` file in the cache (``set-<key>.npy``, keyed by
    the chunks, the splits and ``silence_db``), with rows grouped by split in :data:`SPLIT_ORDER` (recording
    order within a split), so that each split is a view of it. Chunks of about ``chunk_seconds`` of audio are
    computed (and cached) in order, a few files at a time per thread, so memory holds a few files' audio and
    two chunks' features, never the whole dataset.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    recs = sorted(dataset.recordings, key=lambda r: r.name)
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    parts, problems, keys = [], [], []
    import torch  # training comes next in the same process: let it use every CPU

    torch.set_num_threads(cpu_count())
    with ThreadPoolExecutor(max_workers=cpu_count()) as pool:
        facts = _file_facts(recs, Path(dataset.root), cache)
        chunks = chunk_recordings(recs, [f[0] for f in facts], chunk_seconds)
        with tqdm(total=len(recs), desc="features", unit="file", disable=not progress) as bar:
            base, todo = 0, []
            for chunk in chunks:
                keys.append(_chunk_key(chunk, facts[base:base + len(chunk)], params))
                path = cache / f"logmel-{keys[-1]}.npz"
                data = _load_chunk(path, with_X=False)
                if data is None:
                    todo.append(len(parts))
                else:
                    bar.update(len(chunk))
                parts.append((base, path, data))
                base += len(chunk)
            for i, data in zip(todo, _computed_chunks([chunks[i] for i in todo], params, pool)):
                base, path, _ = parts[i]
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **data)
                parts[i] = (base, path, {**{k: data[k] for k in _META}, "n": len(data["X"]),
                                         "shape": data["X"].shape[1:]})
                bar.update(len(chunks[i]))
    for _, _, data in parts:
        for err in data["errors"]:
            log.warning("skipped: %s", err)
            problems.append(str(err))
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
                os.pwrite(fd, X[run[0]:run[-1] + 1], header + int(where[run[0]]) * row_bytes)
    return np.load(path, mmap_mode="c")
