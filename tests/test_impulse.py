"""Device impulse responses: convolved copies of the training features (a unit impulse changes nothing, a
device-like response does), drawn per example and epoch (p = 0: a no-op), bad folders named, recorded in a run."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
import yaml

from lcasc import audio, impulse
from lcasc.cli import main
from lcasc.impulse import ImpulseConfig
from lcasc.logmel import logmel
from lcasc.run import Run, RunConfig, RunError
from lcasc.train import _InMemory
from tests.conftest import FLOAT32_TOLERANCE, make_csv_dataset

SR = 44_100


def unit_impulse_folder(folder, gain: float = 0.3):
    """An impulse response that is a (scaled) unit impulse: after unit-energy scaling, the identity."""
    folder.mkdir(parents=True, exist_ok=True)
    h = np.zeros(64, np.float32)
    h[0] = gain
    sf.write(folder / "identity.wav", h, SR, subtype="FLOAT")
    return folder


def device_folder(folder):
    """Plausible device responses, synthesised (no impulse-response data set is on disk): a small phone
    microphone (band-pass 300 Hz - 7 kHz) and a bass-heavy one with a resonance, at 48 kHz (resampled)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (b, a) in {"phone": scipy.signal.butter(4, [300, 7000], "bandpass", fs=48_000),
                         "resonant": scipy.signal.iirpeak(2500, 4, fs=48_000)}.items():
        h = scipy.signal.lfilter(b, a, scipy.signal.unit_impulse(2048))
        sf.write(folder / f"{name}.wav", (0.5 * h / np.abs(h).max()).astype(np.float32), 48_000, subtype="FLOAT")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_csv_dataset(tmp_path_factory.mktemp("data"), per_class=2, classes=["dog", "rain", "rooster"])


def copies_of(tmp_path, data, folder, **kw) -> tuple[Run, impulse.Copies]:
    cfg = RunConfig(dataset=str(data), impulse_responses=ImpulseConfig(str(folder), **kw))
    run = Run(tmp_path / "run", cfg, progress=False)
    return run, run.impulse_copies()


def test_a_unit_impulse_leaves_the_features_unchanged(tmp_path, data):
    run, c = copies_of(tmp_path, data, unit_impulse_folder(tmp_path / "irs"), copies=2)
    X = run.split("train").X
    copies, slot = c.open()
    assert len(copies) == 2 and (slot == np.arange(len(X))).all()
    for k in range(2):  # the convolution moves samples by rounding only: the float32 log-mel's own tolerance
        np.testing.assert_allclose(copies[k], X, atol=FLOAT32_TOLERANCE)


def test_device_responses_change_the_features_but_not_their_shape_or_the_labels(tmp_path, data):
    run, c = copies_of(tmp_path, data, device_folder(tmp_path / "irs"), copies=2)
    tr = run.split("train")
    copies, _ = c.open()
    # what each response makes of each training recording, computed here from the waveforms
    irs = impulse.load_irs(tmp_path / "irs", SR)
    recs = sorted(run.dataset.recordings, key=lambda r: r.name)
    params = run.config.features
    expected = np.zeros((len(irs), *tr.X.shape), np.float32)
    for r in np.unique(tr.recording):
        rows = np.flatnonzero(tr.recording == r)
        x = audio.load(recs[r].path, SR)
        for j, h in enumerate(irs):
            segs = audio.segment(impulse.convolve(x, h), params.min_last_segment, SR)
            expected[j, rows] = logmel(segs[tr.segment[rows]], params)
    for k in range(2):
        assert copies[k].shape == tr.X.shape and copies[k].dtype == np.float32
        assert np.abs(copies[k] - tr.X).mean() > 0.1  # log-mel units: a filter shapes the spectrum
        for r in np.unique(tr.recording):  # every segment of a recording: one response, drawn for it
            rows = tr.recording == r
            assert any(np.allclose(copies[k][rows], expected[j, rows], atol=1e-4) for j in range(len(irs)))
    # labels come from the training split itself; a training step on copies sees the same ones
    ds = _InMemory(tr.X, tr.y, impulse=c, seed=0)
    x, y = ds[torch.arange(len(tr.y))]
    assert torch.equal(y, torch.from_numpy(tr.y)) and x.shape == (len(tr.y), 1, *tr.X.shape[1:])


def test_the_training_loop_swaps_in_copies_with_probability_p_reproducibly(tmp_path, data):
    run, c = copies_of(tmp_path, data, device_folder(tmp_path / "irs"), copies=3, p=0.5)
    tr = run.split("train")
    idx = torch.arange(len(tr.y))
    epoch = [0]
    ds = _InMemory(tr.X, tr.y, impulse=c, seed=7, epoch=lambda: epoch[0])
    x0 = ds[idx][0][:, 0].numpy()
    changed = ~np.isclose(x0, tr.X).all(axis=(1, 2))
    assert 0 < changed.sum() < len(changed)  # p = 0.5 over ~100 segments
    copies, _ = c.open()
    chosen = impulse.draws(7, 0, np.arange(len(tr.y)), 3, 0.5)
    for i in np.flatnonzero(chosen >= 0):
        np.testing.assert_array_equal(x0[i], copies[chosen[i]][i])
    assert np.array_equal(ds[idx][0][:, 0].numpy(), x0)  # the same epoch: the same draws (resume)
    epoch[0] = 1
    assert not np.array_equal(ds[idx][0][:, 0].numpy(), x0)
    off = _InMemory(tr.X, tr.y, impulse=impulse.Copies(c.files, c.rows, c.n_train, 0.0), seed=7)
    assert np.array_equal(off[idx][0][:, 0].numpy(), tr.X)  # p = 0: a no-op


