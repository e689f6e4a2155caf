"""Pruning family, ensembles, baselines and predictions on one small real run (built once per module)."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import lcasc
from lcasc.classifier import EnsembleClassifier
from lcasc.ensemble import best_subset, paper_table3_subsets
from lcasc.stages.quantize import int8_available

from .conftest import copy_of, make_tau22, real_clips


def lcasc_cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "lcasc", "-q", *args], capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def run_dir(family_run, tmp_path_factory):
    return copy_of(family_run, tmp_path_factory)  # the session's shared run (conftest): these tests add to it


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_run_builds_the_six_pruned_networks_with_their_removed_filters(run_dir):
    nets = {n["name"]: n for n in results(run_dir)["networks"]}
    removed = json.loads((run_dir / "models" / "pruning_similarity.json").read_text())
    for combo, layers in (("C1", ["C1"]), ("C2", ["C2"]), ("C3", ["C3"]), ("C12", ["C1", "C2"]),
                          ("C23", ["C2", "C3"]), ("C123", ["C1", "C2", "C3"])):
        n = nets[f"pruned_{combo}"]
        assert sorted(n["removed"]) == layers
        widths = [16 - len(removed["C1"]) if "C1" in layers else 16, 16 - len(removed["C2"]) if "C2" in layers
                  else 16, 32 - len(removed["C3"]) if "C3" in layers else 32]
        assert n["widths"] == "-".join(map(str, widths)) + "-100"
        assert set(n["before_finetune"]) == {"accuracy", "class_avg_accuracy", "log_loss"}
        assert n["params"] < nets["unpruned"]["params"] or not any(removed[k] for k in layers)
    assert (run_dir / "figures" / "pruning_similarity.png").is_file()
    report = (run_dir / "report.md").read_text()
    assert "Table 2 analogue" in report and "Table 3 analogue" in report and "Table 4 analogue" in report


def test_run_adds_table3_ensembles_and_a_budgeted_best_subset(run_dir):
    res = results(run_dir)
    ens = {e["name"]: e for e in res["ensembles"]}
    nets = {n["name"]: n for n in res["networks"]}
    assert len([e for e in ens.values() if e.get("table") == "paper_table3" and e["precision"] == "float32"]) == 7
    all6 = ens["ensemble_all"]
    assert all6["params"] == sum(nets[m]["params"] for m in all6["members"])
    assert all6["macs"] == sum(nets[m]["macs"] for m in all6["members"])
    best = ens["ensemble_best_budget"]
    assert best["params"] <= 128_000 and best["macs"] <= 30_000_000
    assert (run_dir / "figures" / "accuracy_vs_macs.png").is_file()


def test_ensemble_command_with_members_and_a_tight_budget(run_dir):
    lcasc_cli("ensemble", "--run", str(run_dir), "--members", "pruned_C1", "pruned_C2", "--budget-macs",
              "5000000")
    ens = {e["name"]: e for e in results(run_dir)["ensembles"]}
    assert ens["ensemble_C1_C2_all"]["members"] == ["pruned_C1", "pruned_C2"]
    assert ens["ensemble_best_budget_128000p_5000000macs"]["macs"] <= 5_000_000
    assert len(ens["ensemble_all"]["members"]) == 6  # the default family is not replaced
    assert ens["ensemble_best_budget"]["budget"]["macs"] == 30_000_000


def test_ensemble_is_the_mean_of_member_probabilities():
    class Const:
        classes = ["a", "b"]

        def __init__(self, p):
            self.p = np.array(p)

        def predict_proba(self, X):
            return np.tile(self.p, (len(X), 1))

    ens = EnsembleClassifier([Const([0.2, 0.8]), Const([0.6, 0.4])])
    np.testing.assert_allclose(ens.predict_proba(np.zeros((3, 40, 51))), [[0.4, 0.6]] * 3)
    assert paper_table3_subsets(["a", "b", "c"]) == [("a", "b", "c"), ("b", "c"), ("a", "c"), ("a", "b")]


def test_best_subset_respects_the_budget_and_prefers_lower_log_loss():
    from lcasc.complexity import Complexity

    y = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    bad = good[:, ::-1]
    costs = {"good": Complexity(100, 10, 1), "bad": Complexity(10, 1, 1)}
    assert best_subset({"good": good, "bad": bad}, y, costs)[0] == ("good",)
    assert best_subset({"good": good, "bad": bad}, y, costs, max_params=50)[0] == ("bad",)
    assert best_subset({"good": good}, y, {"good": costs["good"]}, max_params=50) is None


def test_prune_with_the_l1_criterion_removes_as_many_filters(run_dir):
    lcasc_cli("prune", "--run", str(run_dir), "--criterion", "l1", "--layers", "C1")
    sim = json.loads((run_dir / "models" / "pruning_similarity.json").read_text())
    l1 = json.loads((run_dir / "models" / "pruning_l1.json").read_text())
    assert {k: len(v) for k, v in sim.items()} == {k: len(v) for k, v in l1.items()}
    assert "pruned_l1_C1" in {n["name"] for n in results(run_dir)["networks"]}


def test_run_includes_the_cheap_baselines_and_refits_on_request(run_dir):
    before = {n["name"]: n for n in results(run_dir)["networks"] if n["kind"] == "baseline"}
    assert set(before) == {"gmm", "rf", "mlp", "dlsi"} and all(0 <= b["accuracy"] <= 1 for b in before.values())
    assert "Figure 4 analogue" in (run_dir / "report.md").read_text()
    assert (run_dir / "figures" / "methods.png").is_file()
    out = lcasc_cli("baselines", "--run", str(run_dir), "--only", "gmm", "rf")  # already there: kept
    assert out.stdout.count("acc") == 2
    after = {n["name"]: n for n in results(run_dir)["networks"] if n["kind"] == "baseline"}
    assert after["gmm"]["fit_seconds"] == before["gmm"]["fit_seconds"]
    fits = (run_dir / "lcasc.log").read_text().count("baseline gmm:")  # one line per fit, in the run's log
    lcasc_cli("baselines", "--run", str(run_dir), "--only", "gmm", "rf")
    assert (run_dir / "lcasc.log").read_text().count("baseline gmm:") == fits  # kept, not fitted again
    lcasc_cli("baselines", "--run", str(run_dir), "--only", "gmm", "--refit")
    assert (run_dir / "lcasc.log").read_text().count("baseline gmm:") == fits + 1
    refit = {n["name"]: n for n in results(run_dir)["networks"] if n["kind"] == "baseline"}
    assert refit["gmm"]["accuracy"] == before["gmm"]["accuracy"]  # same seed, same model


@pytest.mark.skipif(not int8_available(), reason="INT8 export extras (lcasc[tflite]) not installed")
def test_run_writes_int8_files_that_tflite_micro_runs(run_dir):
    from lcasc.export.tflite import fixed_qparam_violations
    from lcasc.mcu.toolchain import host_compiler
    from lcasc.run import Run
    from lcasc.runtimes import TFLiteMicroClassifier

    res = results(run_dir)
    nets = {n["name"]: n for n in res["networks"]}
    floats = [n for n in nets.values() if n["kind"] == "cnn" and n["precision"] == "float32"
              and n.get("criterion", "similarity") == "similarity"]  # other tests add l1-pruned networks
    assert len(floats) == 8  # unpruned, the control unpruned_ft and the six pruned networks
    run = Run(run_dir, progress=False)
    te, n_train = run.split("test"), len(run.split("train"))
    X, y = te.X, te.y
    for f in floats:
        q = nets[f"{f['name']}_int8"]
        path = run_dir / q["file"]
        assert path.is_file() and q["file_bytes"] == path.stat().st_size and q["size_kb"] == f["size_kb"]
        assert 20_000 < q["arena_bytes"] < 200_000 and q["tflm_vs_litert_max_step_diff"] <= 1
        assert q["calibration_segments"] == min(500, n_train)
        assert fixed_qparam_violations(path) == []
        tflm = TFLiteMicroClassifier(path, res["classes"], arena_size=q["arena_bytes"] + 256)
        probs = tflm.predict_proba(X)
        assert np.isclose((probs.argmax(1) == y).mean(), q["accuracy"], atol=1e-6)
        # the bulk evaluation (the C library when a compiler is here) saved TFLM's probabilities, bit for bit
        assert q["bulk_runtime"] == ("c-host" if host_compiler() else "tflite-micro")
        if q["bulk_runtime"] == "c-host":
            assert q["tflm_sample_mismatches"] == 0 and q["tflm_sample_clips"] == min(128, len(te)) + min(
                128, len(run.split("validate")))
        saved_test, saved_val = run.probabilities(q["name"])
        np.testing.assert_array_equal(saved_test, probs)
        np.testing.assert_array_equal(saved_val, tflm.predict_proba(run.split("validate").X))
        assert (run_dir / "models" / f["name"] / "model_int8.onnx").is_file()
    ens = {e["name"]: e for e in res["ensembles"]}
    assert ens["ensemble_all_int8"]["precision"] == "int8" and len(ens["ensemble_all_int8"]["members"]) == 6
    assert "INT8 (full-integer TFLite" in (run_dir / "report.md").read_text()


def test_unpruned_ft_is_the_fine_tuning_control_in_table2(run_dir):
    nets = {n["name"]: n for n in results(run_dir)["networks"]}
    ft, base = nets["unpruned_ft"], nets["unpruned"]
    assert ft["widths"] == base["widths"] and ft["params"] == base["params"] and "criterion" not in ft
    assert ft["finetune"] == nets["pruned_C1"]["finetune"]  # the same recipe and budget as the pruned ones
    assert ft["before_finetune"] == {k: round(base[k], 6) for k in ("accuracy", "class_avg_accuracy", "log_loss")}
    report = (run_dir / "report.md").read_text()
    assert "| unpruned_ft |" in report and "owes its gain to the extra training" in report
    assert "unpruned_ft" not in {m for e in results(run_dir)["ensembles"] if e["name"] == "ensemble_all"
                                 for m in e["members"]}  # Table 3 stays the paper's six


def test_prune_refuses_another_budget_on_fine_tuned_networks(run_dir):
    out = lcasc_cli("prune", "--run", str(run_dir), "--max-epochs", "7", check=False)
    assert out.returncode == 2 and "was fine-tuned with" in out.stderr and "max_epochs" in out.stderr
    assert json.loads((run_dir / "models" / "pruned_C1" / "finetune.json").read_text())["max_epochs"] == 3


def test_similarity_is_not_recomputed_on_a_rerun(run_dir):
    before = (run_dir / "similarity.json").stat().st_mtime_ns
    lcasc_cli("similarity", "--run", str(run_dir))
    assert (run_dir / "similarity.json").stat().st_mtime_ns == before
    assert "similarity: already computed" in (run_dir / "lcasc.log").read_text()


def test_run_analyses_feature_map_similarity_and_builds_the_fused_ensemble(run_dir):
    res = results(run_dir)
    summary = json.loads((run_dir / "similarity.json").read_text())
    assert set(summary["layers"]) == {"C1", "C2", "C3"}
    c1 = summary["layers"]["C1"]
    assert "unpruned" in c1["names"] and "pruned_C123" in c1["names"]
    assert res["similarity"]["shared_maps"]["C1"] == len(c1["shared"])
    for name in ("similarity_mse_C1.png", "similarity_fig5a.png", "fused_tradeoff.png"):
        assert (run_dir / "figures" / name).is_file()
    ens = {e["name"]: e for e in res["ensembles"]}
    fused, unfused = ens["ensemble_fused"], ens["ensemble_all"]
    assert fused["fused"] is True and fused["threshold"] == 1e-4 and fused["members"] == unfused["members"]
    assert fused["unfused"]["params"] == unfused["params"] and fused["unfused"]["macs"] == unfused["macs"]
    assert fused["params"] == unfused["params"] - fused["saved"]["params"] <= unfused["params"]
    assert fused["macs"] == unfused["macs"] - fused["saved"]["macs"] <= unfused["macs"]
    assert abs(fused["unfused"]["accuracy"] - unfused["accuracy"]) < 1e-6
    if int8_available():
        q = ens["ensemble_fused_int8"]
        assert (run_dir / q["file"]).stat().st_size == q["file_bytes"] and q["arena_bytes"] > 0
    assert "Fused ensemble" in (run_dir / "report.md").read_text()


def test_study_command_adds_the_architecture_study_to_the_report(run_dir):
    out = lcasc_cli("study", "--run", str(run_dir), "--kernels", "1", "3", "--activations", "TRTT", "--repeats",
                    "1", "--max-epochs", "1", "--workers", "2")
    assert "k1_TRTT" in out.stdout and "k3_TRTT" in out.stdout
    assert "Architecture study" in (run_dir / "report.md").read_text()
    assert (run_dir / "figures" / "study_kernels.png").is_file()
    assert (run_dir / "figures" / "study_activations.png").is_file()


def test_predict_api_on_arrays_and_files(run_dir, tmp_path):
    p = lcasc.load(run_dir)
    path = real_clips(1, "test")[0][0]
    r = p.predict(path)
    assert r.per_second.shape[1] == len(p.classes) and r.scene in p.classes
    np.testing.assert_allclose(r.per_second.sum(1), 1, atol=1e-5)
    stereo_48k = np.random.default_rng(0).normal(0, 0.1, (48000 * 3, 2)).astype(np.float32)
    assert lcasc.load(run_dir, ensemble="ensemble_all").predict(stereo_48k, 48000).per_second.shape[0] == 3


def test_predict_cli_writes_the_dcase_format_and_refuses_a_partial_submission(run_dir, tmp_path, capsys):
    from lcasc.cli import main

    folder = tmp_path / "mine with spaces"
    folder.mkdir()
    for i, (path, _) in enumerate(real_clips(1, "test")[:3]):
        x, sr = sf.read(path)
        sf.write(folder / f"clip_{i}_é.flac", x[: sr * 2], sr)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt ")
    # A submission missing a row is refused: exit 1, the unreadable file named, nothing written anywhere.
    sub = tmp_path / "submission.tsv"
    assert main(["-q", "predict", "--run", str(run_dir), "--format", "dcase", "-o", str(sub), str(folder)]) == 1
    refused = capsys.readouterr()
    assert refused.out == "" and "broken.wav" in refused.err and "--allow-missing" in refused.err
    assert not sub.exists() and list(tmp_path.glob(".submission.tsv*")) == []
    assert main(["-q", "predict", "--run", str(run_dir), "--format", "dcase", "--allow-missing", str(folder)]) == 0
    out = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(out.out), delimiter="\t"))
    classes = results(run_dir)["classes"]
    assert rows[0] == ["filename", "scene_label", *classes]
    assert len(rows) == 4 and all(r[1] in classes and len(r) == 2 + len(classes) for r in rows[1:])
    assert "broken.wav" in out.err and "1 of 4 files could not be read" in out.err and "3 rows written" in out.err
    js = json.loads(lcasc_cli("predict", "--run", str(run_dir), "--format", "json", "--model", "pruned_C1",
                              str(folder / "clip_0_é.flac")).stdout)
    assert len(js[0]["per_second"]) == 2
    bad = lcasc_cli("predict", "--run", str(run_dir), "--model", "nope", str(folder), check=False)
    assert bad.returncode == 2 and "no network named 'nope'" in bad.stderr


def test_predict_dataset_writes_a_dcase_submission_named_as_the_test_list(run_dir, tmp_path):
    root = make_tau22(tmp_path / "tau")
    sub = tmp_path / "submission.tsv"
    lcasc_cli("predict", "--run", str(run_dir), "--dataset", str(root), "--format", "dcase", "-o", str(sub))
    rows = list(csv.reader(io.StringIO(sub.read_text()), delimiter="\t"))
    listed = (root / "evaluation_setup" / "fold1_test.csv").read_text().splitlines()[1:]
    classes = results(run_dir)["classes"]
    assert rows[0] == ["filename", "scene_label", *classes]
    assert [r[0] for r in rows[1:]] == listed and all(r[1] in classes for r in rows[1:])
    np.testing.assert_allclose([sum(map(float, r[2:])) for r in rows[1:]], 1, atol=1e-4)
    both = lcasc_cli("predict", "--run", str(run_dir), "--dataset", str(root), str(sub), check=False)
    assert both.returncode == 2 and "one of the two" in both.stderr


# -- every name of results.json runs as evaluated ------------------------------------------------------------

TFLM_ROWS = 16  # TFLM runs clip by clip (~10 ms each): INT8 entries are compared on the first test segments


def test_every_entry_runs_by_name_as_evaluated(run_dir):
    """Each network, INT8 network, baseline and ensemble (fused and INT8 ones too) loaded by name gives the
    probabilities the run's evaluation saved: float to 1e-5, INT8 bit for bit (same TFLite Micro)."""
    from lcasc.predict import PredictError
    from lcasc.run import Run

    res = results(run_dir)
    X = Run(run_dir, progress=False).split("test").X
    kinds = set()
    for entry in res["networks"] + res["ensembles"]:
        name = entry["name"]
        p = lcasc.load(run_dir, name)
        want = np.load(run_dir / "models" / name / "probabilities.npz")["test"]
        assert p.name == name and want.shape == (len(X), len(res["classes"]))
        if "tflite" in p.backend:
            got = p.classifier.predict_proba(X[:TFLM_ROWS])
            assert np.array_equal(got, want[:TFLM_ROWS]), name
        else:
            np.testing.assert_allclose(p.classifier.predict_proba(X), want, atol=1e-5, err_msg=name)
        kinds.add((entry["kind"], entry["precision"], bool(entry.get("fused")), p.backend))
    expected = {("cnn", "float32", False, "onnx"), ("baseline", "float32", False, "sklearn"),
                ("ensemble", "float32", False, "onnx"), ("ensemble", "float32", True, "torch")}
    if int8_available():
        expected |= {("cnn", "int8", False, "tflite"), ("ensemble", "int8", False, "tflite"),
                     ("ensemble", "int8", True, "tflite")}
    assert expected <= kinds
    fused = lcasc.load(run_dir, ensemble="ensemble_fused")
    assert type(fused.classifier).__name__ == "FusedEnsemble" and len(fused.members) == 6
    for name, backend in (("gmm", "onnx"), ("ensemble_fused", "tflite"), ("ensemble_fused_int8", "torch")):
        with pytest.raises(PredictError, match="--backend"):
            lcasc.load(run_dir, name, backend=backend)


