"""Freed heap memory goes back to the kernel during long work (lcasc.allocator), and training asks for it."""

import os

import numpy as np
import pytest

from lcasc import allocator, train
from lcasc.models.cnn import LowComplexityCNN
from lcasc.train import TrainConfig, fit
from tests.conftest import synthetic_logmel


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_release_freed_memory_returns_the_heaps_free_holes():
    if allocator._glibc() is None:
        pytest.skip("the C library is not glibc")
    blocks = [np.ones(16_384, np.float32) for _ in range(4_000)]  # 64 kB each: from the heap, ~262 MB in all
    pin = np.ones(16_384, np.float32)  # allocated after them: the heap cannot shrink past it from its top
    del blocks  # ~262 MB free, but inside the heap: still resident
    held = _resident_bytes()
    assert allocator.release_freed_memory()
    returned = held - _resident_bytes()
    assert returned > 128e6, f"only {returned / 1e6:.0f} MB of ~262 MB freed handed back"
    assert pin.sum() == 16_384


def test_training_releases_freed_memory_every_few_batches_and_after_validation(tmp_path, monkeypatch):
    """Every RELEASE_EVERY batches of training and of validation, and after each validation (the features'
    mapped pages: with the training batches and after validation)."""
    calls = []
    mapped = []
    monkeypatch.setattr(train, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(train, "release_mapped_pages", lambda *arrays: mapped.append(arrays))
    X, y = synthetic_logmel(8 * 2 * train.RELEASE_EVERY, seed=0)  # batches of 8: two releases' worth per epoch
    Xv, yv = synthetic_logmel(train.INFERENCE_BATCH * train.RELEASE_EVERY, seed=1)  # one release's worth
    fit(LowComplexityCNN(), X, y, Xv, yv, TrainConfig(max_epochs=2, patience=10, batch_size=8, progress=False,
                                                    threads=1),
        tmp_path)
    assert len(calls) == 2 * (2 + 1 + 1)  # per epoch: two during training, one during and one after validation
    assert len(mapped) == 2 * (2 + 1) and all(a[0] is X and a[1] is Xv for a in mapped)


def test_read_pages_of_a_read_only_feature_map_leave_the_resident_set(tmp_path):
    """A training touches every page of its memory-mapped features each epoch; releasing them takes them out of
    the process's resident memory, the values stay readable, and a copy-on-write map (which may hold writes)
    is left alone."""
    path = tmp_path / "X.npy"
    np.save(path, np.arange(16_000_000, dtype=np.float32).reshape(-1, 40, 50))  # 64 MB
    X = np.load(path, mmap_mode="r")[100:]  # a split: a view of the map, as FeatureSet.subset gives
    before = _resident_bytes()
    total = float(X.sum(dtype=np.float64))  # reads every page
    held = _resident_bytes() - before
    assert held > 48e6
    assert allocator.release_mapped_pages(X, X[:10]) == 1  # one map, released once
    assert _resident_bytes() - before < held - 48e6
    assert float(X.sum(dtype=np.float64)) == total
    written = np.load(path, mmap_mode="c")
    written[0] = -1  # a copy-on-write map with a row written in this process: never released
    assert allocator.release_mapped_pages(written, np.ones(3)) == 0
    assert written[0, 0, 0] == -1
