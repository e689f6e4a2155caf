"""`lcasc predict` and `lcasc.load(...).predict`: backends, formats, per-second output, folders, arrays,
ensembles. On a copy of the session's small real run (its networks with their ONNX and INT8 files, and an
ensemble of unpruned + pruned_C1)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from lcasc import audio
from lcasc.cli import main
from lcasc.predict import PredictError, Predictor, load

from .conftest import copy_of, real_clips

HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None
HAS_INT8 = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tflite_micro", "onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnxruntime not installed (pip install 'lcasc[onnx]')")
needs_int8 = pytest.mark.skipif(not HAS_INT8, reason="INT8 export needs lcasc[onnx,tflite]")


def cli(*args: str) -> int:
    return main(["-q", *args])


def ensemble_named(run_dir, members: list[str], precision: str = "float32") -> str:
    """Name of the ensemble of ``members`` in results.json (names depend on how the ensemble was made)."""
    ensembles = json.loads((run_dir / "results.json").read_text())["ensembles"]
    return next(e["name"] for e in ensembles if e["members"] == members and e["precision"] == precision)


@pytest.fixture(scope="module")
def run_dir(family_run, tmp_path_factory):
    """A copy of the session's run (conftest) with one more ensemble: unpruned + pruned_C1."""
    out = copy_of(family_run, tmp_path_factory)
    assert cli("ensemble", "--run", str(out), "--members", "unpruned", "pruned_C1") == 0
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """Real recordings cut to odd lengths: 3.4 s (24-bit WAV, 48 kHz stereo), 2 s FLAC, 0.3 s Ogg."""
    d = tmp_path_factory.mktemp("clips")
    (a, _), (b, _), (c, _) = real_clips(1, "test")[:3]
    x, sr = sf.read(a, dtype="float32")
    y = audio.to_mono_44k(x, sr)
    import soxr

    y48 = soxr.resample(y[: int(3.4 * 44100)], 44100, 48000)
    sf.write(d / "street 3.4s.wav", np.stack([y48, 0.5 * y48], axis=1), 48000, subtype="PCM_24")
    x, sr = sf.read(b, dtype="float32")
    sf.write(d / "two.flac", x[: 2 * sr], sr)
    x, sr = sf.read(c, dtype="float32")
    sf.write(d / "short.ogg", x[: int(0.3 * sr)], sr)
    return d


