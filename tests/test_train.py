import numpy as np
import pytest
import torch

from lcasc.data import default_dataset
from lcasc.features import extract
from lcasc.models.cnn import CNNClassifier, CNNSpec, LowComplexityCNN
from lcasc.train import COMPILE_MIN_SEGMENTS, TrainConfig, fit, processes, share


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


@pytest.mark.parametrize("processes", [1, 2])
def test_resumed_training_equals_uninterrupted_training(tmp_path, data, processes):
    """In one process, and data-parallel in two (193 segments: the last batch has one, so one process computes
    a stand-in row of weight 0)."""
    X, y, Xv, yv = data
    if processes > 1:
        X, y = X[:193], y[:193]
    cfg = dict(patience=100, seed=3, progress=False, processes=processes)
    straight, hist = fit(_net(), X, y, Xv, yv, TrainConfig(max_epochs=4, **cfg), tmp_path / "a")
    fit(_net(), X, y, Xv, yv, TrainConfig(max_epochs=2, **cfg), tmp_path / "b")  # "interrupted" after 2 epochs
    torch.manual_seed(123)  # whatever the process did meanwhile must not matter
    # the resumed process starts from a freshly built network: the checkpoint restores everything
    resumed, hist_b = fit(_net(99), X, y, Xv, yv, TrainConfig(max_epochs=4, **cfg), tmp_path / "b")
    assert [h["epoch"] for h in hist_b] == [0, 1, 2, 3]
    assert hist == hist_b
    torch.testing.assert_close(_weights(straight), _weights(resumed), rtol=0, atol=0)
    assert (tmp_path / "b" / "train_log.csv").read_text().count("\n") == 5


@pytest.mark.parametrize("processes", [1, 2])
def test_keeps_the_checkpoint_with_lowest_validation_log_loss(tmp_path, data, processes):
    """The validation log-loss and accuracy of the kept network, as the training logged them, are those of the
    returned network on the validation set: also when two processes each validated their share of it."""
    X, y, Xv, yv = data
    Xv, yv = Xv[:113], yv[:113]  # the last validation batch uneven between two processes
    config = TrainConfig(max_epochs=6, patience=100, progress=False, processes=processes)
    clf = CNNClassifier([str(i) for i in range(10)], train_config=config, workdir=tmp_path)
    clf.fit(X, y, Xv, yv)
    assert [h["epoch"] for h in clf.history] == list(range(6))
    best = min(clf.history, key=lambda h: h["val_log_loss"])
    p = clf.predict_proba(Xv)
    loss = -np.mean(np.log(p[np.arange(len(yv)), yv]))
    assert abs(loss - best["val_log_loss"]) < 1e-5
    assert abs(np.mean(p.argmax(1) == yv) - best["val_accuracy"]) < 1e-6
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_data_parallel_training_is_asked_for_or_one_process_per_cpu_for_large_sets(monkeypatch):
    import lcasc.train

    monkeypatch.setattr(lcasc.train, "cpu_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert processes(TrainConfig(), 10**6) == 1  # asked for, not the default (results equal in distribution only)
    auto = TrainConfig(processes=None)
    assert processes(auto, COMPILE_MIN_SEGMENTS) == 3  # one per CPU the process may use
    assert processes(auto, COMPILE_MIN_SEGMENTS - 1) == 1  # small sets: not worth the processes' start
    assert processes(TrainConfig(processes=None, threads=1), 10**6) == 1  # fine-tuning jobs, side by side already
    assert processes(TrainConfig(processes=2, threads=1), 10**6) == 1  # (whatever --train-processes said)
    assert processes(TrainConfig(processes=2), 10) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert processes(auto, 10**6) == 1  # a GPU trains in this process


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [64, 63, 5, 2, 1])
def test_the_processes_shares_of_a_batch_average_to_its_mean_loss(world, n):
    """DDP averages the processes' gradients: their weighted mean losses must average to the batch's mean loss,
    every row computed by exactly one process (a stand-in row, weight 0, where a share would be empty)."""
    losses = np.random.default_rng(n).random(n)
    shares = [share(n, r, world) for r in range(world)]
    assert sum(w * losses[a:b].mean() for a, b, w in shares) / world == pytest.approx(losses.mean(), rel=1e-12)
    real = [range(a, b) for a, b, w in shares if w > 0]
    assert sorted(i for r in real for i in r) == list(range(n))
    assert all(b > a for a, b, _ in shares)


@pytest.mark.parametrize("processes", [1, 2])
def test_early_stopping_stops_before_max_epochs(tmp_path, data, processes):
    X, y, Xv, yv = data
    _, hist = fit(LowComplexityCNN(), X, y, Xv, yv, TrainConfig(max_epochs=200, patience=2, lr=0.05,
                                                                progress=False, processes=processes), tmp_path)
    assert len(hist) < 200 and [h["epoch"] for h in hist] == list(range(len(hist)))
    # every epoch trained is in the history returned, as in the log (also when other processes trained it)
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 1 + len(hist)
    assert len(hist) > 2 + min(range(len(hist)), key=lambda i: hist[i]["val_log_loss"])


def test_saved_model_round_trips_with_classes_and_spec(tmp_path):
    spec = CNNSpec.from_widths("8-12-20-50", n_classes=3, activations="RRRR", kernel_size=5)
    clf = CNNClassifier(["a", "b", "c"], net=LowComplexityCNN.from_spec(spec))
    clf.save(tmp_path)
    back = CNNClassifier.load(tmp_path)
    assert back.classes == ["a", "b", "c"] and back.spec.to_dict() == spec.to_dict()
    X = np.random.default_rng(0).normal(size=(4, 40, 51)).astype(np.float32)
    np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), atol=1e-6)
