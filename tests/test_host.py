"""Thread counts follow the cores this process may use (affinity, cgroup quota), never more:
the core count against written cgroup files, then the real build and the real recipe start-up
under a one-core affinity asking for two threads."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import yaml
from _configs import demo_config

from rlreason import tiny
from rlreason.build import make_accelerator
from rlreason.run import host

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "affinity", "expected"), [
    ({}, {0, 1, 2, 3}, 4),                                                  # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, {0, 1, 2, 3}, 4),                         # v2, no quota
    ({"cpu.max": "200000 100000\n"}, {0, 1, 2, 3, 4, 5, 6, 7}, 2),          # v2: 2 cores of quota
    ({"cpu.max": "150000 100000\n"}, {0, 1, 2, 3}, 1),                      # 1.5 cores: one full core
    ({"cpu.max": "50000 100000\n"}, {0, 1}, 1),                             # half a core: still 1
    ({"cpu.max": "800000 100000\n"}, {2, 5}, 2),                            # quota above the affinity
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, set(range(16)), 3),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, set(range(6)), 6),       # v1, none
    ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, {0, 1}, 1),
    ({"cpu.max": "garbage"}, {0, 1, 2}, 3),                                 # unreadable: no limit
])
def test_usable_cpus_is_the_affinity_capped_by_the_cgroup_quota(tmp_path, files, affinity, expected):
    root = cgroup(tmp_path / "cg", files)
    assert host.usable_cpus(affinity, root, proc_cgroup=tmp_path / "none") == expected  # a container's view: "/"
    (tmp_path / "self").write_text("0::/\n")
    assert host.usable_cpus(affinity, root, proc_cgroup=tmp_path / "self") == expected


@pytest.mark.parametrize(("proc", "files", "expected"), [
    ("0::/user.slice/job\n", {"user.slice/job/cpu.max": "100000 100000", "cpu.max": "max 100000"}, 1),
    ("0::/a/b\n", {"a/cpu.max": "200000 100000", "a/b/cpu.max": "max 100000"}, 2),  # the parent's limit
    ("0::/a/b\n", {"a/b/cpu.max": "300000 100000", "a/cpu.max": "max 100000"}, 3),
    ("4:memory:/x\n1:cpu,cpuacct:/k8s/pod\n0::/\n",                                 # v1, nested
     {"cpu,cpuacct/k8s/pod/cpu.cfs_quota_us": "250000", "cpu,cpuacct/k8s/pod/cpu.cfs_period_us": "100000"}, 2),
    ("0::/other\n", {"a/b/cpu.max": "100000 100000"}, 8),                              # another cgroup's limit
])
def test_usable_cpus_reads_this_process_cgroup_and_its_ancestors(tmp_path, proc, files, expected):
    (tmp_path / "self").write_text(proc)
    assert host.usable_cpus(set(range(8)), cgroup(tmp_path / "cg", files), proc_cgroup=tmp_path / "self") == expected


def test_capped_threads_never_exceeds_the_usable_cores():
    assert host.capped_threads(2, usable=1) == 1
    assert host.capped_threads(2, usable=4) == 2
    assert host.capped_threads(None, usable=3) == 3
    assert host.capped_threads(8, usable=8) == 8
    assert host.capped_threads(None) == host.usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.fixture()
def one_core():
    """This process restricted to one of its cores (as `taskset -c 0` would), then restored."""
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)
    torch.set_num_threads(threads)


def test_the_build_never_uses_more_threads_than_usable_cores(one_core, tmp_path, monkeypatch):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    spec = dataclasses.replace(tiny.TinySpec(), name="tiny-threads-test", sft_steps=2, sft_batch=4)
    seen = []
    monkeypatch.setenv("RLREASON_BUILD_THREADS", "2")  # asks for more than the one usable core
    tiny.ensure(spec, log=lambda *a: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {1}
    monkeypatch.delenv("RLREASON_BUILD_THREADS")
    assert tiny.build_threads() == 1


@pytest.mark.parametrize("threads", [2, None])  # None: torch's default, which knows nothing of the affinity
def test_the_recipe_never_sets_more_threads_than_usable_cores(one_core, tmp_path, threads):
    torch.set_num_threads(2)
    make_accelerator(demo_config(output_dir=str(tmp_path / "run"), num_threads=threads))
    assert torch.get_num_threads() == 1


def test_the_tiny_configs_default_to_one_thread():
    for name in ("tiny_cpu", "tiny_moe_cpu", "distill_offline_tiny", "distill_onpolicy_tiny"):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert cfg["num_threads"] == 1, name
    assert tiny.BUILD_THREADS == 2  # built with 2 (passive) threads where 2 cores are usable


def test_openmp_threads_wait_passively_unless_the_environment_says_otherwise():
    """Set when rlreason is imported, before torch: libgomp reads it once, at load."""
    import subprocess
    import sys

    code = "import rlreason, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    assert subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, check=True).stdout.strip() == "ACTIVE"


def test_the_cache_key_holds_the_build_thread_count(monkeypatch):
    """Weights built with 1 and 2 threads differ: they must not share a cache folder."""
    keys = set()
    for n in (1, 2):
        monkeypatch.setattr(tiny, "build_threads", lambda n=n: n)
        keys.add(tiny.TinySpec().key())
    assert len(keys) == 2