def test_per_second_rows_follow_the_duration(run_dir, clip_dir):
    p = load(run_dir, backend="torch")
    r = p.predict(clip_dir / "street 3.4s.wav")
    assert r.per_second.shape == (3, len(p.classes))  # 3 full seconds; the 0.4 s tail is under 0.5 s
    assert abs(r.duration - 3.4) < 0.01 and r.scene in p.classes
    np.testing.assert_allclose(r.per_second.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(r.probabilities, r.per_second.mean(0), atol=1e-6)
    assert len(p.predict(clip_dir / "two.flac").per_second) == 2
    assert len(p.predict(clip_dir / "short.ogg").per_second) == 1  # under a second: one padded segment


def test_batched_files_equal_one_at_a_time(run_dir, clip_dir):
    p = load(run_dir, backend="torch")
    files = sorted(clip_dir.iterdir()) + [clip_dir / "missing.wav"]
    batched = list(p.predict_files(files))
    assert isinstance(batched[-1], audio.AudioError) and "missing.wav" in str(batched[-1])
    for f, b in zip(files[:-1], batched[:-1], strict=True):
        np.testing.assert_allclose(b.per_second, p.predict(f).per_second, atol=1e-6)


def test_arrays_with_their_sample_rate(run_dir):
    p = load(run_dir, backend="torch")
    rng = np.random.default_rng(0)
    mono = rng.normal(0, 0.1, 22050 * 2).astype(np.float32)
    assert len(p.predict(mono, 22050).per_second) == 2
    stereo = np.stack([mono, mono], axis=1)
    np.testing.assert_allclose(p.predict(stereo, 22050).per_second, p.predict(mono, 22050).per_second, atol=1e-5)
    np.testing.assert_allclose(p.predict(stereo.T, 22050).per_second, p.predict(mono, 22050).per_second,
                               atol=1e-5)  # (channels, samples), librosa's layout
    pcm = (np.clip(mono, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_allclose(p.predict(pcm, 22050).per_second, p.predict(pcm / 32768.0, 22050).per_second,
                               atol=1e-5)
    assert p.predict(mono, 22050).name == "<array>"
    with pytest.raises(ValueError, match="sample_rate"):
        p.predict(mono)


def test_formats(run_dir, clip_dir, capsys):
    classes = json.loads((run_dir / "results.json").read_text())["classes"]
    files = [str(clip_dir / "street 3.4s.wav"), str(clip_dir / "two.flac")]
    assert cli("predict", "--run", str(run_dir), "--format", "table", *files) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and "(3 s)" in table[0] and "(2 s)" in table[1]
    assert cli("predict", "--run", str(run_dir), "--format", "json", *files) == 0
    js = json.loads(capsys.readouterr().out)
    assert [len(e["per_second"]) for e in js] == [3, 2] and all(e["scene_label"] in classes for e in js)
    assert set(js[0]["probabilities"]) == set(classes)
    assert cli("predict", "--run", str(run_dir), "--format", "csv", *files) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["filename", "second", "scene_label", *classes] and len(rows) == 1 + 3 + 2
    assert [r[1] for r in rows[1:]] == ["0", "1", "2", "0", "1"]
    assert cli("predict", "--run", str(run_dir), "--format", "dcase", *files) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    assert rows[0] == ["filename", "scene_label", *classes] and len(rows) == 3
    np.testing.assert_allclose([sum(map(float, r[2:])) for r in rows[1:]], 1, atol=1e-4)


def test_output_file(run_dir, clip_dir, tmp_path, capsys):
    out = tmp_path / "out" / "pred.tsv"
    assert cli("predict", "--run", str(run_dir), "--format", "dcase", "-o", str(out), str(clip_dir)) == 0
    assert capsys.readouterr().out == ""
    assert len(out.read_text().splitlines()) == 4


def test_folder_argument_predicts_every_audio_file_under_it(run_dir, clip_dir, tmp_path, capsys):
    root = tmp_path / "my recordings"
    (root / "sub dir" / "deeper").mkdir(parents=True)
    shutil.copy(clip_dir / "two.flac", root / "a.flac")
    shutil.copy(clip_dir / "short.ogg", root / "sub dir" / "B.OGG")
    shutil.copy(clip_dir / "street 3.4s.wav", root / "sub dir" / "deeper" / "c é.wav")
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden.wav").write_bytes(b"junk")
    assert cli("predict", "--run", str(run_dir), "--format", "json", str(root)) == 0
    names = [e["filename"] for e in json.loads(capsys.readouterr().out)]
    assert names == [str(root / "a.flac"), str(root / "sub dir" / "B.OGG"),
                     str(root / "sub dir" / "deeper" / "c é.wav")]


def test_ensemble_is_the_mean_of_its_members(run_dir, clip_dir):
    path = clip_dir / "street 3.4s.wav"
    ens = load(run_dir, ensemble=ensemble_named(run_dir, ["unpruned", "pruned_C1"]), backend="torch")
    assert ens.members == ["unpruned", "pruned_C1"]
    members = [load(run_dir, model=m, backend="torch").predict(path).per_second for m in ens.members]
    np.testing.assert_allclose(ens.predict(path).per_second, np.mean(members, axis=0), atol=1e-6)


def test_unknown_names_and_backends_are_one_line_errors(run_dir, clip_dir, capsys):
    for args, message in ((["--model", "nope"], "no network named 'nope'"),
                          (["--ensemble", "nope"], "no ensemble named 'nope'"),
                          (["--model", "vggish"], "no network named 'vggish'")):  # a baseline not fitted
        assert cli("predict", "--run", str(run_dir), *args, str(clip_dir)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(PredictError, match="unknown backend"):
        Predictor(run_dir, backend="cuda")


@needs_onnx
def test_onnx_agrees_with_torch_and_is_the_default(run_dir, clip_dir):
    path = clip_dir / "street 3.4s.wav"
    torch_p, onnx_p = load(run_dir, backend="torch"), load(run_dir, backend="onnx")
    assert onnx_p.name == torch_p.name and load(run_dir).backend == "onnx"
    np.testing.assert_allclose(onnx_p.predict(path).per_second, torch_p.predict(path).per_second, atol=1e-4)
    name = ensemble_named(run_dir, ["unpruned", "pruned_C1"])
    ens_t = load(run_dir, ensemble=name, backend="torch").predict(path).per_second
    ens_o = load(run_dir, ensemble=name, backend="onnx").predict(path).per_second
    np.testing.assert_allclose(ens_o, ens_t, atol=1e-4)


@needs_int8
def test_tflite_int8_mostly_agrees_with_float(run_dir):
    files = [p for p, _ in real_clips(2, "test")]
    float_p, int8_p = load(run_dir, backend="torch"), load(run_dir, backend="tflite")
    assert int8_p.backend == "tflite"
    a = np.concatenate([r.per_second for r in float_p.predict_files(files)])
    b = np.concatenate([r.per_second for r in int8_p.predict_files(files)])
    assert len(a) >= 80 and (a.argmax(1) == b.argmax(1)).mean() >= 0.7
    # An INT8 network named directly runs its TFLite file; an ensemble's members through the backend asked for.
    assert load(run_dir, model="unpruned_int8").backend == "tflite"
    ens = load(run_dir, ensemble=ensemble_named(run_dir, ["unpruned", "pruned_C1"]), backend="tflite")
    assert ens.backend == "tflite" and len(ens.classifier.members) == 2
    with pytest.raises(PredictError, match="INT8 network"):
        load(run_dir, model="unpruned_int8", backend="torch")


@needs_int8
def test_backend_flag_on_the_command_line(run_dir, clip_dir, capsys):
    scenes = {}
    for backend in ("torch", "onnx", "tflite"):
        assert cli("predict", "--run", str(run_dir), "--backend", backend, "--format", "json",
                   str(clip_dir / "two.flac")) == 0
        scenes[backend] = json.loads(capsys.readouterr().out)[0]["probabilities"]
    assert max(abs(scenes["torch"][k] - scenes["onnx"][k]) for k in scenes["torch"]) < 1e-4
    # tflite runs the INT8 file: a distribution over the same classes, close to the float network's but not
    # equal to it (equal would mean the float network ran instead).
    assert set(scenes["tflite"]) == set(scenes["torch"]) and abs(sum(scenes["tflite"].values()) - 1) < 1e-5
    int8_diff = max(abs(scenes["torch"][k] - scenes["tflite"][k]) for k in scenes["torch"])
    assert 0 < int8_diff < 0.15


@needs_onnx
def test_missing_exported_file_says_how_to_make_it(run_dir, clip_dir, tmp_path, capsys):
    copy = tmp_path / "run copy"
    shutil.copytree(run_dir, copy)
    for f in copy.glob("models/*/model*.onnx"):
        f.unlink()
    for f in copy.glob("models/*/model_int8.tflite"):
        f.unlink()
    assert load(copy).backend == "torch"  # auto falls back to PyTorch
    for backend in ("onnx", "tflite"):
        assert cli("predict", "--run", str(copy), "--backend", backend, str(clip_dir)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"lcasc quantize --run {copy}" in err and "Traceback" not in err


@needs_onnx
def test_auto_backend_ignores_an_onnx_file_older_than_its_model(run_dir, tmp_path):
    copy = tmp_path / "run copy"
    shutil.copytree(run_dir, copy)
    name = load(copy).name
    pt = copy / "models" / name / "model.pt"
    onnx = copy / "models" / name / "model.onnx"
    os.utime(onnx, ns=(pt.stat().st_mtime_ns - 10**9, pt.stat().st_mtime_ns - 10**9))
    assert load(copy).backend == "torch"


def test_silence_flag_uses_the_runs_silence_level(run_dir, tmp_path):
    """A file is flagged silent against the level the run left out of training (config.yaml's silence_db)."""
    import yaml

    quiet = np.random.default_rng(1).normal(0, 10 ** (-45 / 20), 44100 * 2).astype(np.float32)  # ≈ -45 dBFS
    assert not load(run_dir, backend="torch").predict(quiet, 44100).silent  # the default run: -60 dBFS
    copy = tmp_path / "run copy"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    for level, silent in ((-30.0, True), (None, False)):
        config["silence_db"] = level
        (copy / "config.yaml").write_text(yaml.safe_dump(config))
        assert load(copy, backend="torch").predict(quiet, 44100).silent is silent
