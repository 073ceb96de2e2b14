"""The default thread count: the CPUs a process may keep busy, on a fake /proc and /sys/fs/cgroup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.environment import available_cpus, cgroup_cpu_quota


@pytest.fixture(autouse=True)
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def _fake(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_affinity_alone(tmp_path):
    assert available_cpus(tmp_path, {}) == 8  # no /proc/self/cgroup: no quota known
    assert cgroup_cpu_quota(tmp_path) is None


def test_slurm_cpus_per_task(tmp_path):
    assert available_cpus(tmp_path, {"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert available_cpus(tmp_path, {"SLURM_CPUS_PER_TASK": "32"}) == 8  # never above the affinity
    for junk in ("0", "", "two", "-1"):
        assert available_cpus(tmp_path, {"SLURM_CPUS_PER_TASK": junk}) == 8


def test_cgroup_v2_quota_of_the_process_cgroup_and_its_ancestors(tmp_path):
    root = _fake(tmp_path, "0::/job/step\n", {
        "cpu.max": "max 100000\n",
        "job/cpu.max": "250000 100000\n",  # 2.5 CPUs, on the parent
        "job/step/cpu.max": "max 100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 2.5
    assert available_cpus(root, {}) == 2  # rounded down
    assert available_cpus(root, {"SLURM_CPUS_PER_TASK": "1"}) == 1  # the smallest of the three


def test_cgroup_v2_inside_a_container_reads_the_mount_root(tmp_path):
    root = _fake(tmp_path, "0::/docker/4f2a\n", {"cpu.max": "400000 100000\n"})
    assert available_cpus(root, {}) == 4


def test_a_quota_below_one_cpu_still_gives_one_thread(tmp_path):
    root = _fake(tmp_path, "0::/\n", {"cpu.max": "20000 100000\n"})
    assert available_cpus(root, {}) == 1


def test_cgroup_v1_cfs_quota(tmp_path):
    cgroup = "12:memory:/slurm/job7\n4:cpu,cpuacct:/slurm/job7\n1:name=systemd:/\n"
    root = _fake(tmp_path, cgroup, {
        "cpu,cpuacct/slurm/job7/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/slurm/job7/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",  # no quota at the root
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 3.0 and available_cpus(root, {}) == 3


def test_no_quota_and_unreadable_files_change_nothing(tmp_path):
    root = _fake(tmp_path / "a", "0::/\n", {"cpu.max": "max 100000\n"})
    assert available_cpus(root, {}) == 8
    root = _fake(tmp_path / "b", "0::/x\n3:cpu:/x\n", {
        "cpu.max": "lots of cpus\n", "cpu/x/cpu.cfs_quota_us": "-1\n", "cpu/x/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) is None and available_cpus(root, {}) == 8


def test_predict_sizes_its_worker_from_slurm_cpus_per_task(tiny_set, reads_fasta, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path / "o"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    workers = json.loads((tmp_path / "o" / "run.json").read_text())["workers"]
    assert [w["threads"] for w in workers] == [1]
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path / "p"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    workers = json.loads((tmp_path / "p" / "run.json").read_text())["workers"]
    expected = available_cpus(environ={"SLURM_CPUS_PER_TASK": "4"})  # 4, unless this host's cgroup quota
    assert expected <= 4 and [w["threads"] for w in workers] == [expected]  # is tighter
