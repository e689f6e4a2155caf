import numpy as np
import pytest
import torch

from lcasc.data import default_dataset
from lcasc.features import extract
from lcasc.models.cnn import CNNClassifier, CNNSpec, LowComplexityCNN
from lcasc.train import TrainConfig, fit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """256 training and 128 validation segments of the embedded data (its features computed once)."""
    fs, _ = extract(default_dataset(), cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    fs = fs.select(fs.level_db > -60)
    tr, va = fs.subset("train"), fs.subset("validate")
    return tr.X[:256], tr.y[:256], va.X[:128], va.y[:128]


def _weights(net):
    return torch.cat([p.detach().flatten() for p in net.state_dict().values() if p.dtype.is_floating_point])


def _net(seed=0):
    torch.manual_seed(seed)
    return LowComplexityCNN()


def test_resumed_training_equals_uninterrupted_training(tmp_path, data):
    X, y, Xv, yv = data
    cfg = dict(patience=100, seed=3, progress=False)
    straight, hist = fit(_net(), X, y, Xv, yv, TrainConfig(max_epochs=4, **cfg), tmp_path / "a")
    fit(_net(), X, y, Xv, yv, TrainConfig(max_epochs=2, **cfg), tmp_path / "b")  # "interrupted" after 2 epochs
    torch.manual_seed(123)  # whatever the process did meanwhile must not matter
    # the resumed process starts from a freshly built network: the checkpoint restores everything
    resumed, hist_b = fit(_net(99), X, y, Xv, yv, TrainConfig(max_epochs=4, **cfg), tmp_path / "b")
    assert [h["epoch"] for h in hist_b] == [0, 1, 2, 3]
    assert hist == hist_b
    torch.testing.assert_close(_weights(straight), _weights(resumed), rtol=0, atol=0)
    assert (tmp_path / "b" / "train_log.csv").read_text().count("\n") == 5


def test_keeps_the_checkpoint_with_lowest_validation_log_loss(tmp_path, data):
    X, y, Xv, yv = data
    config = TrainConfig(max_epochs=6, patience=100, progress=False)
    clf = CNNClassifier([str(i) for i in range(10)], train_config=config, workdir=tmp_path)
    clf.fit(X, y, Xv, yv)
    best = min(clf.history, key=lambda h: h["val_log_loss"])
    p = clf.predict_proba(Xv)
    loss = -np.mean(np.log(p[np.arange(len(yv)), yv]))
    assert abs(loss - best["val_log_loss"]) < 1e-4
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_early_stopping_stops_before_max_epochs(tmp_path, data):
    X, y, Xv, yv = data
    _, hist = fit(LowComplexityCNN(), X, y, Xv, yv, TrainConfig(max_epochs=200, patience=2, lr=0.05,
                                                                progress=False), tmp_path)
    assert len(hist) < 200


def test_saved_model_round_trips_with_classes_and_spec(tmp_path):
    spec = CNNSpec.from_widths("8-12-20-50", n_classes=3, activations="RRRR", kernel_size=5)
    clf = CNNClassifier(["a", "b", "c"], net=LowComplexityCNN.from_spec(spec))
    clf.save(tmp_path)
    back = CNNClassifier.load(tmp_path)
    assert back.classes == ["a", "b", "c"] and back.spec.to_dict() == spec.to_dict()
    X = np.random.default_rng(0).normal(size=(4, 40, 51)).astype(np.float32)
    np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), atol=1e-6)
