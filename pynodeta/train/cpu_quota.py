"""The CPU time this process may use, from its cgroups' CFS bandwidth limits.

A container's ``--cpus``, a Kubernetes CPU limit or a systemd ``CPUQuota`` is a quota of CPU time per period,
not a set of cores: ``os.sched_getaffinity`` and torch's default thread count still see every core of the
host. A torch thread team larger than the quota is throttled at every period's end, core by core, and its
threads then wait for one another at every op's barrier, as they do for a core another process holds.

Linux only: cgroup v2 (``cpu.max``: "max 100000" or "150000 100000") and v1 (``cpu.cfs_quota_us``, -1 for
no limit, over ``cpu.cfs_period_us``). Every level from the process's cgroup up to its hierarchy's mount
point is read, since a parent's limit binds its children too; the tightest one counts.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["cpu_quota"]


def cpu_quota(proc: Path = Path("/proc")) -> float | None:
    """Cores' worth of CPU time per period that this process's cgroups allow (1.5: one and a half cores),
    or None where no limit is set or none can be read (no cgroups, not Linux)."""
    try:
        memberships = _memberships((proc / "self" / "cgroup").read_text())
        mounts = _cpu_mounts((proc / "self" / "mountinfo").read_text())
    except OSError:
        return None
    limits = []
    for version, mount_root, mount_point in mounts:
        path = memberships.get(version)
        if path is None:
            continue
        # the mount shows the hierarchy from mount_root down; a path outside it (another namespace's view)
        # is taken from the mount point, whose own limit is then still read
        try:
            relative = PurePosixPath(path).relative_to(mount_root)
        except ValueError:
            relative = PurePosixPath(path.lstrip("/"))
        folder = Path(mount_point) / relative
        while True:
            limit = _limit(folder, version)
            if limit is not None:
                limits.append(limit)
            if folder == Path(mount_point) or folder.parent == folder:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _memberships(text: str) -> dict[str, str]:
    """{'v2': path} from the unified line ``0::/path``, {'v1': path} from the line whose controllers
    include cpu (``4:cpu,cpuacct:/path``)."""
    found = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            found["v2"] = path
        elif "cpu" in controllers.split(","):
            found["v1"] = path
    return found


def _cpu_mounts(text: str) -> list[tuple[str, str, str]]:
    """(version, root of the hierarchy shown, mount point) of every cgroup2 mount and every cgroup v1 mount
    with the cpu controller, from /proc/self/mountinfo (``... root mountpoint ... - fstype source options``)."""
    mounts = []
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            mounts.append(("v2", root, mount_point))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts.append(("v1", root, mount_point))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040 ...)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _limit(folder: Path, version: str) -> float | None:
    """The cores' worth of CPU time one cgroup folder allows, None if it sets no limit or has no such file."""
    try:
        if version == "v2":
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
