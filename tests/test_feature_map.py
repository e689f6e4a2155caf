"""Features at scale: one memory-mapped file per feature set, splits and worker processes read it without a
copy, chunks cut by seconds of audio so that a new file recomputes its own chunk only."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from lcasc.data import load_dataset
from lcasc.features import MappedRows, extract, opened
from lcasc.run import Run, RunConfig

from .conftest import make_csv_dataset, make_tau22


def _mapped_file(a: np.ndarray) -> str | None:
    while a is not None and not isinstance(a, np.memmap):
        a = a.base
    return str(a.filename) if a is not None else None


def test_splits_are_views_of_one_mapped_file_and_workers_get_a_reference(tmp_path):
    run = Run(tmp_path / "run", RunConfig(dataset=str(make_tau22(tmp_path / "tau")), silence_db=None,
                                          validation="evaluate"), progress=False)
    fs = run.features()
    tr, va, te = run.split("train"), run.split("validate"), run.split("test")
    assert _mapped_file(fs.X) is not None and _mapped_file(fs.X) == _mapped_file(tr.X) == _mapped_file(va.X)
    for part in (tr, va, te):
        assert np.shares_memory(part.X, fs.X)  # a view: no copy per split request
    assert np.shares_memory(te.X, va.X) and len(te) == len(va)  # paper protocol: validation = test list
    assert len(tr) + len(va) == len(fs) == 36 and len(tr) == 12
    # What a fine-tuning or study worker receives: a few bytes, not the features; it maps the file itself.
    ref = tr.shareable_X()
    assert isinstance(ref, MappedRows) and len(pickle.dumps(ref)) < 500 < tr.X.nbytes
    (X,) = opened([pickle.loads(pickle.dumps(ref))])
    assert _mapped_file(X) == _mapped_file(fs.X)
    np.testing.assert_array_equal(X, tr.X)
    with pytest.raises(ValueError, match="read-only"):  # a worker only reads (and hands read pages back)
        X[0] = 0
    assert np.array_equal(opened([ref])[0][0], tr.X[0])
    # The same features as computing them in memory, split by split, in recording order.
    again, _ = extract(run.dataset, cache_dir=tmp_path / "fresh", progress=False)
    for split in ("train", "validate"):
        np.testing.assert_array_equal(again.subset(split).X, run.split(split).X)
        assert np.all(np.diff(run.split(split).recording) >= 0)


def test_silent_segments_are_left_out_of_the_file_and_counted(tmp_path):
    ds = load_dataset(None)  # the embedded ESC-10 (its clips are padded with digital silence)
    loud, _ = extract(ds, cache_dir=tmp_path, progress=False, silence_db=-60.0)
    every, _ = extract(ds, cache_dir=tmp_path, progress=False)
    assert loud.silent_dropped == int((every.level_db < -60).sum()) > 0 and every.silent_dropped == 0
    assert len(loud) == len(every) - loud.silent_dropped
    np.testing.assert_array_equal(loud.X, every.select(every.level_db >= -60).X)
    assert loud.file != every.file  # each feature set has its own file


def test_a_new_file_recomputes_only_its_own_chunk(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "ds", per_class=2)
    cache = tmp_path / "cache"
    ds = load_dataset(str(csv_path))
    first, _ = extract(ds, cache_dir=cache, progress=False, chunk_seconds=8.0)
    chunks = {p.name: p.stat().st_mtime_ns for p in cache.glob("logmel-*.npz")}
    assert len(chunks) >= 4  # several chunks, cut by seconds of audio
    # one more recording (a copy of a real one under a new name), in the middle of the sorted order
    rows = csv_path.read_text().splitlines()
    src = rows[1].split(",")[0]
    shutil.copy(src, tmp_path / "ds" / "extra.ogg")
    csv_path.write_text("\n".join([*rows, f"{tmp_path / 'ds' / 'extra.ogg'},{rows[1].split(',')[1]},train"]) + "\n")
    more, _ = extract(load_dataset(str(csv_path)), cache_dir=cache, progress=False, chunk_seconds=8.0)
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("logmel-*.npz")}
    assert len(set(after) - set(chunks)) == 1  # one new chunk; every other chunk reused untouched
    assert all(after[name] == mtime for name, mtime in chunks.items())
    assert len(more) > len(first) and more.file != first.file


def test_tau22_test_and_validation_clips_are_evaluated_once(tmp_path):
    from lcasc.models.cnn import CNNClassifier, LowComplexityCNN
    from lcasc.stages.evaluate import evaluate_classifier

    run = Run(tmp_path / "run", RunConfig(dataset=str(make_tau22(tmp_path / "tau")), silence_db=None,
                                          validation="evaluate"), progress=False)
    clf = CNNClassifier(run.classes, spec=run.config.spec(len(run.classes)))
    clf.net = LowComplexityCNN.from_spec(clf.spec)
    seen = []

    class Counting:  # the real classifier, with the rows it is asked about counted
        def predict_proba(self, X):
            seen.append(len(X))
            return clf.predict_proba(X)

    entry = evaluate_classifier(run, Counting(), "random_init", figure=False)
    assert seen == [len(run.split("test"))]  # one pass over the 24 evaluate clips, not two (paper protocol)
    assert entry["accuracy"] == entry["validation"]["accuracy"]



def test_tau22_pruned_networks_before_fine_tuning_run_each_clip_once(tmp_path, monkeypatch):
    """The prune stage scores each pruned network before fine-tuning on test and validation: one pass over
    TAU22's evaluate clips, not two (at full size a pass is 29,680 clips per network)."""
    from lcasc.models.cnn import CNNClassifier, LowComplexityCNN
    from lcasc.names import UNPRUNED
    from lcasc.stages import prune

    run = Run(tmp_path / "run", RunConfig(dataset=str(make_tau22(tmp_path / "tau")), silence_db=None,
                                          validation="evaluate"), progress=False)
    clf = CNNClassifier(run.classes, spec=run.config.spec(len(run.classes)))
    clf.net = LowComplexityCNN.from_spec(clf.spec)
    clf.save(run.model_dir(UNPRUNED))
    seen = []
    real = CNNClassifier.predict_proba
    monkeypatch.setattr(CNNClassifier, "predict_proba", lambda self, X: seen.append(len(X)) or real(self, X))

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(prune, "finetune_all", stop)  # the scores before fine-tuning are what is counted
    with pytest.raises(Stop):
        prune.run(run, max_epochs=1)
    assert seen == [len(run.split("test"))] * 7  # six pruned networks and the unpruned control, once each

def test_holdout_protocol_splits_are_views_too(tmp_path):
    run = Run(tmp_path / "run", RunConfig(dataset=str(make_tau22(tmp_path / "tau")), silence_db=None),
              progress=False)
    fs = run.features()
    parts = [run.split(s) for s in ("train", "validate", "test")]
    assert all(np.shares_memory(p.X, fs.X) for p in parts) and sum(map(len, parts)) == len(fs)
    assert not np.shares_memory(parts[1].X, parts[2].X)  # validation held out of fold1_train, test apart
