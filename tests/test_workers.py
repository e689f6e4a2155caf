"""The CPU count lcasc uses: affinity mask, cgroup v2/v1 quotas (read from cgroup trees the tests write), and
``--workers``."""

from __future__ import annotations

import os

import pytest

from lcasc import workers
from lcasc.cli import main


def _v2_tree(tmp_path, quotas: dict[str, str]):
    root = tmp_path / "cgroup"
    (root / "cgroup.controllers").parent.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for rel, quota in quotas.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "cpu.max").write_text(quota + "\n")
    proc = tmp_path / "proc_cgroup"
    return root, proc


def test_cgroup_v2_quota_is_the_tightest_of_the_process_cgroup_and_its_parents(tmp_path):
    root, proc = _v2_tree(tmp_path, {"": "max 100000", "slurm": "300000 100000", "slurm/job7": "150000 100000"})
    proc.write_text("0::/slurm/job7\n")
    assert workers.cgroup_cpu_limit.__wrapped__(root, proc) == pytest.approx(1.5)
    proc.write_text("0::/slurm\n")
    assert workers.cgroup_cpu_limit.__wrapped__(root, proc) == pytest.approx(3.0)
    (root / "slurm" / "cpu.max").write_text("max 100000\n")  # no quota anywhere on the path
    assert workers.cgroup_cpu_limit.__wrapped__(root, proc) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    cpu = tmp_path / "cgroup" / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("50000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert workers.cgroup_cpu_limit.__wrapped__(tmp_path / "cgroup", proc) == pytest.approx(0.5)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert workers.cgroup_cpu_limit.__wrapped__(tmp_path / "cgroup", proc) is None


def test_cpu_count_takes_the_quota_the_affinity_and_workers(monkeypatch):
    monkeypatch.delenv(workers.WORKERS_ENV, raising=False)
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: 0.5)  # half a CPU: one worker, never zero
    assert workers.cpu_count() == 1
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: 1000.0)  # a quota above the affinity mask
    assert workers.cpu_count() == affinity
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: None)
    assert workers.cpu_count() == affinity
    monkeypatch.setenv(workers.WORKERS_ENV, "7")
    assert workers.cpu_count() == 7
    monkeypatch.setenv(workers.WORKERS_ENV, "zero")
    with pytest.raises(ValueError, match="LCASC_WORKERS"):
        workers.cpu_count()


def test_workers_option_rejects_a_bad_count(capsys):
    assert main(["-q", "complexity", "--widths", "16-16-32-100", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
