"""nucseg._cpu: the CPUs a process may use (affinity, cgroup quota)."""

from __future__ import annotations

import os

import pytest

from nucseg import _cpu


def _cgroup(tmp_path, v2=None, v1=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("max 100000", None, None),  # no limit
        ("150000 100000", None, 1.5),  # docker --cpus 1.5
        ("400000 100000", None, 4.0),
        (None, (-1, 100000), None),  # v1, no limit
        (None, (200000, 100000), 2.0),  # v1, 2 CPUs
        ("garbage", None, None),
        (None, None, None),  # no cgroup files at all
    ],
)
def test_cgroup_quota(tmp_path, v2, v1, quota):
    assert _cpu.cgroup_quota(_cgroup(tmp_path, v2, v1)) == quota


def test_usable_cpus_caps_affinity_with_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(_cpu, "_affinity", lambda: 16)
    assert _cpu.usable_cpus(_cgroup(tmp_path / "a", "150000 100000")) == 2  # ceil(1.5)
    assert _cpu.usable_cpus(_cgroup(tmp_path / "b", "max 100000")) == 16
    monkeypatch.setattr(_cpu, "_affinity", lambda: 3)
    assert _cpu.usable_cpus(_cgroup(tmp_path / "c", "800000 100000")) == 3  # the mask is smaller
    assert _cpu.usable_cpus(_cgroup(tmp_path / "d", "1000 100000")) == 1  # a hundredth of a CPU: still one thread


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="affinity masks are Linux-only")
def test_usable_cpus_follows_the_affinity_mask(tmp_path):
    """A child process pinned to one CPU (as taskset or a batch scheduler would) sees one."""
    import subprocess
    import sys

    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from nucseg._cpu import usable_cpus; print(usable_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "1"
    assert _cpu.usable_cpus(tmp_path) == len(os.sched_getaffinity(0))  # no quota files under tmp_path


def test_load_model_lowers_torch_threads_to_the_quota(monkeypatch):
    """A container quota of 1 CPU: loading a model on the CPU leaves torch one thread
    (it had one per CPU of the affinity mask); a lower count chosen by the user stays."""
    torch = pytest.importorskip("torch")
    from nucseg.inference import load_model

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(_cpu, "usable_cpus", lambda root=None: 1)
        load_model(device="cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(_cpu, "usable_cpus", lambda root=None: 8)
        assert _cpu.limit_torch_threads() == 1  # never raised
    finally:
        torch.set_num_threads(before)
