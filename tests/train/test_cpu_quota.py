"""cpu_quota: the CPU time a process's cgroups allow, read as the kernel writes it (v1 and v2, nested, namespaced)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pynodeta.train.cpu_quota import cpu_quota, tightest_quota

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmark_scripts import load_script  # noqa: E402


def fake_proc(tmp_path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc with self/cgroup and self/mountinfo; mounts: (root, mount point, fstype, super options)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    lines = [f"{30 + i} 23 0:{40 + i} {root} {point.replace(' ', chr(92) + '040')} rw,relatime - {fstype} {fstype} "
             f"{options}" for i, (root, point, fstype, options) in enumerate(mounts)]
    (proc / "self" / "mountinfo").write_text("\n".join([
        "22 1 259:1 / / rw,relatime - ext4 /dev/vda rw", *lines,
        "60 22 0:50 / /proc rw,nosuid - proc proc rw"]) + "\n")
    return proc


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_v2_the_tightest_level_from_the_process_cgroup_up_to_the_mount_counts(tmp_path):
    mount = tmp_path / "sys fs cgroup"  # a space in the mount point: escaped as \040 in mountinfo
    write(mount, cpu_max="max 100000")
    write(mount / "user.slice", cpu_max="300000 100000")
    write(mount / "user.slice" / "job", cpu_max="150000 100000")
    proc = fake_proc(tmp_path, "0::/user.slice/job\n", [("/", str(mount), "cgroup2", "rw,nsdelegate")])
    assert cpu_quota(proc) == 1.5
    write(mount / "user.slice", cpu_max="100000 100000")  # a parent's limit binds its children
    assert cpu_quota(proc) == 1.0
    write(mount / "user.slice", cpu_max="max 100000")
    write(mount / "user.slice" / "job", cpu_max="max 100000")
    assert cpu_quota(proc) is None  # no level sets a limit


def test_v1_reads_the_cpu_controllers_mount_with_its_period(tmp_path):
    mount = tmp_path / "cpu,cpuacct"
    write(mount, cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    write(mount / "docker" / "abc", cpu_cfs_quota_us="250000", cpu_cfs_period_us="50000")
    memory = tmp_path / "memory"
    write(memory / "docker" / "abc", cpu_cfs_quota_us="10000", cpu_cfs_period_us="100000")  # not the cpu controller
    cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/\n0::/\n"
    proc = fake_proc(tmp_path, cgroup, [("/", str(memory), "cgroup", "rw,memory"),
                                        ("/", str(mount), "cgroup", "rw,cpu,cpuacct"),
                                        ("/", str(tmp_path / "cpuacct"), "cgroup", "rw,cpuacct")])
    assert cpu_quota(proc) == 5.0


def test_v2_the_binding_cgroups_time_is_its_cpu_stat_usage(tmp_path):
    mount = tmp_path / "cgroup"
    write(mount / "pod", cpu_max="200000 100000", cpu_stat="usage_usec 3500000\nuser_usec 3000000\nsystem_usec 1")
    write(mount / "pod" / "worker", cpu_max="max 100000", cpu_stat="usage_usec 10")
    quota = tightest_quota(fake_proc(tmp_path, "0::/pod/worker\n", [("/", str(mount), "cgroup2", "rw")]))
    assert quota.cores == 2.0 and quota.used_seconds() == 3.5  # the level that sets the limit, not the process's


def test_every_level_with_a_limit_is_read_with_its_own_time_the_tightest_first(tmp_path):
    from pynodeta.train.cpu_quota import quota_levels

    mount = tmp_path / "cgroup"
    write(mount / "slice", cpu_max="800000 100000", cpu_stat="usage_usec 9000000")
    write(mount / "slice" / "job", cpu_max="max 100000", cpu_stat="usage_usec 7")
    write(mount / "slice" / "job" / "box", cpu_max="400000 100000", cpu_stat="usage_usec 2000000")
    proc = fake_proc(tmp_path, "0::/slice/job/box\n", [("/", str(mount), "cgroup2", "rw")])
    levels = quota_levels(proc)
    assert [(level.cores, level.used_seconds()) for level in levels] == [(4.0, 2.0), (8.0, 9.0)]
    assert tightest_quota(proc) == levels[0]
    assert quota_levels(tmp_path / "no-proc") == []


def test_v1_the_binding_cgroups_time_is_its_cpuacct_usage_on_a_shared_or_a_parallel_mount(tmp_path):
    shared = tmp_path / "cpu,cpuacct"
    write(shared / "docker" / "abc", cpu_cfs_quota_us="100000", cpu_cfs_period_us="100000",
          cpuacct_usage="2500000000")
    proc = fake_proc(tmp_path, "4:cpu,cpuacct:/docker/abc\n", [("/", str(shared), "cgroup", "rw,cpu,cpuacct")])
    assert tightest_quota(proc).used_seconds() == 2.5
    # cpu and cpuacct mounted apart: the same path in the cpuacct hierarchy
    cpu, cpuacct = tmp_path / "cpu", tmp_path / "cpuacct"
    write(cpu / "job", cpu_cfs_quota_us="150000", cpu_cfs_period_us="100000")
    write(cpuacct / "job", cpuacct_usage="4000000000")
    mounts = [("/", str(cpu), "cgroup", "rw,cpu"), ("/", str(cpuacct), "cgroup", "rw,cpuacct")]
    proc = fake_proc(tmp_path / "apart", "3:cpuacct:/job\n2:cpu:/job\n", mounts)
    assert tightest_quota(proc).cores == 1.5 and tightest_quota(proc).used_seconds() == 4.0
    # elsewhere in the cpuacct hierarchy: its group is another set of processes, so no time is read
    proc = fake_proc(tmp_path / "elsewhere", "3:cpuacct:/\n2:cpu:/job\n", mounts)
    assert tightest_quota(proc).cores == 1.5 and tightest_quota(proc).used_seconds() is None
    write(cpuacct / "job", cpuacct_usage="not a number")
    proc = fake_proc(tmp_path / "garbled", "3:cpuacct:/job\n2:cpu:/job\n", mounts)
    assert tightest_quota(proc).used_seconds() is None


def test_a_container_sees_its_own_cgroup_at_the_mount_point(tmp_path):
    mount = tmp_path / "cgroup"
    write(mount, cpu_max="200000 100000")  # the container's limit, at the root of what it sees
    proc = fake_proc(tmp_path, "0::/\n", [("/", str(mount), "cgroup2", "rw")])
    assert cpu_quota(proc) == 2.0
    # without a cgroup namespace: the mount shows the container's cgroup, and the path names it in full
    proc = fake_proc(tmp_path / "b", "0::/kubepods/pod1/c1\n", [("/kubepods/pod1/c1", str(mount), "cgroup2", "rw")])
    assert cpu_quota(proc) == 2.0


@pytest.mark.parametrize("cgroup, mounts", [
    ("", []),  # no cgroups at all
    ("0::/\n", []),  # a membership but no mount
    ("0::/x\n", [("/", "/nonexistent-cgroup-mount", "cgroup2", "rw")]),  # a mount without the files
])
def test_no_limit_readable_is_none(tmp_path, cgroup, mounts):
    assert cpu_quota(fake_proc(tmp_path, cgroup, mounts)) is None


def test_no_proc_is_none(tmp_path):
    assert cpu_quota(tmp_path / "no-proc") is None


def test_a_child_in_a_real_cgroup_with_a_quota_reads_it_and_lowers_torchs_default_to_it():
    # the benchmark's own cgroup maker (threads_under_load's 'a CPU quota'): one way to make and join one
    cgroup, why_not = load_script("threads_under_load").quota_cgroup(None, 1.0)
    if cgroup is None:
        pytest.skip(f"needs a cgroup with a CPU quota file it may write (root): {why_not}")
    try:
        code = ("import torch; torch.set_num_threads(2)\n"
                "from pynodeta.train.cpu_quota import cpu_quota\n"
                "from pynodeta.train.adaptive_threads import default_threads_within_quota\n"
                "print(cpu_quota()); default_threads_within_quota('--num_threads'); print(torch.get_num_threads())")
        finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                  preexec_fn=cgroup.join)
        assert finished.returncode == 0, finished.stderr
        lines = finished.stdout.splitlines()
        assert lines[0] == "1.0" and lines[-1] == "1"
        assert "CPU quota (its cgroup's cpu.max, a container's CPU limit) is 1 core: 1 thread(s) instead of " \
               "torch's default 2" in lines[1] and "pass --num_threads to choose" in lines[1]
    finally:
        cgroup.remove()


def _governor_beside_a_busy_sibling(governor_group, sibling_group, show: str) -> list[str]:
    """The lines a fresh process in ``governor_group`` prints: whether every quota level's CPU time reads, then
    after one 1.5 s window of a ThreadGovernor ``show`` (an expression of ``g``), while a process spins in
    ``sibling_group``."""
    sibling = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=sibling_group.join)
    try:
        code = ("import time\n"
                "from pynodeta.train.adaptive_threads import ThreadGovernor\n"
                "g = ThreadGovernor(2, 1.0, jitter=0.0, say=print)\n"
                "print(g.core_use.quota, None not in g.core_use.read().group)\n"
                f"g.start(); time.sleep(1.5); g.poll(); print(repr({show}))")
        finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                  preexec_fn=governor_group.join)
    finally:
        sibling.kill()
        sibling.wait()
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.splitlines()


def test_a_governor_in_a_real_cgroup_sees_what_a_busy_sibling_uses_of_the_quota():
    cgroup, why_not = load_script("threads_under_load").quota_cgroup(None, 2.0)
    if cgroup is None:
        pytest.skip(f"needs a cgroup with a CPU quota file it may write (root): {why_not}")
    try:
        lines = _governor_beside_a_busy_sibling(cgroup, cgroup, "g.quota_others")
    finally:
        cgroup.remove()
    assert lines[0] == "2.0 True"
    assert float(lines[-1]) >= 0.5, lines  # one spinning process: about one core of the quota's two


def test_a_governor_in_nested_real_cgroups_reads_each_levels_time_apart():
    # a 2-core group holding this run's 2-core group and a busy sibling's: the inner level sees nothing of the
    # sibling, the enclosing one about one core of it
    outer, why_not = load_script("threads_under_load").quota_cgroup(None, 2.0)
    if outer is None:
        pytest.skip(f"needs a cgroup with a CPU quota file it may write (root): {why_not}")
    made = [outer]
    try:
        try:
            made.append(outer.child("run", 2.0))
            made.append(outer.child("sibling", 2.0))
        except OSError as error:
            pytest.skip(f"needs nested cgroups with CPU quotas: {error}")
        lines = _governor_beside_a_busy_sibling(made[1], made[2], "g.quota_use")
    finally:
        for cgroup in reversed(made):
            cgroup.remove()
    assert lines[0] == "2.0 True"
    levels = ast.literal_eval(lines[-1])  # [(cores, others), ...], the inner level first at equal quotas
    assert [cores for cores, _ in levels] == [2.0, 2.0]
    assert levels[0][1] < 0.3 and levels[1][1] >= 0.5, levels
