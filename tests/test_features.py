import os

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from lcasc import audio, features
from lcasc.data import default_dataset
from lcasc.data.datasets import load_csv, load_tau22
from lcasc.features import _file_facts, extract
from lcasc.logmel import EPS, FeatureParams, logmel, mel_filterbank

from .conftest import FLOAT32_TOLERANCE, make_csv_dataset, make_tau22, real_clips


@pytest.fixture(scope="module")
def librosa():
    """librosa, the oracle of these tests only (lcasc[test]); CI requires it (LCASC_REQUIRE_EXTRAS=1)."""
    return pytest.importorskip("librosa")


def librosa_logmel(librosa, x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The DCASE 2022 baseline's definition, computed the plain way with librosa (the oracle), in ``dtype``
    throughout (float32: window, signal and filterbank float32, so librosa's STFT runs in complex64, as the
    baseline's own float32 audio makes it)."""
    window = scipy.signal.get_window("hamming", 1764, fftbins=True).astype(dtype)
    spec = np.abs(librosa.stft(x.astype(dtype) + dtype(EPS), n_fft=2048, hop_length=882, win_length=1764,
                               window=window, center=True, pad_mode="reflect"))
    mel = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=40, fmin=0, fmax=22050, dtype=dtype)
    return np.log(mel @ spec + dtype(EPS))


# The run's settings first, then other rates, sizes and band limits (fmax None: sample_rate / 2).
FILTERBANKS = [(44_100, 2048, 40, 0.0, 22_050.0), (16_000, 512, 64, 0.0, 8_000.0), (22_050, 2048, 128, 0.0, None),
               (44_100, 2048, 40, 50.0, 14_000.0), (32_000, 1024, 80, 20.0, 16_000.0), (8_000, 256, 23, 300.0, 3_400.0),
               (48_000, 4096, 256, 0.0, 24_000.0)]


@pytest.mark.parametrize(("sr", "n_fft", "n_mels", "fmin", "fmax"), FILTERBANKS)
def test_mel_filterbank_is_librosas_bit_for_bit(librosa, sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    oracle = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == oracle.shape == (n_mels, 1 + n_fft // 2) and ours.dtype == oracle.dtype == np.float32
    np.testing.assert_allclose(ours, oracle, rtol=1e-6, atol=0)
    # Bit for bit: the feature cache's files keep their meaning (no FORMAT_VERSION bump was needed).
    assert np.array_equal(ours, oracle)


def test_features_equal_librosa_on_real_clips(librosa):
    segments = np.concatenate([audio.segment(audio.load(p)) for p, _ in real_clips(1)])
    assert len(segments) >= 40
    ours = logmel(segments)
    oracle = np.stack([librosa_logmel(librosa, s) for s in segments])
    assert ours.shape == (len(segments), 40, 51) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, oracle, atol=FLOAT32_TOLERANCE, rtol=0)
    # the tolerance is float32's own: librosa's float32 path needs it too, and lcasc is no less accurate
    librosa32 = np.stack([librosa_logmel(librosa, s, np.float32) for s in segments])
    assert librosa32.dtype == np.float32
    np.testing.assert_allclose(librosa32, oracle, atol=FLOAT32_TOLERANCE, rtol=0)
    assert np.abs(ours - oracle).max() <= 2 * np.abs(librosa32 - oracle).max()


def test_batching_does_not_change_features():
    segments = audio.segment(audio.load(real_clips(1)[0][0]))
    np.testing.assert_array_equal(logmel(segments, batch=1), logmel(segments, batch=128))


def test_public_fft_path_gives_the_same_features(monkeypatch):
    """logmel writes its FFT through scipy's pocketfft binding when that takes an output array; the public
    scipy.fft.rfft path that replaces it otherwise must give the same numbers."""
    from lcasc import logmel as logmel_module

    segments = audio.segment(audio.load(real_clips(1)[0][0]))
    binding = logmel(segments, workers=1)
    monkeypatch.setattr(logmel_module, "_R2C", None)
    np.testing.assert_array_equal(logmel(segments, workers=1), binding)


def test_one_second_gives_51_frames_and_40_bands():
    assert FeatureParams().n_frames == 51
    assert logmel(np.zeros((1, 44100))).shape == (1, 40, 51)


def test_cache_reuses_unchanged_and_recomputes_changed(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "ds", per_class=1, classes={"rain", "rooster"})
    ds = load_csv(csv_path)
    cache = tmp_path / "cache"
    # One chunk whatever the clips' names (absolute paths here, so chunk ends would depend on the checkout).
    one_chunk = {"cache_dir": cache, "progress": False, "chunk_seconds": 1e9}
    first, _ = extract(ds, **one_chunk)
    files = sorted(cache.glob("logmel-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again, _ = extract(ds, **one_chunk)
    np.testing.assert_array_equal(first.X, again.X)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    extract(ds, FeatureParams(n_mels=32), **one_chunk)
    assert len(list(cache.glob("logmel-*.npz"))) == 2  # a changed parameter is a new key


def test_file_facts_are_kept_and_a_changed_file_is_read_again(tmp_path):
    """Reopening a cached dataset reads no audio header: each file's seconds are kept in the cache with its
    size and modification time (TAU22's 169,300 headers took 12-40 s per process); a changed file is read."""
    ds = load_tau22(make_tau22(tmp_path / "ds", per_split=1))
    recs = sorted(ds.recordings, key=lambda r: r.name)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert [f[0] for f in _file_facts(recs, ds.root, cache)] == [1.0] * len(recs)
    [kept] = cache.glob("facts-*.npz")
    with np.load(kept) as z:
        data = dict(z)
    data["seconds"] = data["seconds"] * 3  # marked: a header says 1.0, the kept facts now 3.0
    np.savez(kept, **data)
    changed = recs[2].path
    sf.write(changed, np.zeros(2 * 44_100), 44_100, subtype="PCM_24")  # another size and time: read again
    again = _file_facts(recs, ds.root, cache)
    assert [f[0] for f in again] == [2.0 if r.path == changed else 3.0 for r in recs]
    assert [f[1:] for f in again] == [(r.path.stat().st_size, r.path.stat().st_mtime_ns) for r in recs]


def test_damaged_cache_is_recomputed_not_trusted(tmp_path):
    ds = load_csv(make_csv_dataset(tmp_path / "ds", per_class=1, classes={"rain"}))
    cache = tmp_path / "cache"
    good, _ = extract(ds, cache_dir=cache, progress=False)
    chunk = next(cache.glob("logmel-*.npz"))
    chunk.write_bytes(chunk.read_bytes()[:100])  # as if killed mid-write by another tool
    again, _ = extract(ds, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(good.X, again.X)


def test_segments_remember_their_recording_and_split():
    fs, problems = extract(default_dataset(), progress=False)
    assert problems == []
    assert fs.X.shape[1:] == (40, 51)
    for r in np.unique(fs.recording):
        assert len(set(fs.split[fs.recording == r])) == 1
        assert sorted(fs.segment[fs.recording == r]) == list(range((fs.recording == r).sum()))
    assert np.median(np.bincount(fs.recording)) == 5  # ESC-10 clips are about 5 s long


def test_sample_rate_setting_decodes_and_segments_at_that_rate(tmp_path):
    """FeatureParams.sample_rate is honoured end to end: audio resampled to it, 1-s segments of that many
    samples, frames from it, the mel bank up to fmax (<= rate / 2)."""
    ds = load_csv(make_csv_dataset(tmp_path, 1, classes=("rain",)))
    params = FeatureParams(sample_rate=22_050, fmax=11_025.0)
    fs, problems = extract(ds, params, tmp_path / "cache", progress=False)
    default, _ = extract(ds, FeatureParams(), tmp_path / "cache", progress=False)
    assert not problems and params.n_frames == 26
    assert fs.X.shape[1:] == (40, 26) and default.X.shape[1:] == (40, 51)
    assert len(fs) == len(default)  # the same seconds of audio, at another rate
    x = audio.load(real_clips(1)[0][0], 22_050)
    assert audio.segment(x, sample_rate=22_050).shape[1] == 22_050
    first = min(ds.recordings, key=lambda r: r.name).path  # features are stored in name order
    expected = logmel(audio.segment(audio.load(first, 22_050), sample_rate=22_050)[:1], params)[0]
    np.testing.assert_allclose(fs.X[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="fmax"):
        FeatureParams(sample_rate=16_000)  # fmax 22,050 Hz is above the Nyquist frequency of 16 kHz


@pytest.mark.parametrize("layout", ["csv", "tau22"])
def test_features_are_each_files_own_with_a_bad_file_skipped_by_name(tmp_path, layout):
    """extract() decodes a few files at a time on several threads, straight into buffers it reuses; every
    recording's rows must still be logmel and RMS level of segment(load(file)), bit for bit, in segment
    order, whatever chunk or block it fell in; a file that cannot be decoded is skipped, named."""
    if layout == "csv":  # 5-s Ogg recordings (libsndfile), several chunks
        bad = tmp_path / "ds" / "bad.wav"
        bad.parent.mkdir()
        bad.write_text("these are my notes, not audio\n")
        ds = load_csv(make_csv_dataset(tmp_path / "ds", per_class=2, extra_rows=[(bad.name, "rain", "train")]))
    else:  # 1-s 24-bit WAV clips (lcasc's own WAV reader)
        ds = load_tau22(make_tau22(tmp_path / "ds", per_split=3))
        bad = sorted(r.path for r in ds.recordings)[5]
        bad.write_text("these are my notes, not audio\n")
    fs, problems = extract(ds, cache_dir=tmp_path / "cache", progress=False, chunk_seconds=20.0)
    assert len(list((tmp_path / "cache").glob("logmel-*.npz"))) > 1
    assert len(problems) == 1 and str(bad) in problems[0] and "not an audio file" in problems[0]
    recs = sorted(ds.recordings, key=lambda r: r.name)
    assert len(np.unique(fs.recording)) == len(recs) - 1
    for i, rec in enumerate(recs):
        rows = np.flatnonzero(fs.recording == i)
        if rec.path == bad:
            assert len(rows) == 0
            continue
        segments = audio.segment(audio.load(rec.path))
        assert list(fs.segment[rows]) == list(range(len(segments)))
        np.testing.assert_array_equal(fs.X[rows], logmel(segments))
        np.testing.assert_array_equal(fs.level_db[rows], audio.rms_db(segments))


def test_a_recording_longer_than_a_threads_buffer(tmp_path):
    """A 70.7-s recording (71 segments, more than the 32 a thread decodes into) after a short one: its rows
    are still its own logmel and level, whole, in order."""
    import soundfile as sf

    short, _ = real_clips(1)[0]
    x = np.tile(audio.load(short), 16)[:44100 * 70 + 30870]
    sf.write(tmp_path / "long.wav", x, 44100, subtype="PCM_16")
    (tmp_path / "data.csv").write_text(f"filename,label,split\n{short},rain,train\nlong.wav,rain,train\n")
    ds = load_csv(tmp_path / "data.csv")
    fs, problems = extract(ds, cache_dir=tmp_path / "cache", progress=False)
    assert not problems
    for i, rec in enumerate(sorted(ds.recordings, key=lambda r: r.name)):
        rows = np.flatnonzero(fs.recording == i)
        segments = audio.segment(audio.load(rec.path))
        assert len(rows) == len(segments) == (71 if rec.path.name == "long.wav" else 5)
        np.testing.assert_array_equal(fs.X[rows], logmel(segments))
        np.testing.assert_array_equal(fs.level_db[rows], audio.rms_db(segments))


def test_files_are_read_ahead_a_chunk_before_they_are_decoded(tmp_path, monkeypatch):
    """On a first run the files come from disk: each chunk's files are handed to the operating system's
    read-ahead (posix_fadvise WILLNEED) before the chunk is queued for decoding, except the first (nothing runs
    before it); a file that cannot be opened is left to the decoder, which names it."""
    ds = load_tau22(make_tau22(tmp_path / "ds", per_split=3))
    events, hinted = [], []
    real_hint, real_features = features.read_ahead, features._features_of

    def hint(recs):
        events.append(("hint", [r.name for r in recs]))
        real_hint(recs)

    def decode(recs, params):
        events.append(("decode", [r.name for r in recs]))
        return real_features(recs, params)

    monkeypatch.setattr(features, "read_ahead", hint)
    monkeypatch.setattr(features, "_features_of", decode)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, *a: hinted.append(os.readlink(f"/proc/self/fd/{fd}")))
    extract(ds, cache_dir=tmp_path / "cache", progress=False, chunk_seconds=4.0)
    first_hint = {n: i for i, (kind, names) in reversed(list(enumerate(events))) if kind == "hint" for n in names}
    first_decode = {n: i for i, (kind, names) in reversed(list(enumerate(events))) if kind == "decode" for n in names}
    recs = sorted(ds.recordings, key=lambda r: r.name)
    chunks = features.chunk_recordings(recs, [1.0] * len(recs), 4.0)  # the clips are 1 s long
    assert len(chunks) >= 3
    assert sorted(first_hint) == sorted(r.name for c in chunks[1:] for r in c)
    assert all(first_hint[n] < first_decode[n] for n in first_hint)
    assert sorted(hinted) == sorted(str(r.path.resolve()) for r in ds.recordings if r.name in first_hint)
    features.read_ahead([*ds.recordings[:1], type(ds.recordings[0])(tmp_path / "gone.wav", "gone.wav", None, "test")])
