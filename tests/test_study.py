"""The architecture study (paper Figures 1 and 2) on a tiny real dataset: jobs, summary, figures, resume,
and identical numbers whatever runs the jobs (1 or 2 local processes, a local Ray instance)."""

from __future__ import annotations

import sys

import pytest

from lcasc.io import read_json
from lcasc.run import Run, RunConfig, RunError
from lcasc.study import run_study, validate
from lcasc.study.executors import _drive
from lcasc.study.figures import study_table_markdown
from lcasc.study.jobs import Job
from lcasc.train import TrainConfig

from .conftest import make_csv_dataset

KERNELS, ACTS = (1, 3), ("TTTT", "TRTT")


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    """Runs over one tiny CSV dataset sharing one feature cache; each call gets a fresh run directory."""
    root = tmp_path_factory.mktemp("study")
    csv_path = make_csv_dataset(root / "data", per_class=1)
    count = 0

    def make(max_epochs: int = 2) -> Run:
        nonlocal count
        count += 1
        cfg = RunConfig(dataset=str(csv_path), cache_dir=str(root / "cache"),
                        train=TrainConfig(max_epochs=max_epochs, patience=5, progress=False))
        return Run(root / f"run{count}", cfg, progress=False)

    return make


@pytest.fixture(scope="module")
def study(make_run):
    """The reference study: 2 kernels x 2 activation patterns x 2 repeats on 2 local processes."""
    run = make_run()
    rows = run_study(run, kernels=KERNELS, activations=ACTS, repeats=2, workers=2, progress=False)
    return run, rows


def _jobs(run: Run) -> dict:
    """{(variant, seed folder): job.json without its timing} of a run's study."""
    out = {}
    for path in sorted((run.dir / "study").glob("*/seed*/job.json")):
        out[(path.parent.parent.name, path.parent.name)] = {k: v for k, v in read_json(path).items()
                                                            if k != "seconds"}
    return out


