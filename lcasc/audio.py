"""Audio decoding: any file soundfile reads -> float32 mono at 44.1 kHz, cut into 1-second segments.

Every problem with a file is raised as :class:`AudioError` naming the file, so callers can skip it
with a warning (datasets) or report it in one line (predict).
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import struct
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger("lcasc")
SAMPLE_RATE = 44_100
SEGMENT_SECONDS = 1.0
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus"}

# First bytes of the containers libsndfile reads (for messages about files that are not audio at all).
_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"fLaC", b"OggS", b"ID3", b"FORM", b".snd", b"riff", b"caff")


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def _check_rate(sample_rate, name: str) -> float:
    """A positive finite sample rate in Hz (int or float), or :class:`AudioError`."""
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(name, f"sample rate must be a number of Hz, got {sample_rate!r}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise AudioError(name, f"invalid sample rate {sample_rate!r} (must be a positive number of Hz)")
    return rate


def to_mono_44k(x: np.ndarray, sample_rate: float, name: str = "<array>",
                channels_first: bool | None = None, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(samples,) or (samples, channels) at any rate -> (samples,) float32 mono at ``target_rate`` (the
    DCASE 2022 front end's 44.1 kHz unless a feature setting asks for another rate).

    Channels are averaged; other rates are resampled with soxr (high quality). Integer arrays are PCM
    (signed: full scale 2**(bits-1); unsigned: offset binary, as 8-bit WAV). ``channels_first=None``
    takes a 2-D array with more columns than rows as (channels, samples) (librosa's layout), since no
    recording has more channels than samples; pass True/False to say which it is. A clip whose peak
    exceeds 1 is scaled by its peak (the DCASE baseline does the same before storing clips as int16);
    this happens before resampling too, so that values near the float32 limit cannot overflow in the
    resampler.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise AudioError(name, f"samples have type {x.dtype}, expected numbers")
    if x.ndim == 2 and (channels_first or (channels_first is None and x.shape[1] > x.shape[0])):
        x = x.T
    if x.ndim not in (1, 2):
        raise AudioError(name, f"expected (samples,) or (samples, channels), got shape {x.shape}")
    if x.size == 0:
        raise AudioError(name, "no samples (empty audio)")
    rate = _check_rate(sample_rate, name)
    if x.dtype.kind in "iu":  # raw PCM from an array: scale to [-1, 1)
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        x = (x.astype(np.float64) - (half if x.dtype.kind == "u" else 0.0)) / half
    # A float64 sum cannot overflow for float32 samples and turns NaN/inf into a non-finite total, so one
    # cheap pass clears the usual case; the exact count is only needed for the message.
    if not math.isfinite(float(np.sum(x, dtype=np.float64))) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(name, f"{bad} of {x.size} samples are NaN or infinite")
    if x.ndim == 2:
        x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float64)  # float32 could overflow
    peak = max(float(x.max()), -float(x.min()))
    if peak > 1.0:
        x = x / peak
    x = x.astype(np.float32, copy=False)
    if rate != target_rate:
        x = soxr.resample(x, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
        if x.size:
            peak = max(float(x.max()), -float(x.min()))  # the resampler's ringing can exceed 1 slightly
            if peak > 1.0:
                x = x / np.float32(peak)
    return np.ascontiguousarray(x)


def _not_audio_reason(path: Path) -> str | None:
    """Why ``path`` is clearly not audio (no known container header), or None when it might be."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"
    if head.startswith(_MAGIC) or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):  # MP3 sync
        return None
    if head[4:8] == b"ftyp":
        return "cannot decode audio: an MP4/M4A container, which libsndfile does not read; convert it to WAV or FLAC"
    return "cannot decode audio: not an audio file (no WAV, FLAC, Ogg, MP3 or AIFF header)"


_PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_PCM
FAST_WAV_MAX_BYTES = 64 << 20
_PAGE = 4096
_LOCAL = threading.local()


def _warn_truncated(path: Path, announced: int, got: int, rate: int) -> None:
    log.warning("%s: truncated: its header announces %.2f s, the file holds %.2f s; using what is there",
                path, announced / rate, got / rate)


def _page_aligned(n_bytes: int) -> memoryview:
    """A writable buffer of ``n_bytes`` that starts at a page boundary."""
    raw = np.empty(n_bytes + _PAGE, np.uint8)
    start = -raw.ctypes.data % _PAGE
    return memoryview(raw[start:start + n_bytes])


def _file_bytes(path: Path) -> memoryview | None:
    """The bytes of ``path`` in a buffer kept per thread (valid until this thread's next call), or None when the
    file is larger than :data:`FAST_WAV_MAX_BYTES`.

    Why a kept buffer: a fresh bytes object per file is allocated by mmap and page-faulted in (~90 us for a
    1-s clip, as long as decoding it). Why page-aligned: the kernel copies the file from the page cache, whose
    pages are page-aligned, and that copy ran ~3x slower into a buffer that starts a few bytes past a page
    boundary (measured here, AMD EPYC: 59 vs 18 us for a 130 kB clip; a bytearray's data starts 16 to 32 bytes
    into its page)."""
    with open(path, "rb", buffering=0) as fh:
        n_bytes = os.fstat(fh.fileno()).st_size
        if n_bytes > FAST_WAV_MAX_BYTES:
            return None
        buf = getattr(_LOCAL, "wav", None)
        if buf is None or len(buf) < n_bytes:
            buf = _LOCAL.wav = _page_aligned(max(n_bytes, 1 << 20))
        return buf[:fh.readinto(buf[:n_bytes])]


