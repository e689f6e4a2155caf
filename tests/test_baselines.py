"""Baselines of paper section 4: GMM, random forest, MLP, DLSI and VGGish behind the classifier interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcasc.classifier import Classifier, predict
from lcasc.complexity import count
from lcasc.models.baselines import DLSIClassifier, GMMClassifier, MLPBaseline, RandomForestBaseline
from lcasc.models.vggish import VGGish, VGGishClassifier, load_vggish_weights

CLASSES = ["airport", "bus", "park", "metro"]
PROFILES = np.cumsum(np.random.default_rng(123).normal(size=(4, 40)), axis=1)  # a spectral shape per class


def spectral_data(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 40, 51) float32 log-mel-like clips: class profile + per-clip gain + heavy time-frequency noise."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(4), n_per_class))
    X = PROFILES[y][:, :, None] + rng.normal(0, 0.5, (len(y), 1, 1)) + rng.normal(0, 3, (len(y), 40, 51))
    return X.astype(np.float32), y


def subspace_data(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class: sparse combinations (2 of 5) of its own random unit atoms; atoms disjoint across classes."""
    atoms = np.random.default_rng(7).normal(size=(4, 40, 5))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(4), n_per_class))
    codes = np.zeros((len(y), 5))
    for i in range(len(y)):
        codes[i, rng.choice(5, 2, replace=False)] = rng.normal(0, 3, 2)
    V = np.einsum("nda,na->nd", atoms[y], codes) + rng.normal(0, 0.05, (len(y), 40))
    return (V[:, :, None] + rng.normal(0, 0.1, (len(y), 40, 51))).astype(np.float32), y


def small(cls):
    """Fast settings of each baseline for the tests."""
    return {
        GMMClassifier: lambda: GMMClassifier(CLASSES, n_components_grid=(1, 2)),
        RandomForestBaseline: lambda: RandomForestBaseline(CLASSES, depth_grid=(2, 8), n_estimators=20, n_jobs=1),
        MLPBaseline: lambda: MLPBaseline(CLASSES, max_iter=60),
        DLSIClassifier: lambda: DLSIClassifier(CLASSES, atoms_grid=(3, 5), n_iter=5),
    }[cls]()


BASELINES = [GMMClassifier, RandomForestBaseline, MLPBaseline, DLSIClassifier]


@pytest.fixture(scope="module")
def data():
    return spectral_data(30, 0), spectral_data(15, 1), spectral_data(20, 2)


@pytest.mark.parametrize("cls", BASELINES)
def test_baseline_learns_and_selects_on_validation(cls, data):
    (X, y), (Xv, yv), (Xt, yt) = data
    clf = small(cls)
    assert isinstance(clf, Classifier)
    assert clf.fit(X, y, Xv, yv) is clf
    np.testing.assert_array_equal(clf.classes_, np.arange(4))
    P = clf.predict_proba(Xt)
    assert P.shape == (len(Xt), 4)
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-6)
    assert (predict(clf, Xt) == yt).mean() > 0.8  # chance is 0.25
    (name, value), = clf.best_params_.items()
    if cls is MLPBaseline:  # early stopping: the chosen epoch is the best validation epoch
        assert name == "epochs" and value == min(clf.grid_scores_, key=clf.grid_scores_.get)
    else:
        grid = getattr(clf, clf._grid_param)
        assert list(clf.grid_scores_) == list(grid)
        assert value in grid and value == min(clf.grid_scores_, key=clf.grid_scores_.get)


@pytest.mark.parametrize("cls", [GMMClassifier, RandomForestBaseline, DLSIClassifier])
def test_without_validation_the_first_grid_value_is_used(cls, data):
    (X, y), _, _ = data
    clf = small(cls).fit(X, y)
    assert list(clf.best_params_.values()) == [getattr(clf, clf._grid_param)[0]] and clf.grid_scores_ == {}


@pytest.mark.parametrize("cls", [RandomForestBaseline, MLPBaseline])
def test_a_class_missing_in_training_still_has_a_column(cls, data):
    (X, y), (Xv, yv), _ = data
    keep, keep_v = y != 3, yv != 3
    P = small(cls).fit(X[keep], y[keep], Xv[keep_v], yv[keep_v]).predict_proba(X[:5])
    assert P.shape == (5, 4)
    if cls is MLPBaseline:  # it has an output unit for every class; the untrained one is pushed down
        assert P[:, 3].max() < 0.1
    else:
        np.testing.assert_allclose(P[:, 3], 0)


