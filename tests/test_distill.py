"""Knowledge distillation: the loss against a hand computation, λ = 1 equal to plain training, teacher logits
files (round trip and every error a user can make), and a ``--recipe kd`` run on the embedded default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lcasc import distill
from lcasc.augment import Mix
from lcasc.models.cnn import CNNSpec, LowComplexityCNN
from lcasc.train import TrainConfig, fit
from tests.conftest import synthetic_logmel


def _hand_kd(s: np.ndarray, y: np.ndarray, t: np.ndarray, lam: float, tau: float) -> float:
    """λ·CE + (1 − λ)·τ²·KL(p_t ‖ p_s) with p = softmax(logits / τ), in float64, one example at a time."""
    total = 0.0
    for si, yi, ti in zip(s, y, t, strict=True):
        ce = -(si[yi] - math.log(sum(math.exp(v) for v in si)))
        ps = [math.exp(v / tau) for v in si]
        pt = [math.exp(v / tau) for v in ti]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        kl = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
        total += lam * ce + (1 - lam) * tau * tau * kl
    return total / len(s)


def test_kd_loss_equals_a_hand_computation():
    g = np.random.default_rng(0)
    s, t = g.normal(0, 2, (6, 4)), g.normal(0, 2, (6, 4))
    y = g.integers(0, 4, 6)
    for lam, tau in ((0.3, 2.0), (0.0, 1.0), (1.0, 3.0)):
        got = distill.kd_loss(torch.tensor(s), torch.tensor(y), torch.tensor(t), lam, tau).item()
        assert got == pytest.approx(_hand_kd(s, y, t, lam, tau), rel=1e-6)


def test_kd_loss_with_mixup_mixes_labels_and_teacher_distributions():
    g = np.random.default_rng(1)
    s, t = g.normal(0, 2, (4, 3)), g.normal(0, 2, (4, 3))
    y, perm, w = np.array([0, 1, 2, 1]), np.array([2, 0, 3, 1]), np.array([0.2, 0.9, 0.5, 0.7])
    got = distill.kd_loss(torch.tensor(s), torch.tensor(y), torch.tensor(t), 0.4, 2.0,
                          Mix(torch.tensor(perm), torch.tensor(w))).item()
    expected = 0.0
    for i in range(4):
        logz = math.log(sum(math.exp(v) for v in s[i]))
        ce = w[i] * -(s[i][y[i]] - logz) + (1 - w[i]) * -(s[i][y[perm[i]]] - logz)
        soft = [math.exp(v / 2) for v in s[i]]
        ps = [v / sum(soft) for v in soft]
        ta, tb = ([math.exp(v / 2) for v in t[j]] for j in (i, perm[i]))
        pt = [w[i] * a / sum(ta) + (1 - w[i]) * b / sum(tb) for a, b in zip(ta, tb, strict=True)]
        expected += 0.4 * ce + 0.6 * 4 * sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    assert got == pytest.approx(expected / 4, rel=1e-6)


def _train(tmp_path, name, teacher=None, **kd):
    X, y = synthetic_logmel(192, seed=0)
    Xv, yv = synthetic_logmel(64, seed=1)
    torch.manual_seed(0)
    net = LowComplexityCNN.from_spec(CNNSpec())
    cfg = TrainConfig(max_epochs=2, patience=5, seed=0, progress=False, threads=1, **kd)
    net, _ = fit(net, X, y, Xv, yv, cfg, tmp_path / name, teacher)
    return net.state_dict()


def test_lambda_1_trains_exactly_as_plain_cross_entropy(tmp_path, one_thread):
    teacher = np.random.default_rng(2).normal(0, 3, (192, 10)).astype(np.float32)
    plain = _train(tmp_path, "plain")
    lam1 = _train(tmp_path, "lam1", teacher, kd_lambda=1.0, kd_temperature=3.0)
    distilled = _train(tmp_path, "lam05", teacher, kd_lambda=0.5, kd_temperature=3.0)
    assert all(torch.equal(plain[k], lam1[k]) for k in plain)  # bit for bit
    assert not all(torch.equal(plain[k], distilled[k]) for k in plain)  # the teacher does reach the weights


# -- teacher logits files ------------------------------------------------------------------------------------
CLASSES = ["dog", "rain", "sea"]
NAMES = ["a/1.wav", "a/1.wav", "b/2.flac", "c/3.ogg"]
SEGMENTS = np.array([0, 1, 0, 4])


@pytest.fixture
def logits() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 5, (4, 3)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_teacher_logits_round_trip_in_any_row_order(tmp_path, logits, suffix):
    path = distill.write_logits(tmp_path / f"t{suffix}", NAMES[::-1], SEGMENTS[::-1], logits[::-1], CLASSES)
    got = distill.align(path, NAMES, SEGMENTS, CLASSES, set(NAMES))
    np.testing.assert_array_equal(got, logits)


def test_another_class_order_is_reordered_to_the_runs(tmp_path, logits):
    path = distill.write_logits(tmp_path / "t.csv", NAMES, SEGMENTS, logits[:, [2, 0, 1]], ["sea", "dog", "rain"])
    np.testing.assert_array_equal(distill.align(path, NAMES, SEGMENTS, CLASSES), logits)


@pytest.mark.parametrize("case, message", [
    ("missing", r"no logits for c/3.ogg segment 4 \(1 of 4"),
    ("foreign", "1 file name.*the dataset does not have.*'z/9.wav'"),
    ("classes", r"classes \(dog, rain\; 2\) are not the run's"),
    ("duplicate", "a/1.wav segment 0 appears twice"),
    ("suffix", r"\.csv or \.npz"),
    ("header", "header must be filename,segment"),
    ("nan", "non-finite logits for b/2.flac segment 0"),
    ("absent", "not found"),
])
def test_bad_teacher_logits_files_name_the_file_and_the_problem(tmp_path, logits, case, message):
    path, names, segs, classes = tmp_path / "t.csv", list(NAMES), SEGMENTS.copy(), list(CLASSES)
    if case == "missing":
        distill.write_logits(path, names[:3], segs[:3], logits[:3], classes)
    elif case == "foreign":
        distill.write_logits(path, [*names, "z/9.wav"], np.append(segs, 0), np.vstack([logits, logits[:1]]), classes)
    elif case == "classes":
        distill.write_logits(path, names, segs, logits[:, :2], classes[:2])
    elif case == "duplicate":
        distill.write_logits(path, [*names, names[0]], np.append(segs, 0), np.vstack([logits, logits[:1]]), classes)
    elif case == "suffix":
        path = tmp_path / "t.txt"
        path.write_text("x")
    elif case == "header":
        path.write_text("file,seg,dog,rain,sea\n")
    elif case == "nan":
        bad = logits.copy()
        bad[2, 1] = np.nan
        distill.write_logits(path, names, segs, bad, classes)
    elif case == "absent":
        path = tmp_path / "none.npz"
    with pytest.raises(distill.TeacherLogitsError, match=message) as e:
        distill.align(path, NAMES, SEGMENTS, CLASSES, set(NAMES))
    assert str(path) in str(e.value)


# -- the kd recipe's settings ---------------------------------------------------------------------------------
def test_the_kd_recipe_stops_with_its_own_patience_and_leaves_the_papers_alone():
    from lcasc.recipes import KD_PATIENCE, kd_config
    from lcasc.run import RunConfig

    paper = RunConfig(train=TrainConfig(max_epochs=300, patience=7, seed=3))
    kd = kd_config(paper)
    assert (kd.train.patience, kd.train.max_epochs, kd.train.seed) == (KD_PATIENCE, 300, 3)
    assert KD_PATIENCE != 7 and paper.train.patience == 7 and paper.recipe == "paper"
    assert kd_config(paper, patience=12).train.patience == 12
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="--kd-patience must be a positive integer"):
            kd_config(paper, patience=bad)


# -- the kd recipe end to end ---------------------------------------------------------------------------------
def test_a_kd_run_on_the_embedded_default_finishes_and_reports_both_recipes(tmp_path):
    """Kept small (1 epoch; pruning of one layer combination, in-process, after the run): the full family and
    its numbers are what benchmarks/distillation.py measures."""
    from lcasc.cli import main
    from lcasc.recipes import teacher_logits
    from lcasc.run import Run
    from lcasc.stages import prune

    out = tmp_path / "run"
    assert main(["-q", "run", "--recipe", "kd", "--out", str(out), "--max-epochs", "1", "--patience", "1",
                 "--skip", "prune", "quantize", "baselines", "--teacher-widths", "8-8-16-32",
                 "--kd-patience", "3"]) == 0
    paper, kd = (json.loads((d / "results.json").read_text()) for d in (out, out / "kd"))
    assert [e["name"] for e in paper["networks"]] == [e["name"] for e in kd["networks"]] == ["unpruned"]
    assert paper["networks"][0]["recipe"] == "paper" and kd["networks"][0]["recipe"] == "kd"
    teacher = json.loads((out / "kd" / "models" / "teacher" / "teacher.json").read_text())
    assert [t["widths"] for t in teacher["teachers"]] == ["8-8-16-32"]  # no paper ensemble without pruning
    config = (out / "kd" / "config.yaml").read_text()
    assert "recipe: kd" in config and "kd_lambda: 0.2" in config and "mixstyle_p: 0.4" in config
    assert "patience: 3" in config and "patience: 1" in (out / "config.yaml").read_text()
    # The cached teacher logits are a teacher logits file for exactly the run's training segments.
    run = Run(out / "kd", progress=False)
    cached = teacher_logits(run)
    assert cached.shape == (len(run.split("train")), len(run.classes)) and np.isfinite(cached).all()
    # Distilled fine-tuning of a pruned network (what the kd recipe's prune stage does for all six).
    (entry,) = prune.run(run, ["C123"], max_epochs=1)
    assert entry["recipe"] == "kd" and (out / "kd" / "models" / "pruned_C123" / "model.pt").is_file()
    from lcasc.stages import report

    report.run(Run(out, progress=False))
    text = (out / "report.md").read_text()
    assert "## Recipes: paper vs kd" in text and "| unpruned | float32 | 5,404,520 |" in text
    assert (out / "figures" / "accuracy_vs_macs_recipes.png").stat().st_size > 0

    # lcasc study: recipe and augmentation as dimensions (kd variants use the cached teacher of DIR/kd).
    from lcasc.study import run_study

    rows = run_study(Run(out, progress=False), kernels=(3,), activations=("TRTT",), repeats=1, max_epochs=1,
                     workers=2, progress=False, recipes=("paper", "kd"), augments=("none", "kd"))
    assert [r["variant"] for r in rows] == ["k3_TRTT", "k3_TRTT_aug-kd", "k3_TRTT_kd", "k3_TRTT_kd_aug-kd"]
    jobs = {r["variant"]: json.loads((out / "study" / r["variant"] / "seed0" / "job.json").read_text()) for r in rows}
    assert [j["recipe"] for j in jobs.values()] == ["paper", "paper", "kd", "kd"]
    assert jobs["k3_TRTT"]["augment"] is None and jobs["k3_TRTT_aug-kd"]["augment"]["mixstyle_p"] == 0.4
    assert jobs["k3_TRTT_kd"]["train"]["kd_lambda"] == 0.2 and "kd_lambda" not in jobs["k3_TRTT"]["train"]
    assert len({j["weights_sha256"] for j in jobs.values()}) == 4  # each dimension changes the training


def test_a_run_directory_of_an_older_lcasc_without_recipe_settings_is_still_accepted(tmp_path):
    import yaml

    from lcasc.run import Run, RunConfig, RunError

    Run(tmp_path / "run", RunConfig(), progress=False)
    old = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    for key in ("recipe", "teacher_widths", "teacher_ensemble", "teacher_logits"):
        old.pop(key)
    for key in ("kd_lambda", "kd_temperature", "augment"):
        old["train"].pop(key)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    Run(tmp_path / "run", RunConfig(), progress=False)  # the same settings: accepted
    with pytest.raises(RunError, match="different settings"):
        Run(tmp_path / "run", RunConfig(recipe="kd"), progress=False)