def _pcm_wav_layout(data: memoryview, path: Path, file_size: int | None = None
                    ) -> tuple[int, int, int, int, int] | None:
    """(offset of the samples, frames, channels, sample rate, bits) of a 16- or 24-bit PCM WAV (plain or
    WAVE_FORMAT_EXTENSIBLE) held in ``data``, or None for anything else, which then goes to libsndfile.
    Frames are the whole frames present (a data chunk cut short keeps those, as libsndfile does), with a
    warning. ``file_size``: the file's size when ``data`` holds only its start (then no warning)."""
    size_known = file_size is not None
    file_size = len(data) if file_size is None else file_size
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + size > len(data):
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: PCM sub-format with all bits valid only
                if size < 40 or data[body + 26:body + 40] != _PCM_GUID_TAIL:
                    return None
                valid, tag = struct.unpack_from("<H4xH", data, body + 18)
                if valid != bits:
                    return None
            fmt = (tag, channels, rate, align, bits)
        elif chunk == b"data":
            if fmt is None:
                return None
            tag, channels, rate, align, bits = fmt
            if tag != 1 or bits not in (16, 24) or channels < 1 or rate < 1 or align != channels * bits // 8:
                return None
            n = min(size, file_size - body) // align
            if n == 0:
                return None
            # 0xFFFFFFFF: a streamed file that never set the size
            if not size_known and file_size - body < size != 0xFFFFFFFF:
                _warn_truncated(path, size // align, n, rate)
            return body, n, channels, int(rate), bits
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None


def _pcm_to_float(data: memoryview, body: int, count: int, bits: int, out: np.ndarray) -> None:
    """``count`` PCM samples at ``data[body:]`` -> ``out`` (float32, ``count`` values), as libsndfile scales them
    (sample / 2**23 resp. / 2**15, exact in float32).

    24-bit samples: numpy views the bytes as overlapping little-endian int32 words 3 bytes apart (the sample
    in the top 24 bits, the previous byte masked off), ~2x faster than libsndfile, which unpacks them one at
    a time. The int32 step goes through a buffer kept per thread: fresh arrays of this size are page-faulted
    in on every call, which costs more than the conversion."""
    if bits == 16:
        np.multiply(np.frombuffer(data, "<i2", count=count, offset=body), np.float32(2.0 ** -15), out=out,
                    dtype=np.float32)
        return
    words = np.ndarray((count,), "<i4", buffer=data, offset=body - 1, strides=(3,))  # body >= 20: byte 1 early
    scratch = getattr(_LOCAL, "words", None)
    if scratch is None or len(scratch) < count:
        scratch = _LOCAL.words = np.empty(max(count, SAMPLE_RATE), np.int32)
    np.bitwise_and(words, np.int32(-256), out=scratch[:count])
    np.multiply(scratch[:count], np.float32(2.0 ** -31), out=out, dtype=np.float32)


def _read_pcm_wav(path: Path) -> tuple[np.ndarray, int] | None:
    """16- or 24-bit PCM WAV -> ((frames, channels) float32, rate), or None for anything else (then
    libsndfile decodes it). The values are identical to libsndfile's."""
    data = _file_bytes(path)
    layout = None if data is None else _pcm_wav_layout(data, path)
    if layout is None:
        return None
    body, n, channels, rate, bits = layout
    x = np.empty((n, channels), np.float32)
    _pcm_to_float(data, body, n * channels, bits, x.reshape(-1))
    return x, rate


def read(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` as it is stored: ((frames, channels) float32 or float64, sample rate in Hz).

    Raises :class:`AudioError` naming the file. float64 files are read as float64 (their values may
    exceed the float32 range); everything else as float32.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "file does not exist") from None
    except OSError as e:
        raise AudioError(path, f"cannot access the file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if st.st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    if path.suffix.lower() == ".mp3":
        # libsndfile hands anything named .mp3 to mpg123, which prints resync notes while it searches random
        # bytes for frames and then reports "file does not exist"; name the real problem instead.
        reason = _not_audio_reason(path)
        if reason is not None:
            raise AudioError(path, reason)
    if path.suffix.lower() in (".wav", ".wave"):
        try:
            fast = _read_pcm_wav(path)
        except (OSError, ValueError, struct.error):
            fast = None  # libsndfile gives the definitive answer and message
        if fast is not None:
            return fast
    try:
        with sf.SoundFile(str(path)) as f:
            dtype = "float64" if f.subtype == "DOUBLE" else "float32"
            announced = f.frames
            x, sr = f.read(dtype=dtype, always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as e:
        detail = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
        detail = re.sub(r"^(Error opening .*?: |Error\s*: )", "", detail)  # libsndfile repeats the path
        reason = _not_audio_reason(path)
        raise AudioError(path, reason or f"cannot decode audio ({detail})") from None
    if x.shape[0] == 0:
        raise AudioError(path, "no samples (the file holds a header but no audio)")
    if 0 < x.shape[0] < announced:
        _warn_truncated(path, announced, x.shape[0], sr)
    return x, int(sr)


def load(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to (samples,) float32 mono at ``sample_rate`` (44.1 kHz); raises :class:`AudioError`."""
    x, sr = read(path)
    return to_mono_44k(x, sr, str(path), channels_first=False, target_rate=sample_rate)


def n_segments(n_samples: int, min_last: float = 0.5, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of 1-second segments: full seconds, plus a padded last one if it holds >= ``min_last`` s.

    A recording shorter than one second still gives one (padded) segment.
    """
    seg = int(sample_rate * SEGMENT_SECONDS)
    full, rest = divmod(n_samples, seg)
    return max(1, full + (1 if rest >= min_last * seg else 0))


def segment(x: np.ndarray, min_last: float = 0.5, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(samples,) at ``sample_rate`` -> (n_segments, sample_rate) float32 one-second segments; the last
    partial segment is zero-padded."""
    seg = int(sample_rate * SEGMENT_SECONDS)
    n = n_segments(x.size, min_last, sample_rate)
    if x.size == n * seg and x.dtype == np.float32:  # whole seconds (TAU clips): a view, no copy
        return np.ascontiguousarray(x).reshape(n, seg)
    out = np.zeros((n, seg), dtype=np.float32)
    flat = out.reshape(-1)
    m = min(x.size, flat.size)
    flat[:m] = x[:m]
    return out


def load_segments(path: str | Path, min_last: float = 0.5, sample_rate: int = SAMPLE_RATE,
                  out: np.ndarray | None = None) -> np.ndarray:
    """``segment(load(path, sample_rate), min_last, sample_rate)``, the same numbers, with less work.

    A mono 16- or 24-bit PCM WAV at ``sample_rate`` (every TAU22 clip) is converted from the file's bytes
    straight into its segments, in the first rows of ``out`` ((rows, samples per second) float32) when it
    has room for them: the result is then a view of ``out``, and no array is allocated (fresh arrays of a
    clip's size are page-faulted in on every call, which costs more than decoding). Decoding to float32 mono
    changes nothing for such a file (``to_mono_44k`` has nothing to do), so this is ``load`` without its
    copies. Any other file, and any problem (named in an :class:`AudioError`), goes through :func:`load`.
    """
    path = path if isinstance(path, Path) else Path(path)  # Path(a Path) parses it again: ~10 us a file
    seg = int(sample_rate * SEGMENT_SECONDS)
    if path.suffix.lower() in (".wav", ".wave"):
        try:
            data = _file_bytes(path)
            layout = None if data is None else _pcm_wav_layout(data, path)
        except (OSError, ValueError, struct.error):
            layout = None  # load() gives the definitive answer and message
        if layout is not None and layout[2] == 1 and layout[3] == sample_rate:
            body, n, _, _, bits = layout
            rows = n_segments(n, min_last, sample_rate)
            fits = out is not None and len(out) >= rows and out.shape[1:] == (seg,) and out.dtype == np.float32
            dest = out[:rows] if fits else np.empty((rows, seg), np.float32)
            flat = dest.reshape(-1)
            m = min(n, flat.size)
            _pcm_to_float(data, body, m, bits, flat[:m])
            flat[m:] = 0
            return dest
    return segment(load(path, sample_rate), min_last, sample_rate)


def duration(path: str | Path) -> float:
    """Seconds of audio in ``path`` from its header; 0 when it is unreadable (decoding names the problem).

    PCM WAV headers are read here with bare system calls (~11 us a file; through Python's buffered file
    object ~20 us); other files ask libsndfile (~170 us: it opens the whole decoder). Both count the whole
    frames the file holds."""
    path = path if isinstance(path, Path) else Path(path)
    try:
        if path.suffix.lower() in (".wav", ".wave"):
            fd = os.open(path, os.O_RDONLY)
            try:
                head, size = os.pread(fd, 4096, 0), os.fstat(fd).st_size
            finally:
                os.close(fd)
            layout = _pcm_wav_layout(memoryview(head), path, file_size=size)
            if layout is not None:
                return layout[1] / layout[3]
        info = sf.info(str(path))
        return info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - any unreadable file is handled (named) when it is decoded
        return 0.0


def rms_db(segments: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
    """(n, samples) -> (n,) RMS level in dB relative to full scale (-inf for digital silence).

    The squares are float32 and summed pairwise (numpy's sum of a contiguous row): within ~1e-7 of a float64
    sum, ~2x faster. ``work``: an (n, samples) float32 array to square the samples into (else one is
    allocated)."""
    squares = np.square(segments, out=work, dtype=np.float32)
    rms = np.sqrt(squares.sum(axis=1, dtype=np.float32).astype(np.float64) / squares.shape[1])
    with np.errstate(divide="ignore"):
        return 20 * np.log10(rms)