def test_study_writes_jobs_summary_and_figures(study):
    run, rows = study
    jobs = _jobs(run)
    assert sorted(jobs) == sorted((f"k{k}_{a}", f"seed{s}") for k in KERNELS for a in ACTS for s in (0, 1))
    for job in jobs.values():
        assert job["threads"] == 1 and 1 <= job["epochs"] <= 2
        assert 0 <= job["accuracy"] <= 1 and job["log_loss"] > 0 and job["val_log_loss"] > 0
        assert job["params"] > 0 and job["macs"] > 0
    summary = read_json(run.dir / "study" / "summary.json")
    assert summary["variants"] == rows
    assert [r["variant"] for r in rows] == ["k1_TTTT", "k1_TRTT", "k3_TTTT", "k3_TRTT"]
    by_name = {r["variant"]: r for r in rows}
    assert by_name["k3_TRTT"]["params"] == 14886  # paper Table 2, unpruned
    assert by_name["k1_TTTT"]["params"] < by_name["k3_TTTT"]["params"]
    for r in rows:
        assert r["repeats"] == 2 and r["seeds"] == [0, 1]
        accs = [jobs[(r["variant"], f"seed{s}")]["accuracy"] for s in (0, 1)]
        assert r["accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert r["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)  # sample std of two
        assert r["log_loss_std"] >= 0
    for name in ("study_kernels.png", "study_activations.png"):
        assert (run.dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = study_table_markdown(summary)
    assert table.count("\n") == 2 + len(rows) and "| k3_TRTT | 3×3 | TRTT | 14,886 |" in table


def test_rerun_skips_finished_jobs_and_redoes_a_missing_one(study):
    run, rows = study
    paths = sorted((run.dir / "study").glob("*/seed*/job.json"))
    before = {p: p.stat().st_mtime_ns for p in paths}
    old = _jobs(run)
    assert run_study(run, kernels=KERNELS, activations=ACTS, repeats=2, workers=2, progress=False) == rows
    assert {p: p.stat().st_mtime_ns for p in paths} == before
    redo = run.dir / "study" / "k3_TRTT" / "seed1" / "job.json"
    redo.unlink()
    run_study(run, kernels=KERNELS, activations=ACTS, repeats=2, workers=2, progress=False)
    after = {p: p.stat().st_mtime_ns for p in paths}
    assert [p for p in paths if after[p] != before[p]] == [redo]
    assert _jobs(run) == old  # the redone job ends where it ended the first time
    # A finished study trained with other settings is not silently mixed with new ones.
    with pytest.raises(RunError, match="other settings"):
        run_study(run, kernels=KERNELS, activations=ACTS, repeats=2, max_epochs=3, progress=False)


def test_one_worker_gives_the_same_numbers_as_two(study, make_run):
    ref, _ = study
    run = make_run()
    run_study(run, kernels=(3,), activations=("TRTT",), repeats=2, workers=1, progress=False)
    mine = _jobs(run)
    assert len(mine) == 2 and mine == {k: v for k, v in _jobs(ref).items() if k[0] == "k3_TRTT"}


def test_local_ray_gives_the_same_numbers_as_the_process_pool(study, make_run):
    pytest.importorskip("ray")
    ref, _ = study
    run = make_run()
    run_study(run, kernels=(3,), activations=("TRTT",), repeats=2, ray_address="local", progress=False)
    mine = _jobs(run)
    assert len(mine) == 2 and mine == {k: v for k, v in _jobs(ref).items() if k[0] == "k3_TRTT"}
    assert (run.dir / "figures" / "study_kernels.png").is_file()


def test_missing_ray_is_a_clear_error(make_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    run = make_run()
    with pytest.raises(RunError, match=r'pip install "ray\[default\]"'):
        run_study(run, kernels=(3,), activations=("TRTT",), repeats=1, ray_address="local", progress=False)


@pytest.mark.parametrize("kernels, activations, message", [
    ((2,), ("TRTT",), "odd positive"),
    ((0,), ("TRTT",), "odd positive"),
    ((-1,), ("TRTT",), "odd positive"),
    ((3.0,), ("TRTT",), "odd positive"),
    ((), ("TRTT",), "at least one kernel"),
    ((3,), ("TRT",), "4 letters"),
    ((3,), ("TRTX",), "4 letters"),
    ((3,), ("TRTTT",), "4 letters"),
    ((3,), (), "at least one activation"),
])
def test_invalid_kernels_and_activations(kernels, activations, message):
    with pytest.raises(ValueError, match=message):
        validate(kernels, activations)


def test_invalid_arguments_fail_before_any_work(make_run):
    run = make_run()
    with pytest.raises(ValueError, match="odd positive"):
        run_study(run, kernels=(1, 4), progress=False)
    with pytest.raises(ValueError, match="4 letters"):
        run_study(run, activations=("TRTT", "TTXT"), progress=False)
    with pytest.raises(ValueError, match="repeats"):
        run_study(run, repeats=0, progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_study(run, workers=0, progress=False)
    assert not (run.dir / "study").exists()


def test_validate_normalises_and_deduplicates():
    assert validate([3, 1, 3], ["trtt", "TRTT", "RRRR"]) == ([3, 1], ["TRTT", "RRRR"])


def test_a_failed_job_keeps_the_finished_results_and_is_raised():
    jobs = [Job("k3_TRTT", 3, "TRTT", r, r, {}, {}, f"/nowhere/seed{r}") for r in range(5)]
    submitted, got = [], []

    def submit(job):
        submitted.append(job.seed)
        return job.seed

    def wait_some(handles):  # everything in flight finishes; seed 1 fails
        return [(h, ValueError("boom") if h == 1 else {"seed": h}) for h in handles]

    with pytest.raises(RuntimeError, match="1 job.s. failed, the first k3_TRTT seed 1.*boom"):
        _drive(jobs, 2, submit, wait_some, lambda h: None, lambda job, res: got.append(res["seed"]))
    assert got == [0] and submitted == [0, 1]  # no new job after a failure
