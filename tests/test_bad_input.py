"""Bad and odd input through every entry point.

A corpus built here from generated signals and the embedded ESC-10 recordings (no ../shared): broken,
empty and non-audio files, NaN/Inf samples, every WAV sample format, 8-96 kHz, 1-8 channels, 0.1-60 s,
container quirks, odd paths; arrays handed to the Python API; CSV/TAU/folder metadata with missing columns,
duplicates, unknown labels, Windows line endings. Each entry goes through ``lcasc.audio.load``,
``lcasc.load(DIR).predict``, ``Predictor.predict_files`` and ``lcasc predict``; a usable file must give one
row per second, anything else a one-line error naming the file, never a traceback. ``lcasc run``,
``lcasc features`` and ``lcasc predict`` also run as real processes on datasets and folders with bad
files mixed in.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from lcasc import audio
from lcasc.cli import main
from lcasc.data import DatasetError, load_dataset
from lcasc.predict import load

from .conftest import make_csv_dataset, make_tau22, real_clips


def lcasc_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lcasc", *args], capture_output=True, text=True)


@functools.cache
def rain() -> np.ndarray:
    """A real recording (ESC-10 rain, continuous sound), (samples,) float32 at 44.1 kHz."""
    return audio.load(next(p for p, label in real_clips(2, "test") if label == "rain"))


def real(seconds: float, sr: int = 44100, channels: int = 1) -> np.ndarray:
    """``seconds`` of the rain recording (repeated as needed) at ``sr``, (samples, channels) float32."""
    x = rain()
    x = np.tile(x, int(np.ceil(seconds * 44100 / len(x))))[: round(seconds * 44100)]
    if sr != 44100:
        x = soxr.resample(x, 44100, sr)
    x = 0.9 * x / max(1e-9, float(np.abs(x).max()))
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int, chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A 16-bit PCM WAV by hand, with extra chunks (odd sizes padded) between 'fmt ' and 'data'."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    body = b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * 2 * channels, 2 * channels, 16)
    for cid, payload in chunks:
        body += cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")
    body += b"data" + struct.pack("<I", pcm.nbytes) + pcm.tobytes()
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --------------------------------------------------------------------------------------------------------
# the audio corpus


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Path]  # writes the input into a folder, returns the path to predict
    seconds: int | tuple[int, ...] | None = None  # per-second rows a usable input gives (one of, for a tuple)
    error: str | None = None  # fragment of the one-line error for an unusable one
    silent: bool = False


def write(name: str, x: np.ndarray, sr: int, **kw) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        sf.write(d / name, x, sr, **kw)
        return d / name
    return build


def raw(name: str, content: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (d / name).write_bytes(content() if callable(content) else content)
        return d / name
    return build


def cut(name: str, source: Callable[[Path], Path], keep: Callable[[int], int]) -> Callable[[Path], Path]:
    """A file whose bytes are the first ``keep(size)`` bytes of what ``source`` writes."""
    def build(d: Path) -> Path:
        (d / ".src").mkdir(exist_ok=True)  # hidden: a folder argument does not pick the intact source up
        data = source(d / ".src").read_bytes()
        (d / name).write_bytes(data[: keep(len(data))])
        return d / name
    return build


def with_nan(value: float) -> np.ndarray:
    x = real(1.0)[:, 0].astype(np.float64)
    x[1000:1010] = value
    return x


def embedded(d: Path) -> Path:
    src = next(p for p, label in real_clips(1, "test") if label == "rain")
    shutil.copy(src, d / src.name)
    return d / src.name


def broken_link(d: Path) -> Path:
    (d / "gone.wav").symlink_to(d / "never there.wav")
    return d / "gone.wav"


def folder_named_wav(d: Path) -> Path:
    (d / "folder.wav").mkdir()
    return d / "folder.wav"


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _ogg_with_noise_after_header() -> bytes:
    data = (next(p for p, label in real_clips(1, "test") if label == "rain")).read_bytes()
    return data[:200] + random_bytes(len(data) - 200, seed=1)


CASES: list[Case] = [
    # every WAV sample format (2 s of a real recording)
    *[Case(f"wav_{st.lower()}", write(f"fmt_{st}.wav", real(2.0), 44100, subtype=st), 2)
      for st in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")],
    # 8-96 kHz (2 s)
    *[Case(f"rate_{sr}", write(f"rate_{sr}.wav", real(2.0, sr), sr, subtype="PCM_16"), 2)
      for sr in (8000, 11025, 16000, 22050, 32000, 48000, 88200, 96000)],
    # 2-8 channels (1 s at 48 kHz, 24-bit)
    *[Case(f"channels_{c}", write(f"ch_{c}.wav", real(1.0, 48000, c), 48000, subtype="PCM_24"), 1)
      for c in range(2, 9)],
    # 0.1 s to 60 s: a tail of >= 0.5 s is a padded second, a shorter one is dropped, < 1 s is one second
    *[Case(f"length_{s}s", write(f"len_{s}.wav", real(s), 44100, subtype="PCM_24"), n)
      for s, n in ((0.1, 1), (0.49, 1), (0.5, 1), (1.0, 1), (1.49, 1), (1.51, 2), (3.4, 3), (10.0, 10), (60.0, 60))],
    # other formats
    Case("flac_24bit", write("clip.flac", real(2.0, 48000, 2), 48000, subtype="PCM_24"), 2),
    Case("ogg_vorbis", write("clip.ogg", real(2.0), 44100, format="OGG", subtype="VORBIS"), 2),
    Case("mp3", write("clip.mp3", real(3.0), 44100, format="MP3"), 3),
    Case("aiff", write("clip.aiff", real(2.0), 44100, subtype="PCM_16"), 2),
    Case("au", write("clip.au", real(2.0), 44100, subtype="PCM_16"), 2),
    Case("embedded_esc10_ogg", embedded, 5),
    # odd content
    Case("digital_silence", write("silence.wav", np.zeros(44100 * 2), 44100, subtype="PCM_16"), 2, silent=True),
    Case("near_silence_float", write("tiny.wav", np.full(44100, 1e-30), 44100, subtype="FLOAT"), 1, silent=True),
    Case("clipping", write("clipped.wav", np.clip(20 * real(2.0), -1, 1), 44100, subtype="PCM_16"), 2),
    Case("loud_float_peak_8", write("loud.wav", 8 * real(2.0), 44100, subtype="FLOAT"), 2),
    Case("float64_1e300", write("huge.wav", 1e300 * real(1.0).astype(np.float64), 44100, subtype="DOUBLE"), 1),
    Case("dc_offset", write("dc.wav", 0.8 + 0.1 * real(1.0), 44100, subtype="PCM_16"), 1),
    Case("full_scale_square", write("square.wav", np.sign(np.sin(np.arange(44100) / 20)), 44100,
                                    subtype="PCM_16"), 1),
    # odd paths
    Case("non_ascii_name", write("café 東京 ☂.wav", real(1.0), 44100, subtype="PCM_16"), 1),
    Case("spaces_and_brackets", write("my clip (1) [final].wav", real(1.0), 44100, subtype="PCM_16"), 1),
    Case("upper_case_extension", write("LOUD.WAV", real(1.0), 44100, subtype="PCM_16"), 1),
    Case("long_name", write("x" * 200 + ".wav", real(1.0), 44100, subtype="PCM_16"), 1),
    Case("leading_dash", write("-clip.wav", real(1.0), 44100, subtype="PCM_16"), 1),
    # container quirks
    Case("wavex_24bit", write("ext.wav", real(2.0, 48000, 2), 48000, format="WAVEX", subtype="PCM_24"), 2),
    Case("rf64", write("big.wav", real(2.0), 44100, format="RF64", subtype="PCM_16"), 2),
    Case("wav_list_chunk", raw("list.wav", lambda: wav_bytes(real(2.0)[:, 0], 44100,
                                                             ((b"LIST", b"INFOISFT\x05\0\0\0lcasc\0"),))), 2),
    Case("wav_odd_chunk", raw("odd.wav", lambda: wav_bytes(real(2.0)[:, 0], 44100, ((b"junk", b"abc"),))), 2),
    Case("flac_named_wav", write("flac_inside.wav", real(2.0), 44100, format="FLAC", subtype="PCM_16"), 2),
    Case("wav_named_mp3", write("wav_inside.mp3", real(2.0), 44100, format="WAV", subtype="PCM_16"), 2),
    Case("truncated_wav_data", cut("cut.wav", write("full.wav", real(3.0), 44100, subtype="PCM_24"),
                                   lambda n: n // 2), 1),
    # about half of the audio survives; exactly how much depends on the codec's bitrate here
    Case("truncated_ogg_middle", cut("cut.ogg", write("full.ogg", real(4.0), 44100, format="OGG"),
                                     lambda n: n // 2), (1, 2)),
    Case("truncated_mp3", cut("cut.mp3", write("full.mp3", real(4.0), 44100, format="MP3"), lambda n: n // 2),
         (1, 2)),
    # unusable: a one-line error naming the file
    Case("empty_wav", raw("empty.wav", b""), error="file is empty"),
    Case("empty_flac", raw("empty.flac", b""), error="file is empty"),
    Case("wav_header_only", cut("header.wav", write("h.wav", real(1.0), 44100, subtype="PCM_16"), lambda n: 44),
         error="no samples"),
    Case("wav_header_cut", cut("cut_header.wav", write("h.wav", real(1.0), 44100, subtype="PCM_16"), lambda n: 30),
         error="cannot decode"),
    Case("ogg_header_cut", cut("cut_header.ogg", write("h.ogg", real(1.0), 44100, format="OGG"), lambda n: 200),
         error="cannot decode"),
    Case("ogg_noise_after_header", raw("noisy.ogg", _ogg_with_noise_after_header), error="cannot decode"),
    Case("flac_truncated", cut("cut.flac", write("f.flac", real(3.0), 44100), lambda n: n // 2),
         error="cannot decode"),
    Case("text_named_wav", raw("notes.wav", b"these are my notes, not audio\n" * 40), error="not an audio file"),
    Case("random_named_mp3", raw("noise.mp3", lambda: random_bytes(5000)), error="not an audio file"),
    Case("random_named_flac", raw("noise.flac", lambda: random_bytes(5000)), error="not an audio file"),
    Case("random_named_ogg", raw("noise.ogg", lambda: random_bytes(5000)), error="not an audio file"),
    Case("png_named_wav", raw("picture.wav", b"\x89PNG\r\n\x1a\n" + bytes(200)), error="not an audio file"),
    Case("m4a_named_mp3", raw("song.mp3", b"\0\0\0\x20ftypM4A \0\0\0\0" + bytes(300)), error="MP4/M4A"),
    Case("nan_samples", write("nan.wav", with_nan(np.nan), 44100, subtype="FLOAT"), error="NaN"),
    Case("inf_samples", write("inf.wav", with_nan(np.inf), 44100, subtype="FLOAT"), error="infinite"),
    Case("nan_float64", write("nan64.wav", with_nan(np.nan), 44100, subtype="DOUBLE"), error="NaN"),
    Case("missing_file", lambda d: d / "not here.wav", error="does not exist"),
    Case("broken_symlink", broken_link, error="does not exist"),
    Case("folder_named_wav", folder_named_wav, error="is a folder"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small real run made by ``lcasc run`` as a process from a CSV dataset with bad rows and bad files."""
    tmp = tmp_path_factory.mktemp("badrun")
    ds = tmp / "ds"
    ds.mkdir()
    (ds / "empty.wav").write_bytes(b"")
    (ds / "notes.flac").write_text("not audio")
    sf.write(ds / "nan.wav", with_nan(np.nan), 44100, subtype="FLOAT")
    unlisted = [c[0] for c in real_clips(3, "test") if c not in real_clips(2, "test")]  # not in the dataset
    csv_path = make_csv_dataset(ds, per_class=2, extra_rows=[
        ("empty.wav", "rain", "train"), ("notes.flac", "rooster", "validate"), ("nan.wav", "rain", "test"),
        ("missing.wav", "rain", "train"), ("empty.wav", "rain", "train"), ("", "rain", "train"),
        (str(unlisted[0]), "thunder", "test"), (str(unlisted[1]), "", "test"),
    ])
    out = tmp / "run"
    proc = lcasc_process("run", "--dataset", str(csv_path), "--out", str(out), "--max-epochs", "2",
                         "--patience", "1", "--cache-dir", str(tmp / "cache"), "--skip", "prune", "quantize",
                         "ensemble", "similarity", "fuse", "baselines")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("empty.wav", "notes.flac", "nan.wav", "missing.wav", "thunder"):
        assert name in proc.stderr
    summary = json.loads((out / "features" / "summary.json").read_text())
    assert "empty.wav" in json.dumps(summary) and "nan.wav" in json.dumps(summary)
    return out