def test_gmm_fits_a_class_with_a_single_training_vector(data):
    (X, y), _, (Xt, _) = data
    keep = np.concatenate([np.flatnonzero(y == 0)[:1], np.flatnonzero(y != 0)])
    with pytest.warns(UserWarning, match="'airport' has only 1 training vectors; using 1 components"):
        clf = GMMClassifier(CLASSES, n_components_grid=(2,)).fit(X[keep], y[keep])
    assert predict(clf, X[keep][:1])[0] == 0  # its own vector is most likely under its own Gaussian
    assert np.isfinite(clf.predict_proba(Xt)).all()


def test_gmm_caps_components_on_tiny_classes(data):
    (X, y), _, _ = data
    keep = np.concatenate([np.flatnonzero(y == 0)[:3], np.flatnonzero(y != 0)])
    with pytest.warns(UserWarning, match="'airport' has only 3 training vectors; using 3 components"):
        clf = GMMClassifier(CLASSES, n_components_grid=(5,)).fit(X[keep], y[keep])
    _, mixtures = clf.model_
    assert [m.n_components for m in mixtures] == [3, 5, 5, 5]
    assert np.isfinite(clf.log_likelihoods(X[:4])).all()


def test_dlsi_separates_disjoint_dictionaries():
    (X, y), (Xv, yv), (Xt, yt) = subspace_data(40, 0), subspace_data(10, 1), subspace_data(25, 2)
    clf = DLSIClassifier(CLASSES, atoms_grid=(5,), n_iter=8).fit(X, y, Xv, yv)
    assert (predict(clf, Xt) == yt).mean() > 0.9
    np.testing.assert_array_equal(clf.residuals(Xt).argmin(axis=1), predict(clf, Xt))  # smallest residual wins


def test_dlsi_moves_nearly_identical_atoms_to_the_shared_dictionary():
    e = np.eye(40)
    dicts = [e[:, [0, 1]].copy(), np.stack([-e[:, 0], e[:, 2]], 1), e[:, [3]].copy()]
    own, shared = DLSIClassifier(CLASSES[:3])._split_shared(dicts)
    np.testing.assert_allclose(np.abs(shared[:, 0]), e[:, 0])  # the sign-aligned pair, once
    assert [D.shape[1] for D in own] == [1, 1, 1]
    np.testing.assert_array_equal(own[0][:, 0], e[:, 1])


def test_vggish_complexity_matches_method_notes():
    c = count(VGGish(10), (1, 1, 40, 51))
    # Written out from the published VGGish: six 3x3 convolutions 1-64-128-256-256-512-512 (weights + biases),
    # then our head 512 -> 128 -> 10 classes; METHOD-NOTES: "about 4.5 M".
    convs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    head = (512 * 128 + 128) + (128 * 10 + 10)
    assert c.params == sum(9 * i * o + o for i, o in convs) + head
    assert abs(c.macs - 1_077e6) / 1_077e6 < 0.01  # METHOD-NOTES: 1,077 M MACs


