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
    calls = []
    monkeypatch.setattr(train, "release_freed_memory", lambda: calls.append(1))
    X, y = synthetic_logmel(8 * 2 * train.RELEASE_EVERY, seed=0)  # batches of 8: two releases' worth per epoch
    Xv, yv = synthetic_logmel(64, seed=1)
    fit(LowComplexityCNN(), X, y, Xv, yv, TrainConfig(max_epochs=2, patience=10, batch_size=8, progress=False,
                                                    threads=1),
        tmp_path)
    assert len(calls) == 2 * (2 + 1)  # per epoch: two during training, one after validation