@pytest.fixture(scope="module")
def predictor(run_dir):
    return load(run_dir)


def seconds_of(case: Case) -> tuple[int, ...]:
    return case.seconds if isinstance(case.seconds, tuple) else (case.seconds,)


def check_error_line(text: str, path: Path, fragment: str) -> None:
    """Exactly one line of ``text`` names the file (its path as given), and it holds ``fragment``; no traceback."""
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if f"{path}:" in line]
    assert len(lines) == 1, text
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_audio_corpus(case: Case, tmp_path, predictor, run_dir, capsys):
    path = case.build(tmp_path)
    # lcasc.audio.load
    if case.error:
        with pytest.raises(audio.AudioError) as e:
            audio.load(path)
        assert path.name in str(e.value) and case.error in str(e.value) and "\n" not in str(e.value)
    else:
        x = audio.load(path)
        assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all() and np.abs(x).max() <= 1.0
    # lcasc.load(DIR).predict and predict_files
    if case.error:
        with pytest.raises(audio.AudioError, match=case.error):
            predictor.predict(path)
        (result,) = predictor.predict_files([path])
        assert isinstance(result, audio.AudioError) and path.name in str(result)
    else:
        r = predictor.predict(path)
        assert len(r.per_second) in seconds_of(case) and r.per_second.shape[1] == len(predictor.classes)
        assert r.silent == case.silent
        assert np.isfinite(r.per_second).all() and r.scene in predictor.classes
        (batched,) = predictor.predict_files([path])
        np.testing.assert_allclose(batched.per_second, r.per_second, atol=1e-6)
    # lcasc predict (in this process; the corpus as a whole goes through a real process below)
    capsys.readouterr()
    code = main(["-q", "predict", "--run", str(run_dir), "--format", "json", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if case.id == "folder_named_wav":  # a folder argument is searched for audio files: there are none
        assert code == 2 and "no audio files" in err
    elif case.error:
        assert code == 2 and out == ""
        check_error_line(err, path, case.error)
    else:
        assert code == 0, err
        assert len(json.loads(out)[0]["per_second"]) in seconds_of(case)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_feature_decoding_is_load_then_segment(case: Case, tmp_path):
    """audio.load_segments (the features' decoding, straight into a buffer for PCM WAV) gives exactly
    segment(load(file)), or the same error; audio.duration (the features' chunking, from the WAV header)
    gives libsndfile's frames / rate, 0 for what libsndfile cannot open."""
    path = case.build(tmp_path)
    try:
        expected = audio.segment(audio.load(path))
    except audio.AudioError as e:
        with pytest.raises(audio.AudioError) as got:
            audio.load_segments(path)
        assert str(got.value) == str(e)
    else:
        buffer = np.full((64, 44100), np.nan, np.float32)  # NaN: padding must be written, not assumed
        for out in (None, buffer, buffer[:1]):  # no buffer, room for every segment, room for one only
            got = audio.load_segments(path, out=out)
            assert got.dtype == np.float32 and np.array_equal(got, expected)
    try:
        info = sf.info(str(path))
        seconds = info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - whatever libsndfile raises for a file it cannot open
        seconds = 0.0
    assert audio.duration(path) == seconds


def test_the_whole_corpus_in_one_process(tmp_path, run_dir):
    """One `lcasc predict FOLDER` over every corpus file: a row per usable file, a line per unusable one."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    expected = {}
    for case in CASES:
        (folder / case.id).mkdir()
        expected[case.build(folder / case.id)] = case
    listed = {p: c for p, c in expected.items() if p.is_file() and p.suffix.lower() in audio.AUDIO_EXTENSIONS}
    proc = lcasc_process("predict", "--run", str(run_dir), "--format", "json", str(folder))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    rows = {e["filename"]: e for e in json.loads(proc.stdout)}
    for path, case in listed.items():
        if case.error:
            check_error_line(proc.stderr, path, case.error)
        else:
            assert len(rows[str(path)]["per_second"]) in seconds_of(case), case.id
    n_bad = sum(1 for c in listed.values() if c.error)
    assert len(rows) == len(listed) - n_bad
    assert f"{n_bad} of {len(listed)} files could not be read" in proc.stderr


# --------------------------------------------------------------------------------------------------------
# arrays given to the Python API


ARRAY_CASES = [
    ("int16", lambda: (real(1.0)[:, 0] * 32767).astype(np.int16), 44100, 1, None),
    ("uint8_offset_binary", lambda: (real(1.0)[:, 0] * 127 + 128).astype(np.uint8), 44100, 1, None),
    ("int32", lambda: (real(2.0)[:, 0] * 2**31 * 0.9).astype(np.int32), 44100, 2, None),
    ("float16", lambda: real(1.0)[:, 0].astype(np.float16), 44100, 1, None),
    ("float64_stereo", lambda: real(2.0, 22050, 2).astype(np.float64), 22050, 2, None),
    ("channels_first", lambda: real(2.0, 16000, 2).T, 16000, 2, None),
    ("python_list", lambda: real(1.0)[:, 0].tolist(), 44100, 1, None),
    ("one_sample", lambda: np.array([0.5], np.float32), 8000, 1, None),
    ("float_rate", lambda: real(1.0, 22050)[:, 0], 22050.0, 1, None),
    ("nan", lambda: np.full(1000, np.nan, np.float32), 44100, None, "NaN"),
    ("inf", lambda: np.r_[np.zeros(100), np.inf], 44100, None, "infinite"),
    ("empty", lambda: np.zeros(0, np.float32), 44100, None, "no samples"),
    ("three_dims", lambda: np.zeros((2, 2, 100), np.float32), 44100, None, "shape"),
    ("strings", lambda: np.array(["a", "b"]), 44100, None, "expected numbers"),
    ("complex", lambda: np.zeros(100, np.complex64), 44100, None, "expected numbers"),
    ("bool", lambda: np.zeros(100, bool), 44100, None, "expected numbers"),
    ("rate_zero", lambda: real(1.0)[:, 0], 0, None, "invalid sample rate"),
    ("rate_negative", lambda: real(1.0)[:, 0], -44100, None, "invalid sample rate"),
    ("rate_nan", lambda: real(1.0)[:, 0], float("nan"), None, "invalid sample rate"),
    ("rate_text", lambda: real(1.0)[:, 0], "fast", None, "sample rate must be a number"),
]


@pytest.mark.parametrize("make,rate,seconds,error", [c[1:] for c in ARRAY_CASES], ids=[c[0] for c in ARRAY_CASES])
def test_arrays(make, rate, seconds, error, predictor):
    x = make()
    if error:
        with pytest.raises(audio.AudioError, match=error) as e:
            predictor.predict(x, rate)
        assert str(e.value).startswith("<array>:")
    else:
        r = predictor.predict(x, rate)
        assert r.per_second.shape == (seconds, len(predictor.classes)) and np.isfinite(r.per_second).all()


# --------------------------------------------------------------------------------------------------------
# dataset metadata


def csv_rows(tmp: Path) -> list[list[str]]:
    """Header and rows of a small real CSV dataset (rain and rooster, one recording per split each)."""
    path = make_csv_dataset(tmp, per_class=1, classes={"rain", "rooster"})
    return list(csv.reader(path.open(newline="")))


def write_csv(tmp: Path, rows: list[list[str]], newline: str = "\n", delimiter: str = ",", prefix: bytes = b"") -> Path:
    buf = [delimiter.join(f'"{v}"' if delimiter in v else v for v in r) for r in rows]
    path = tmp / "data.csv"
    path.write_bytes(prefix + (newline.join(buf) + newline).encode("utf-8"))
    return path


def add_rows(*extra: list[str]) -> Callable[[Path], Path]:
    return lambda tmp: write_csv(tmp, csv_rows(tmp) + [list(r) for r in extra])


def raw_csv(content: bytes) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / "data.csv").write_bytes(content)
        return tmp / "data.csv"
    return build


def other_clip() -> str:
    """A real rain recording that the dataset of :func:`csv_rows` does not list."""
    return str([p for p, label in real_clips(2, "test") if label == "rain"][1])


CSV_CASES: list[tuple[str, Callable[[Path], Path], int | None, str | None]] = [
    # (id, build -> csv path, recordings kept, skipped-line fragment or DatasetError fragment ("!" prefix))
    ("clean", lambda t: write_csv(t, csv_rows(t)), 6, None),
    ("windows_line_endings_and_bom", lambda t: write_csv(t, csv_rows(t), "\r\n", prefix=b"\xef\xbb\xbf"), 6, None),
    ("old_mac_line_endings", lambda t: write_csv(t, csv_rows(t), "\r"), 6, None),
    ("semicolons", lambda t: write_csv(t, csv_rows(t), delimiter=";"), 6, None),
    ("tabs", lambda t: write_csv(t, csv_rows(t), delimiter="\t"), 6, None),
    ("upper_case_header", lambda t: write_csv(t, [["Filename", "LABEL", "Split"], *csv_rows(t)[1:]]), 6, None),
    ("extra_column_and_fields", lambda t: write_csv(t, [["filename", "label", "split", "device"]]
                                                    + [[*r, "a", "surplus"] for r in csv_rows(t)[1:]]), 6, None),
    ("blank_lines", lambda t: write_csv(t, [[""], *csv_rows(t)[:3], [""], *csv_rows(t)[3:]]), 6, None),
    ("split_alias_val", lambda t: write_csv(t, [[a, b, "val" if c == "validate" else c]
                                                for a, b, c in csv_rows(t)]), 6, None),
    ("duplicate_row", lambda t: write_csv(t, csv_rows(t) + [csv_rows(t)[1]]), 6, "listed more than once"),
    ("unknown_label", add_rows(["{clip}", "thunder", "test"]), 6, "'thunder'"),
    ("missing_audio_file", add_rows(["missing clip.wav", "rain", "train"]), 6, "missing clip.wav: file does not exist"),
    ("name_too_long", add_rows(["y" * 5000 + ".wav", "rain", "train"]), 6, "file does not exist"),
    ("short_row", add_rows(["{clip}", "rain"]), 6, "unknown split ''"),
    ("empty_label", add_rows(["{clip}", "", "train"]), 6, "no label"),
    ("empty_filename", add_rows(["", "rain", "train"]), 6, "empty filename"),
    ("unknown_split", add_rows(["{clip}", "rain", "holdout"]), 6, "'holdout'"),
    ("missing_columns", lambda t: write_csv(t, [["file", "label"], ["x.wav", "rain"]]), None, "!missing column(s)"),
    ("header_only", lambda t: write_csv(t, [["filename", "label", "split"]]), None, "!no training recordings"),
    ("empty_file", lambda t: write_csv(t, []), None, "!file is empty"),
    ("nul_bytes", lambda t: write_csv(t, csv_rows(t), prefix=b"\0\0"), None, "!NUL"),
    ("binary_garbage", raw_csv(random_bytes(3000)), None, "!"),
    ("unclosed_quote", raw_csv(b'filename,label,split\n"x.wav,rain,train\n'), None, "!"),
]


@pytest.mark.parametrize("build,kept,message", [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES])
def test_csv_metadata(build, kept, message, tmp_path, capsys):
    path = build(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"{clip}", other_clip().encode()))
    if message and message.startswith("!"):
        with pytest.raises(DatasetError) as e:
            load_dataset(path)
        assert str(tmp_path) in str(e.value) and message[1:] in str(e.value) and "\n" not in str(e.value)
        assert main(["-q", "features", "--dataset", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(tmp_path) in err and len(err.strip().splitlines()) == 1
        return
    ds = load_dataset(path)
    assert len(ds.recordings) == kept and ds.classes == ["rain", "rooster"]
    assert {r.split for r in ds.recordings} == {"train", "validate", "test"}
    if message:
        assert len(ds.skipped) == 1 and message in ds.skipped[0]
    else:
        assert ds.skipped == []


def tau_append(fname: str, line: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        with open(root / fname, "a", newline="") as fh:
            fh.write(line + "\n")
    return apply


def tau_extra_clip_in_evaluate(label: str) -> Callable[[Path], None]:
    """A new, real clip listed in fold1_evaluate.csv (and meta.csv) with ``label``."""
    def apply(root: Path) -> None:
        src = sorted((root / "audio").glob("*.wav"))[0]
        shutil.copy(src, root / "audio" / "extra-1-a.wav")
        tau_append("evaluation_setup/fold1_evaluate.csv", f"audio/extra-1-a.wav\t{label}")(root)
        tau_append("meta.csv", f"audio/extra-1-a.wav\t{label}\tx\ta")(root)
    return apply


def tau_crlf(root: Path) -> None:
    for p in [root / "meta.csv", *(root / "evaluation_setup").iterdir()]:
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))


def tau_duplicate_train_row(root: Path) -> None:
    fold = root / "evaluation_setup" / "fold1_train.csv"
    tau_append("evaluation_setup/fold1_train.csv", fold.read_text().splitlines()[1])(root)


def tau_rename_meta_column(root: Path) -> None:
    meta = root / "meta.csv"
    meta.write_text(meta.read_text().replace("scene_label", "scene", 1))


TAU_CASES = [
    ("clean", lambda root: None, 0, None),
    ("windows_line_endings", tau_crlf, 0, None),
    ("duplicate_in_fold", tau_duplicate_train_row, 1, "listed more than once"),
    ("unknown_label_in_evaluate", tau_extra_clip_in_evaluate("thunder"), 1, "'thunder'"),
    ("test_file_not_in_meta", tau_append("evaluation_setup/fold1_test.csv", "audio/new-1-a.wav"), 1,
     "not in meta.csv"),
    ("missing_audio", tau_append("evaluation_setup/fold1_train.csv", "audio/gone-1-a.wav\train"), 1,
     "file does not exist"),
    ("meta_missing_column", tau_rename_meta_column, None, "!missing column(s) scene_label"),
    ("fold_file_missing", lambda root: (root / "evaluation_setup" / "fold1_train.csv").unlink(), None,
     "!file not found"),
]


@pytest.mark.parametrize("damage,n_skipped,message", [c[1:] for c in TAU_CASES], ids=[c[0] for c in TAU_CASES])
def test_tau22_metadata(damage, n_skipped, message, tmp_path):
    root = make_tau22(tmp_path / "tau", classes=("rain", "rooster"), per_split=1)
    damage(root)
    if message and message.startswith("!"):
        with pytest.raises(DatasetError, match=message[1:].replace("(", r"\(").replace(")", r"\)")) as e:
            load_dataset(root, "tau22")
        assert "\n" not in str(e.value) and str(root) in str(e.value)
        return
    ds = load_dataset(root)
    assert ds.layout == "tau22" and ds.classes == ["rain", "rooster"] and len(ds.split("train")) == 4
    assert len(ds.skipped) == n_skipped and all(message in s for s in ds.skipped)


def test_folder_layout_with_bad_and_hidden_files(tmp_path):
    for path, label in real_clips(1):
        (tmp_path / label).mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / label / path.name)
    (tmp_path / "rain" / "empty.wav").write_bytes(b"")
    (tmp_path / "rain" / "notes.txt").write_text("ignored: not an audio extension")
    (tmp_path / "rain" / ".hidden").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "empty class").mkdir()
    ds = load_dataset(tmp_path)
    assert ds.layout == "folder" and "empty class" not in ds.classes
    assert len(ds.recordings) + len(ds.skipped) == 11 and not any(".git" in r.name for r in ds.recordings)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="no audio files found in class folders"):
        load_dataset(tmp_path / "flat", "folder")


@pytest.mark.parametrize("layout", ["csv", "folder", "tau22"])
def test_features_command_skips_bad_files_by_name(layout, tmp_path):
    """`lcasc features` as a process on each layout with broken audio mixed in."""
    bad = {"empty.wav": b"", "notes.flac": b"text, not audio" * 20, "cut.ogg": b"OggS" + bytes(100)}
    if layout == "csv":
        path = make_csv_dataset(tmp_path / "ds", per_class=1, classes={"rain", "rooster"},
                                extra_rows=[(name, "rain", "train") for name in bad])
        folder = path.parent
    elif layout == "folder":
        path = folder = tmp_path / "ds"
        for p, label in real_clips(1):
            (folder / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, folder / label / p.name)
        folder = folder / "rain"
    else:
        path = make_tau22(tmp_path / "ds", classes=("rain", "rooster"), per_split=1)
        folder = path / "audio"
        for name in bad:
            tau_append("evaluation_setup/fold1_train.csv", f"audio/{name}\train")(path)
            tau_append("meta.csv", f"audio/{name}\train\tx\ta")(path)
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    proc = lcasc_process("features", "--dataset", str(path), "--out", str(tmp_path / "run"), "--cache-dir",
                         str(tmp_path / "cache"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads((tmp_path / "run" / "features" / "summary.json").read_text())
    for name in bad:
        assert sum(name in line for line in proc.stderr.splitlines()) == 1, (name, proc.stderr)
        assert name in json.dumps(summary)


@pytest.mark.parametrize("args,message", [
    (["predict", "--run", "{tmp}/nowhere", "{clip}"], "no results.json"),
    (["predict", "--run", "{tmp}/corrupt", "{clip}"], "cannot read it"),
    (["predict", "--run", "{run}", "--backend", "onnx", "{clip}"], "lcasc quantize --run"),
    (["predict", "--run", "{run}", "--backend", "tflite", "{clip}"], "lcasc quantize --run"),
    (["predict", "--run", "{run}", "{tmp}/empty folder"], "no audio files found"),
    (["features", "--dataset", "{tmp}/no dataset", "--out", "{tmp}/o"], "does not exist"),
    (["features", "--dataset", "{tmp}/corrupt", "--layout", "tau22", "--out", "{tmp}/o"], "file not found"),
], ids=["run_missing", "results_corrupt", "onnx_not_exported", "tflite_not_exported", "empty_folder",
        "dataset_missing", "tau22_without_meta"])
def test_command_line_errors_are_one_line(args, message, run_dir, tmp_path, capsys):
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text("{not json")
    (tmp_path / "empty folder").mkdir()
    clip = str(real_clips(1, "test")[0][0])
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir)).replace("{clip}", clip) for a in args]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and message in err, err