def port_state(model: VGGish) -> dict[str, torch.Tensor]:
    """A state dict with the key names of harritaylor/torchvggish: features.* convs plus its embeddings."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items() if k.startswith("features.")}
    state["embeddings.0.weight"] = torch.randn(16, 12)  # the port's 4096-wide layers: ignored
    return state


def test_vggish_loads_the_ports_conv_weights_exactly(tmp_path):
    model = VGGish(4)
    state, path = port_state(model), tmp_path / "vggish-port.pth"
    torch.save(state, path)
    head = model.classifier[0].weight.detach().clone()
    loaded = load_vggish_weights(model, path)
    assert loaded == [f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")]
    for key in loaded:
        torch.testing.assert_close(model.state_dict()[key], state[key], rtol=0, atol=0)
    torch.testing.assert_close(model.classifier[0].weight, head, rtol=0, atol=0)


def test_vggish_weight_mismatch_names_file_and_key(tmp_path):
    model = VGGish(4)
    state, path = port_state(model), tmp_path / "wrong.pth"
    state["features.6.weight"] = torch.zeros(256, 64, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"wrong\.pth.*features\.6\.weight"):
        load_vggish_weights(model, path)
    del state["features.13.bias"]
    state["features.6.weight"] = torch.zeros(256, 128, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"wrong\.pth.*features\.13\.bias"):
        load_vggish_weights(model, path)


def test_vggish_classifier_trains_briefly(tmp_path):
    (X, y), (Xv, yv) = spectral_data(3, 0), spectral_data(1, 1)
    path = tmp_path / "vggish.pth"
    torch.save(port_state(VGGish(4)), path)
    clf = VGGishClassifier(CLASSES, weights_path=path, max_epochs=2, batch_size=6)
    assert isinstance(clf, Classifier) and clf.pretrained
    assert not VGGishClassifier(CLASSES).pretrained
    P = clf.fit(X, y, Xv, yv).predict_proba(Xv)
    assert P.shape == (4, 4)
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-6)
    assert [h[0] for h in clf.history_] == [1, 2] and all(np.isfinite(h[2]) for h in clf.history_)


def test_vggish_refit_with_other_weights_starts_over_instead_of_resuming(tmp_path):
    """A second fit in the same workdir with other settings (here: published weights) must train from those
    weights, not resume the first fit's checkpoint under the new label."""
    (X, y), (Xv, yv) = spectral_data(3, 0), spectral_data(1, 1)
    path, work = tmp_path / "vggish.pth", tmp_path / "work"
    state = port_state(VGGish(4))
    torch.save(state, path)
    first = VGGishClassifier(CLASSES, max_epochs=2, batch_size=6, workdir=work).fit(X, y, Xv, yv)
    assert (work / "last.ckpt").is_file()
    second = VGGishClassifier(CLASSES, weights_path=path, max_epochs=2, batch_size=6, workdir=work).fit(X, y, Xv, yv)
    port = state["features.0.weight"]
    # Four Adam steps at lr 1e-3 move weights of size ~1 by < 0.01: the second fit started from the port's.
    torch.testing.assert_close(second.model_.net.features[0].weight.detach(), port, atol=0.02, rtol=0)
    assert (first.model_.net.features[0].weight.detach() - port).abs().max() > 0.5


def _cnn():
    from lcasc.models.cnn import CNNClassifier, CNNSpec
    from lcasc.train import TrainConfig

    return CNNClassifier(CLASSES, spec=CNNSpec(n_classes=4),
                         train_config=TrainConfig(max_epochs=2, patience=2, batch_size=16, progress=False))


def _ensemble():
    from lcasc.classifier import EnsembleClassifier

    return EnsembleClassifier([_cnn(), small(GMMClassifier)], ["cnn", "gmm"])


EVERY_CLASSIFIER = {
    "gmm": lambda: small(GMMClassifier), "rf": lambda: small(RandomForestBaseline),
    "mlp": lambda: small(MLPBaseline), "dlsi": lambda: small(DLSIClassifier),
    "vggish": lambda: VGGishClassifier(CLASSES, max_epochs=1, batch_size=16), "cnn": _cnn, "ensemble": _ensemble,
}


@pytest.mark.parametrize("name", sorted(EVERY_CLASSIFIER))
def test_every_classifier_shares_one_interface(name, data, tmp_path, monkeypatch):
    """Evaluation, ensembling and reports call only this: fit(X, y, X_val, y_val) -> self, predict_proba(X)
    -> (N, n_classes) rows summing to 1, in the order of ``classes``."""
    import tempfile

    from lcasc import metrics

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where checkpoints go without a workdir
    (tmp_path / "tmp").mkdir()
    (X, y), (Xv, yv), (Xt, yt) = data
    if name == "vggish":  # about 1 GMAC per clip: a few clips show the interface
        X, y, Xv, yv, Xt, yt = X[:16], y[:16], Xv[:8], yv[:8], Xt[:8], yt[:8]
    clf = EVERY_CLASSIFIER[name]()
    assert isinstance(clf, Classifier) and list(clf.classes) == CLASSES
    assert clf.fit(X, y, Xv, yv) is clf
    assert not list((tmp_path / "tmp").glob("lcasc-*"))  # no checkpoint folder left behind (torch's caches may be)
    P = clf.predict_proba(Xt)
    assert P.shape == (len(Xt), len(CLASSES)) and np.isfinite(P).all() and (P >= 0).all()
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-5)
    scores = metrics.scores(P, yt, len(CLASSES))
    assert scores["accuracy"] == pytest.approx((predict(clf, Xt) == yt).mean())