@pytest.mark.skipif(not int8_available(), reason="INT8 export extras (lcasc[tflite]) not installed")
def test_predict_ensemble_fused_int8_runs_the_fused_file_not_its_members(run_dir, capsys):
    from lcasc.audio import load, segment
    from lcasc.classifier import mean_probabilities
    from lcasc.cli import main
    from lcasc.logmel import FeatureParams, logmel
    from lcasc.runtimes import TFLiteMicroClassifier

    res = results(run_dir)
    entry = next(e for e in res["ensembles"] if e["name"] == "ensemble_fused_int8")
    clip = real_clips(1, "test")[0][0]
    assert main(["-q", "predict", "--run", str(run_dir), "--ensemble", "ensemble_fused_int8", "--format", "json",
                 str(clip)]) == 0
    got = np.array([[s[c] for c in res["classes"]] for s in json.loads(capsys.readouterr().out)[0]["per_second"]])
    params = FeatureParams()
    X = logmel(segment(load(clip), params.min_last_segment), params)
    fused_file = TFLiteMicroClassifier(run_dir / entry["file"], res["classes"]).predict_proba(X)
    members = mean_probabilities([TFLiteMicroClassifier(run_dir / "models" / m / "model_int8.tflite", res["classes"])
                                  .predict_proba(X) for m in entry["members"]])
    assert got.shape == fused_file.shape and np.abs(got - fused_file).max() < 1e-6
    assert np.abs(got - members).max() > 1e-4  # so the check above tells the fused file from its members
