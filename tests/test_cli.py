"""The command line end to end, on small real datasets, including bad input."""

import json
import subprocess
import sys

import numpy as np
import soundfile as sf
import yaml

from .conftest import make_csv_dataset, make_tau22


def lcasc(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "lcasc", "-q", *args], capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_run_writes_the_run_directory_and_resumes(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "ds", per_class=1)
    out = tmp_path / "run"
    lcasc("run", "--dataset", str(csv_path), "--out", str(out), "--max-epochs", "2", "--seed", "1")
    res = json.loads((out / "results.json").read_text())
    assert res["classes"] == sorted(res["classes"]) and len(res["classes"]) == 10
    net = res["networks"][0]
    assert {k: net[k] for k in ("name", "precision", "widths", "params", "macs", "size_kb")} == {
        "name": "unpruned", "precision": "float32", "widths": "16-16-32-100", "params": 14886,
        "macs": 5404520, "size_kb": 18.59}
    assert 0 <= net["accuracy"] <= 1 and 0 <= net["class_avg_accuracy"] <= 1 and net["log_loss"] > 0
    ensembles = {e["name"] for e in res["ensembles"]}
    assert {"ensemble_all", "ensemble_best_budget"} <= ensembles and "unpruned_ft" in {n["name"] for n in
                                                                                    res["networks"]}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["max_epochs"] == 2 and cfg["train"]["seed"] == 1 and cfg["features"]["n_mels"] == 40
    assert (out / "models" / "unpruned" / "model.pt").is_file()
    assert (out / "models" / "unpruned" / "train_log.csv").read_text().count("\n") == 3
    assert (out / "figures" / "confusion_unpruned.png").read_bytes()[:4] == b"\x89PNG"
    log = (out / "lcasc.log").read_text()  # the run's own account, at info level although -q was given
    assert "lcasc 0.1.0:" in log and "stage features done" in log and "stage baselines done" in log
    report = (out / "report.md").read_text()
    assert "| unpruned | float32 | 16-16-32-100 | 14,886 | 18.59 | 5,404,520 |" in report
    # the same command again finishes from what is there, with the same numbers
    mtime = (out / "models" / "unpruned" / "model.pt").stat().st_mtime_ns
    lcasc("run", "--dataset", str(csv_path), "--out", str(out), "--max-epochs", "2", "--seed", "1")
    assert (out / "models" / "unpruned" / "model.pt").stat().st_mtime_ns == mtime
    again = json.loads((out / "results.json").read_text())
    assert again["networks"][0]["accuracy"] == net["accuracy"]
    assert {k: v for k, v in again.items() if k != "timings"} == {k: v for k, v in res.items() if k != "timings"}


def test_stage_commands_one_by_one_on_tau22_layout(tmp_path):
    root = make_tau22(tmp_path / "tau")
    out = tmp_path / "run"
    lcasc("features", "--dataset", str(root), "--out", str(out), "--max-epochs", "1", "--silence-db", "nan")
    summary = json.loads((out / "features" / "summary.json").read_text())
    # holdout: 2 of each class's 4 fold1_train clips (one location) validate; fold1_evaluate is the test split
    assert summary["layout"] == "tau22" and summary["segments"]["train"] == 6
    assert summary["segments"]["validate"] == 6 and summary["segments"]["test"] == 24
    assert "holdout" in summary["protocol"] and summary["split_aliases"] == {}
    lcasc("train", "--run", str(out))
    ev = json.loads(lcasc("evaluate", "--run", str(out)).stdout)
    assert ev["name"] == "unpruned"
    per_device = json.loads((out / "models" / "unpruned" / "evaluation.json").read_text())["test"]["per_device"]
    assert set(per_device) == {"a", "b", "s1"}


def test_bad_files_are_skipped_named_and_counted(tmp_path):
    bad = tmp_path / "ds" / "bad"
    bad.mkdir(parents=True)
    (bad / "empty.wav").write_bytes(b"")
    (bad / "corrupt.ogg").write_bytes(b"OggS" + bytes(200))
    x = np.full(44100, np.nan, np.float32)
    sf.write(bad / "nan.wav", x, 44100, subtype="FLOAT")
    rows = [(str(bad / n), "rain", "train") for n in ("empty.wav", "corrupt.ogg", "nan.wav")]
    rows.append((str(bad / "missing.wav"), "rain", "train"))
    sf.write(bad / "thunder.wav", np.zeros(44100, np.float32), 44100)
    rows.append((str(bad / "thunder.wav"), "thunder", "test"))
    csv_path = make_csv_dataset(tmp_path / "ds", per_class=1, extra_rows=rows)
    out = subprocess.run([sys.executable, "-m", "lcasc", "run", "--dataset", str(csv_path), "--out",
                          str(tmp_path / "run"), "--max-epochs", "1", "--skip", "prune", "quantize", "ensemble",
                          "baselines"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    for name, problem in (("empty.wav", "empty"), ("corrupt.ogg", "cannot decode"), ("nan.wav", "NaN"),
                          ("missing.wav", "does not exist"), ("thunder.wav", "'thunder'")):
        assert any(name in line and problem in line for line in out.stderr.splitlines()), (name, problem)
    data = json.loads((tmp_path / "run" / "results.json").read_text())["data"]
    assert data["skipped_files"] == 3 and data["skipped_rows"] == 2  # missing file, unknown label
    assert "3 files and 2 metadata rows skipped" in out.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    out = lcasc("run", "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().endswith("nowhere: dataset path does not exist")
    (tmp_path / "cols.csv").write_text("name,label\na.wav,x\n")
    out = lcasc("run", "--dataset", str(tmp_path / "cols.csv"), "--out", str(tmp_path / "r"), check=False)
    assert out.returncode == 2 and "missing column(s) filename, split" in out.stderr
    out = lcasc("train", "--run", str(tmp_path / "not-a-run"), check=False)
    assert out.returncode == 2 and "not a run directory" in out.stderr


def test_changed_settings_on_an_existing_run_are_refused(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "ds", per_class=1)
    lcasc("features", "--dataset", str(csv_path), "--out", str(tmp_path / "r"))
    out = lcasc("features", "--dataset", str(csv_path), "--out", str(tmp_path / "r"), "--seed", "7", check=False)
    assert out.returncode == 2 and "different settings (train)" in out.stderr


def test_version_and_quiet_after_the_command():
    from lcasc import __version__

    assert lcasc("--version").stdout.strip() == f"lcasc {__version__}"
    out = subprocess.run([sys.executable, "-m", "lcasc", "complexity", "--widths", "16-16-32-100", "--json", "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["params"] == 14886, out.stderr


def test_help_explains_every_command():
    from lcasc.cli import build_parser

    out = lcasc("--help")
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(commands) >= {"run", "features", "train", "evaluate", "prune", "quantize", "ensemble", "similarity",
                             "fuse", "baselines", "study", "predict", "complexity", "report"}
    for cmd, sub in commands.items():
        assert cmd in out.stdout
        assert len(sub.description or "") > 20, f"`lcasc {cmd} --help` has no description"
        assert all(a.help for a in sub._actions), f"`lcasc {cmd}` has an option without help"
    assert "--max-epochs" in lcasc("run", "--help").stdout


def test_train_processes_reach_the_runs_training_settings():
    from lcasc.cli import build_parser
    from lcasc.cli.options import run_config

    def processes(*flags):
        return run_config(build_parser().parse_args(["features", *flags])).train.processes

    assert processes() == 1  # one process unless asked: data-parallel results equal in distribution only
    assert processes("--train-processes", "2") == 2
    assert processes("--train-processes", "0") is None  # one per CPU, for large training sets
