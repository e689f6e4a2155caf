"""Saved baselines and the fused ensemble's saved plan load back to the same probabilities, and files that
do not fit (another version, other classes, another plan) are refused with a message naming the file."""

from __future__ import annotations

import copy

import joblib
import numpy as np
import pytest
import torch

from lcasc import fused as F
from lcasc import saved_models
from lcasc import similarity as S
from lcasc.models.baselines import GMMClassifier
from lcasc.models.cnn import CNNClassifier, CNNSpec, LowComplexityCNN
from lcasc.models.vggish import VGGish, VGGishClassifier, _Standardized
from lcasc.saved_models import SavedModelError

from .conftest import synthetic_logmel

CLASSES = [f"scene{i}" for i in range(10)]


def test_vggish_checkpoint_loads_to_the_same_probabilities(tmp_path):
    Xv, _ = synthetic_logmel(4, seed=1)
    torch.manual_seed(0)  # a fitted VGGish is its standardised network (training is test_baselines' subject)
    clf = VGGishClassifier(CLASSES, original_pools=True)
    clf.model_ = _Standardized(VGGish(len(CLASSES), original_pools=True), -8.0, 3.0).eval()
    folder = tmp_path / "models" / "vggish"
    assert saved_models.save_baseline(folder, "vggish", clf) == folder / "model.pt"
    loaded = saved_models.load_baseline(folder, "vggish", CLASSES)
    assert loaded.original_pools and float(loaded.model_.mean) == -8.0 and float(loaded.model_.std) == 3.0
    np.testing.assert_allclose(loaded.predict_proba(Xv), clf.predict_proba(Xv), atol=1e-6)
    with pytest.raises(SavedModelError, match=r"model\.pt: classes"):
        saved_models.load_baseline(folder, "vggish", CLASSES[::-1])


def test_sklearn_baseline_round_trip_and_refusals(tmp_path):
    X, y = synthetic_logmel(60, seed=2)
    clf = GMMClassifier(CLASSES, n_components_grid=(1, 2)).fit(X[:40], y[:40], X[40:], y[40:])
    folder = tmp_path / "gmm"
    path = saved_models.save_baseline(folder, "gmm", clf)
    assert np.array_equal(saved_models.load_baseline(folder, "gmm", CLASSES).predict_proba(X), clf.predict_proba(X))
    saved = joblib.load(path)
    joblib.dump({**saved, "lcasc_version": "0.0.1"}, path)
    with pytest.raises(SavedModelError, match=r"gmm/baseline\.joblib was written with lcasc 0\.0\.1.*--refit"):
        saved_models.load_baseline(folder, "gmm", CLASSES)
    with pytest.raises(SavedModelError, match=r"rf/baseline\.joblib: no saved rf baseline.*--only rf --refit"):
        saved_models.load_baseline(tmp_path / "rf", "rf", CLASSES)


def test_fused_ensemble_is_rebuilt_from_its_plan_without_the_validation_clips(tmp_path):
    torch.manual_seed(0)
    base = LowComplexityCNN.from_spec(CNNSpec()).eval()
    other = copy.deepcopy(base)
    with torch.no_grad():  # same C1 and C2, another C3: the first two layers are shared, C3 is not
        other.conv3.weight.add_(0.1 * torch.randn_like(other.conv3.weight))
    nets = {"a": base, "b": other}
    X, _ = synthetic_logmel(64, seed=3)
    kept = {n: S.kept_from_removed(base.spec, {}) for n in nets}
    mse = {layer: S.feature_map_mse(nets, X, layer, 64, {n: kept[n][layer] for n in nets}) for layer in S.LAYERS}
    module = F.build_fused(nets, kept, mse, 1e-4)
    sharing = module.sharing()
    assert sharing["C2"]["distinct_maps"] == 16 and sharing["C3"]["distinct_maps"] == 64  # something to replay
    models = tmp_path / "models"
    for name, net in nets.items():
        CNNClassifier(CLASSES, net=net).save(models / name)
    saved_models.save_fused_plan(models / "ensemble_fused", module)
    rebuilt = saved_models.load_fused(models / "ensemble_fused", models)
    assert rebuilt.sharing() == sharing
    assert np.array_equal(rebuilt.predict_proba(X), module.predict_proba(X))
    CNNClassifier(CLASSES, net=LowComplexityCNN.from_spec(CNNSpec(c3=16))).save(models / "b")  # another member
    with pytest.raises(SavedModelError, match=r"fused_plan\.json: does not fit"):
        saved_models.load_fused(models / "ensemble_fused", models)
