"""The CPU time this process may use, from its cgroups' CFS bandwidth limits.

A container's ``--cpus``, a Kubernetes CPU limit or a systemd ``CPUQuota`` is a quota of CPU time per period,
not a set of cores: ``os.sched_getaffinity`` and torch's default thread count still see every core of the
host. A torch thread team larger than the quota is throttled at every period's end, core by core, and its
threads then wait for one another at every op's barrier, as they do for a core another process holds.

Linux only: cgroup v2 (``cpu.max``: "max 100000" or "150000 100000") and v1 (``cpu.cfs_quota_us``, -1 for
no limit, over ``cpu.cfs_period_us``). Every level from the process's cgroup up to its hierarchy's mount
point is read, since a parent's limit binds its children too: the tightest one caps a thread team, and every
level's own CPU time tells what the processes beside this one leave of it (a looser parent whose other
children are busy can leave less than the tightest level).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["cpu_quota", "CpuQuota", "quota_levels", "tightest_quota"]


@dataclass(frozen=True)
class CpuQuota:
    """A CFS limit on this process: ``cores``' worth of CPU time per period, set on one cgroup whose whole
    subtree, this process included, shares it; ``usage``: that cgroup's file of the CPU time its processes
    have used (None where there is none to read)."""

    cores: float
    usage: Path | None

    def used_seconds(self) -> float | None:
        """CPU seconds the cgroup's processes have used so far, None where it cannot be read."""
        if self.usage is None:
            return None
        try:
            text = self.usage.read_text()
            if self.usage.name == "cpu.stat":  # v2: "usage_usec N" among other lines
                fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
                return int(fields["usage_usec"]) / 1e6
            return int(text) / 1e9  # v1 cpuacct.usage: nanoseconds
        except (OSError, ValueError, KeyError):
            return None


def cpu_quota(proc: Path = Path("/proc")) -> float | None:
    """Cores' worth of CPU time per period that this process's cgroups allow (1.5: one and a half cores),
    or None where no limit is set or none can be read (no cgroups, not Linux)."""
    quota = tightest_quota(proc)
    return None if quota is None else quota.cores


def tightest_quota(proc: Path = Path("/proc")) -> CpuQuota | None:
    """The cgroup level whose limit binds this process (the smallest), None where none is set or readable."""
    levels = quota_levels(proc)
    return levels[0] if levels else None


def quota_levels(proc: Path = Path("/proc")) -> list[CpuQuota]:
    """Every cgroup level that sets a CPU limit on this process, in every cgroup hierarchy it belongs to,
    the tightest first (levels of equal limits: the process's own side first); empty where none is set
    or readable."""
    try:
        memberships = _memberships((proc / "self" / "cgroup").read_text())
        mounts = _cgroup_mounts((proc / "self" / "mountinfo").read_text())
    except OSError:
        return []
    limits = []
    for kind, mount_root, mount_point in mounts:
        if kind == "cpuacct" or kind not in memberships:
            continue
        relative = _relative(memberships[kind], mount_root)
        while True:
            limit = _limit(Path(mount_point) / relative, kind)
            if limit is not None:
                usage = _usage_file(kind, relative, mount_root, mount_point, mounts, memberships)
                limits.append(CpuQuota(limit, usage))
            if relative == PurePosixPath("."):
                break
            relative = relative.parent
    return sorted(limits, key=lambda quota: quota.cores)  # stable: within a hierarchy, inner levels first


def _relative(path: str, mount_root: str) -> PurePosixPath:
    """A cgroup's path below its mount. The mount shows the hierarchy from mount_root down; a path outside it
    (another namespace's view) is taken from the mount point, whose own limit is then still read."""
    try:
        return PurePosixPath(path).relative_to(mount_root)
    except ValueError:
        return PurePosixPath(path.lstrip("/"))


def _usage_file(kind: str, relative: PurePosixPath, mount_root: str, mount_point: str,
                mounts: list[tuple[str, str, str]], memberships: dict[str, str]) -> Path | None:
    """The file of the CPU time used by the cgroup at ``relative`` below the cpu mount: v2 ``cpu.stat``;
    v1 ``cpuacct.usage`` on a mount with both controllers, or on a cpuacct mount of its own when this process
    sits at the same path in both hierarchies (systemd keeps them in step), else None."""
    if kind == "v2":
        return Path(mount_point) / relative / "cpu.stat"
    if kind == "cpu,cpuacct":
        return Path(mount_point) / relative / "cpuacct.usage"
    for other_kind, other_root, other_point in mounts:
        if other_kind == "cpuacct" and other_root == mount_root and memberships.get("cpuacct") == memberships[kind]:
            return Path(other_point) / relative / "cpuacct.usage"
    return None


def _memberships(text: str) -> dict[str, str]:
    """{'v2': path} from the unified line ``0::/path``; for v1, the path of the line holding the cpu
    controller, under 'cpu,cpuacct' where cpuacct shares it (``4:cpu,cpuacct:/path``) else 'cpu', and
    the path of a line holding cpuacct alone under 'cpuacct'."""
    found = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        names = controllers.split(",")
        if hierarchy == "0" and controllers == "":
            found["v2"] = path
        elif "cpu" in names:
            found["cpu,cpuacct" if "cpuacct" in names else "cpu"] = path
        elif "cpuacct" in names:
            found["cpuacct"] = path
    return found


def _cgroup_mounts(text: str) -> list[tuple[str, str, str]]:
    """(kind, root of the hierarchy shown, mount point) of every cgroup2 mount ('v2') and every cgroup v1
    mount with the cpu or the cpuacct controller (kinds as in :func:`_memberships`), from
    /proc/self/mountinfo (``... root mountpoint ... - fstype source options``)."""
    mounts = []
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        options = tail[2].split(",")
        if tail[0] == "cgroup2":
            mounts.append(("v2", root, mount_point))
        elif tail[0] == "cgroup" and "cpu" in options:
            mounts.append(("cpu,cpuacct" if "cpuacct" in options else "cpu", root, mount_point))
        elif tail[0] == "cgroup" and "cpuacct" in options:
            mounts.append(("cpuacct", root, mount_point))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040 ...)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _limit(folder: Path, kind: str) -> float | None:
    """The cores' worth of CPU time one cgroup folder allows, None if it sets no limit or has no such file."""
    try:
        if kind == "v2":
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