def test_only_the_devices_asked_for_are_convolved(tmp_path):
    from tests.conftest import make_tau22

    root = make_tau22(tmp_path / "tau", per_split=1)
    cfg = RunConfig(dataset=str(root), impulse_responses=ImpulseConfig(str(device_folder(tmp_path / "irs")),
                                                                       p=1.0, devices=["a"]))
    run = Run(tmp_path / "run", cfg, progress=False)
    tr, c = run.split("train"), run.impulse_copies()
    assert set(tr.device[c.rows]) == {"a"} and len(c.rows) < len(tr)
    x = _InMemory(tr.X, tr.y, impulse=c)[torch.arange(len(tr.y))][0][:, 0].numpy()
    others = tr.device != "a"
    assert np.array_equal(x[others], tr.X[others]) and not np.isclose(x[~others], tr.X[~others]).all()


@pytest.mark.parametrize("case,message", [
    ("missing", "not a folder"), ("empty", "no .wav files"), ("garbage", "bad.wav"), ("silent", "silent")])
def test_a_bad_folder_stops_with_an_error_naming_it(tmp_path, data, case, message):
    folder = tmp_path / "irs"
    if case != "missing":
        folder.mkdir()
    if case == "garbage":
        (folder / "bad.wav").write_bytes(b"not audio at all")
    if case == "silent":
        sf.write(folder / "zero.wav", np.zeros(32, np.float32), SR)
    with pytest.raises(RunError, match=message):
        copies_of(tmp_path, data, folder)


def test_a_short_run_with_impulse_responses_finishes_and_records_them(tmp_path, data, capsys):
    irs = device_folder(tmp_path / "irs")
    out = tmp_path / "run"
    assert main(["-q", "run", "--dataset", str(data), "--out", str(out), "--max-epochs", "1", "--patience", "1",
                 "--skip", "prune", "quantize", "ensemble", "baselines", "--impulse-responses", str(irs),
                 "--ir-p", "0.5", "--ir-copies", "2"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())["impulse_responses"]
    assert cfg == {"folder": str(irs.resolve()), "p": 0.5, "copies": 2, "devices": []}
    summary = yaml.safe_load((out / "features" / "summary.json").read_text())["impulse_responses"]
    assert summary["copies"] == 2 and summary["impulse_responses"] == 2 and summary["computed"] == 2
    assert (out / "models" / "unpruned" / "model.pt").is_file()
    # Another p is another run: it is refused on the same directory.
    assert main(["-q", "features", "--dataset", str(data), "--out", str(out), "--impulse-responses", str(irs),
                 "--ir-p", "0.2", "--ir-copies", "2"]) == 2
    assert "impulse_responses" in capsys.readouterr().err


def test_the_study_compares_impulse_response_probabilities(tmp_path, data):
    from lcasc.io import read_json
    from lcasc.study import run_study

    run, _ = copies_of(tmp_path, data, device_folder(tmp_path / "irs"), p=0.5, copies=2)
    rows = run_study(run, kernels=(3,), activations=("TRTT",), repeats=1, max_epochs=2, patience=2, workers=1,
                     progress=False, ir_ps=[0, 0.5])
    assert [(r["variant"], r["ir_p"]) for r in rows] == [("k3_TRTT", 0.0), ("k3_TRTT_ir0.5", 0.5)]
    jobs = {r["variant"]: read_json(run.dir / "study" / r["variant"] / "seed0" / "job.json") for r in rows}
    assert jobs["k3_TRTT_ir0.5"]["ir_p"] == 0.5
    # Same seed, same initial weights: only the convolved copies trained on make the two networks differ.
    assert jobs["k3_TRTT"]["weights_sha256"] != jobs["k3_TRTT_ir0.5"]["weights_sha256"]
    # Without --ir-p the study trains as the run does (its p), so the 0.5 variant is reused, not run again.
    before = (run.dir / "study" / "k3_TRTT_ir0.5" / "seed0" / "job.json").stat().st_mtime_ns
    assert [r["variant"] for r in run_study(run, kernels=(3,), activations=("TRTT",), repeats=1, max_epochs=2,
                                            patience=2, workers=1, progress=False)] == ["k3_TRTT_ir0.5"]
    assert (run.dir / "study" / "k3_TRTT_ir0.5" / "seed0" / "job.json").stat().st_mtime_ns == before

    plain = Run(tmp_path / "plain", RunConfig(dataset=str(data)), progress=False)
    with pytest.raises(RunError, match="no device impulse responses"):
        run_study(plain, kernels=(3,), activations=("TRTT",), repeats=1, progress=False, ir_ps=[0.4])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        run_study(run, kernels=(3,), activations=("TRTT",), repeats=1, progress=False, ir_ps=[1.5])
