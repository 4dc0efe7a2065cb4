"""Fewer torch threads while other processes use this machine's cores, all of them again when they stop.

torch's CPU kernels run on an OpenMP team, and every op ends at a barrier where the team's threads spin,
then wait, for the slowest one. When other processes hold some of the cores, a thread of the team is
descheduled, and every op waits for it to get a core again. Small ops suffer most: on a 2-core machine, a
digits diffusion training step took about twice as long on 2 threads as on 1 while another process kept one
core busy, though 2 threads are 1.5× faster on an idle machine (``benchmarks/threads_under_load.py``).

``ThreadGovernor.poll()``, called between batches, looks every ``every_seconds`` at how much of the cores
this process may run on (its CPU affinity) the other processes used in that time: the cores' busy time
from ``/proc/stat`` minus this process's own from ``/proc/self/stat``. It then sets torch's thread count to
the cores left, at least 1 and at most ``max_threads``. Linux only; elsewhere the thread count stays as it
is (said once). Every other process counts, this run's own DataLoader workers and DDP ranks included: they
compete for the same cores. Each window is ``every_seconds`` give or take a quarter, drawn afresh: runs
started together would otherwise measure the same windows and all take the same free cores at once, then
all give them back, over and over (three runs on 8 cores oversubscribed them half of the time in a
simulation of that; with the windows drawn, none did).

A CPU quota (a container's ``--cpus``, a Kubernetes CPU limit: the cgroup's ``cpu.max``, see
:mod:`pynodeta.train.cpu_quota`) caps the count too, from the start: a team of more threads than the quota's
whole cores is throttled core by core and stalls the same way. Where no thread count is asked for,
:func:`default_threads_within_quota` lowers torch's default (the host's cores) to the quota's. The quota is
shared by every process of the cgroup it is set on (DataLoader workers, other DDP ranks in one container):
what they used of it in the last window, read from the cgroup's own CPU time, is taken off it too, at every
level that sets a limit (a looser parent, a systemd slice, whose other children are busy can leave less than
the tightest level). Where a level's time cannot be read (a v1 cpuacct hierarchy laid out unlike the cpu
one), its cap is its whole quota.

Given ``advice``, the governor only advises: the first time the cores left are fewer than the run's
threads it says so once, with that fix, and leaves the count alone. ``pynodeta fit`` adds such an advisor
to every CPU fit of more than one thread without ``AdaptiveThreads`` (``AdaptiveThreads(adapt=False)``),
and ``sample`` / ``evaluate`` to a CPU run of more than one thread without ``--adaptive-threads``.

``AdaptiveThreads`` is the Lightning callback that polls between training and validation batches;
``pynodeta sample`` / ``evaluate --adaptive-threads`` install a governor for the command. An installed
governor is also polled between batches of images (``generate_batches``), so a fit's sampling evaluations
and the commands' image batches follow the load too.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import lightning
import torch

from pynodeta.train.cpu_quota import CpuQuota, cpu_quota, quota_levels

__all__ = ["AdaptiveThreads", "ThreadGovernor", "CoreUse", "Reading", "threads_for", "quota_threads",
           "default_threads_within_quota", "use_threads", "install", "uninstall", "command_scope", "poll_installed"]

_installed: list[ThreadGovernor] = []  # the innermost (last) one is polled
FIT_ADVICE = ("add the callback pynodeta.train.AdaptiveThreads (--trainer.callbacks+=pynodeta.train.AdaptiveThreads) "
              "to use fewer while the cores are busy, or pass --num_threads {threads}")
COMMAND_ADVICE = "pass --adaptive-threads to use fewer while the cores are busy, or --num-threads {threads}"


def threads_for(others: float, cores: int, max_threads: int, quota: float | None = None,
                quota_others: float | None = None) -> int:
    """The threads to run when other processes use ``others`` (in cores) of the ``cores`` this process may
    run on: the cores left, with a quarter of a core of allowance for background noise, in [1, max_threads],
    and no more than the CPU quota's whole cores, nor than what the cgroup's other processes leave of it
    (``quota_others`` cores used, with the same allowance). Half a core in use elsewhere already costs a
    second thread more than it gives (measured on 2 cores)."""
    left = math.floor(cores - others + 0.25)
    if quota is not None:
        left = min(left, quota_threads(quota))
        if quota_others is not None:
            left = min(left, math.floor(quota - quota_others + 0.25))
    return max(1, min(max_threads, left))


def quota_threads(quota: float) -> int:
    """The most threads a CPU quota of ``quota`` cores runs without throttling a thread mid-op: its whole
    cores, at least 1 (the throttle is hard, so no allowance as for other processes' load)."""
    return max(1, math.floor(quota))


def use_threads(threads: int | None, flag: str) -> None:
    """A command's thread count: ``threads`` as asked, or where none was (None) torch's default within the
    CPU quota (:func:`default_threads_within_quota`, which names ``flag``)."""
    if threads is None:
        default_threads_within_quota(flag)
    else:
        torch.set_num_threads(threads)


def default_threads_within_quota(flag: str, say: Callable[[str], None] | None = None,
                                 read_quota: Callable[[], float | None] | None = None) -> None:
    """For a command that was not given a thread count: torch's default is the host's cores, which a cgroup
    CPU quota (``read_quota()``, default :func:`cpu_quota`) may not allow. Then run on the quota's whole
    cores, and say so with ``flag``, the option that chooses the count."""
    quota = (read_quota or cpu_quota)()
    default = torch.get_num_threads()
    if quota is None or quota_threads(quota) >= default:
        return
    torch.set_num_threads(quota_threads(quota))
    (say or _print)(f"{_quota_is(quota)}: {quota_threads(quota)} thread(s) instead of torch's default {default}, "
                    f"which would wait for one another at every op; pass {flag} to choose")


class Reading(NamedTuple):
    """CPU seconds so far: the cores' busy time, this process's own, and that of each cgroup that sets a CPU
    quota on it (in :attr:`CoreUse.quotas`' order; None where a level's time cannot be read)."""

    busy: float
    own: float
    group: tuple[float | None, ...] = ()


class CoreUse:
    """Clock ticks of the cores this process may run on: busy in total, and this process's own (Linux /proc);
    and the CPU time of every cgroup that sets a quota on it (:attr:`quotas`, the tightest first)."""

    def __init__(self, proc: Path = Path("/proc")):
        self.proc = proc
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.quotas: list[CpuQuota] = quota_levels(proc)

    @property
    def cpu_quota(self) -> CpuQuota | None:
        """The level whose limit binds this process (the tightest), None: no limit."""
        return self.quotas[0] if self.quotas else None

    @property
    def quota(self) -> float | None:
        """Cores' worth of CPU time the cgroups allow, None: no limit."""
        return None if self.cpu_quota is None else self.cpu_quota.cores

    def available(self) -> bool:
        try:
            self.read()
        except (OSError, ValueError, IndexError):
            return False
        return bool(self.cores)

    def read(self) -> Reading:
        """Busy seconds of the cores and seconds of this process, both counted since boot, and seconds of each
        quota level's cgroup since it was made."""
        wanted = {f"cpu{core}" for core in self.cores}
        busy = 0
        for line in (self.proc / "stat").read_text().splitlines():
            name, *fields = line.split()
            if name in wanted:
                # user nice system idle iowait irq softirq steal (guest time is inside user and nice)
                ticks = [int(v) for v in fields[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]
        # the fields after the command name, which may itself contain spaces and ')'
        own = (self.proc / "self" / "stat").read_text().rpartition(")")[2].split()
        group = tuple(level.used_seconds() for level in self.quotas)
        return Reading(busy / self.tick, (int(own[11]) + int(own[12])) / self.tick, group)


class ThreadGovernor:
    """Sets torch's thread count to the cores other processes leave, re-read about every ``every_seconds``
    (each window drawn from ``every_seconds`` × (1 ± ``jitter``) by ``rng``)."""

    def __init__(self, max_threads: int, every_seconds: float = 5.0, *, core_use: CoreUse | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 say: Callable[[str], None] | None = None, advice: str | None = None,
                 jitter: float = 0.25, rng: random.Random | None = None):
        _check_threads(max_threads)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
        self.advice, self.advised = advice, False  # advice: say it once instead of changing the count
        self.max_threads, self.every_seconds = max_threads, _checked_seconds(every_seconds)
        self.jitter, self.rng = float(jitter), rng or random.Random()  # seeded from the OS: differs per process
        self.core_use = core_use or CoreUse()
        self.clock, self.set_threads = clock, set_threads
        self.say = say or _print
        self.threads = max_threads
        self.others: float | None = None  # cores the other processes used in the last window
        # (cores, cores' worth of them the cgroup's other processes used, None: unreadable) per quota level,
        # the tightest first; quota_others: the tightest level's
        self.quota_use: list[tuple[float, float | None]] = []
        self.quota_others: float | None = None
        self._last: tuple[float, Reading] | None = None  # (clock, reading) at the window's start
        self._next = math.inf  # no window before start(): a poll does nothing

    def start(self) -> None:
        """Run on ``max_threads`` and begin the first window (or say once why the count cannot follow the load)."""
        self.stop()
        if not self.core_use.available():
            if self.advice is None:  # asked to adapt: say why it cannot; an advisor has nothing to say
                self.say(f"pynodeta: this system has no /proc to read the cores' load from; {self.max_threads} "
                         f"thread(s) throughout")
            return
        now = self.clock()
        self._last, self._next = (now, self.core_use.read()), now + self._window()
        quota = self.core_use.quota
        if quota is None or quota_threads(quota) >= self.max_threads:
            return
        said = _quota_is(quota)
        if self.advice is not None:
            self.advised = True
            self.say(f"{said} while this run has {self.threads} threads, which then wait for one another at every "
                     f"op; {self.advice.format(threads=quota_threads(quota))}")
        else:
            self._run_on(quota_threads(quota))
            self.say(f"{said}: running on {self.threads} thread(s), not {self.max_threads}")

    def poll(self) -> None:
        """Cheap between batches: reads /proc only once a window has passed."""
        now = self.clock()
        if now < self._next:
            return
        start, before = self._last
        reading = self.core_use.read()
        elapsed = now - start  # at least the window
        self._last, self._next = (now, reading), now + self._window()
        own = reading.own - before.own
        self.others = max(0.0, (reading.busy - before.busy) - own) / elapsed
        self.quota_use = [(level.cores, _others_share(then, after, own, elapsed))
                          for level, then, after in zip(self.core_use.quotas, before.group, reading.group)]
        self.quota_others = self.quota_use[0][1] if self.quota_use else None
        cores, quota = len(self.core_use.cores), self.core_use.quota
        # the count each quota level leaves (the tightest one's whole cores among them); the least binds
        by_level = [threads_for(self.others, cores, self.max_threads, level_cores, level_others)
                    for level_cores, level_others in self.quota_use]
        threads = min(by_level, default=threads_for(self.others, cores, self.max_threads))
        # what held the count down: the cores' load, or, where it alone leaves fewer, a quota's other users
        by_quota = threads < threads_for(self.others, cores, self.max_threads, quota)
        if by_quota:
            binding = by_level.index(threads)
            level_cores, level_others = self.quota_use[binding]
            where = "this cgroup" if binding == 0 else "an enclosing cgroup"
            used = f"other processes in {where} used {level_others:.1f} of its CPU quota of {level_cores:g} cores"
        else:
            used = f"other processes used {self.others:.1f} of the {cores} cores"
        if self.advice is not None:
            if threads < self.threads and not self.advised:
                self.advised = True
                self.say(f"pynodeta: {used} in the last {elapsed:.0f} s while this run has {self.threads} threads, "
                         f"which then wait for one another at every op (a digits training step ran about 2x slower "
                         f"than on 1 thread); {self.advice.format(threads=threads)}")
            return
        if threads == self.threads:
            return
        self._run_on(threads)
        ceiling = threads_for(0.0, cores, self.max_threads, quota)  # the count on free cores and a free quota
        if threads < ceiling:
            self.say(f"pynodeta: {used} in the last {elapsed:.0f} s: running on {threads} thread(s), back up to "
                     f"{ceiling} when {'it is' if by_quota else 'they are'} free")
        else:
            of_quota = "".join(f", {level_others:.1f} of the quota's {level_cores:g}"
                               for level_cores, level_others in self.quota_use if level_others is not None)
            self.say(f"pynodeta: the cores are free again (other processes used {self.others:.1f} of "
                     f"{cores}{of_quota}): running on {threads} threads")

    def _window(self) -> float:
        return self.every_seconds * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0))

    def stop(self) -> None:
        """Back to ``max_threads``."""
        self._run_on(self.max_threads)

    def _run_on(self, threads: int) -> None:
        self.set_threads(threads)
        self.threads = threads


def install(governor: ThreadGovernor) -> None:
    """Start ``governor`` and let :func:`poll_installed` poll it, until :func:`uninstall`."""
    governor.start()
    _installed.append(governor)


def uninstall(governor: ThreadGovernor) -> None:
    """Stop polling ``governor``; the thread count is its ``max_threads`` again."""
    if governor in _installed:
        _installed.remove(governor)
        governor.stop()


def poll_installed() -> None:
    """Poll the governor installed last, if any: called between batches of images."""
    if _installed:
        _installed[-1].poll()


@contextlib.contextmanager
def command_scope():
    """A command's lifetime: the governors installed inside it are uninstalled when it ends."""
    depth = len(_installed)
    try:
        yield
    finally:
        for governor in reversed(_installed[depth:]):
            uninstall(governor)


class AdaptiveThreads(lightning.Callback):
    """Train on up to ``max_threads`` torch threads, fewer while other processes use the cores (see the
    module's text). ``max_threads`` None: the thread count the fit starts with (``num_threads``).
    ``adapt=False``: keep the count, and say once when the cores are too busy for it."""

    def __init__(self, max_threads: int | None = None, every_seconds: float = 5.0, adapt: bool = True):
        if max_threads is not None:
            _check_threads(max_threads, " or None (the fit's num_threads)")
        if not isinstance(adapt, bool):
            raise ValueError(f"adapt must be true or false, got {adapt!r}")
        self.max_threads, self.every_seconds, self.adapt = max_threads, _checked_seconds(every_seconds), adapt
        self.governor: ThreadGovernor | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.governor is None:
            quiet = not trainer.is_global_zero  # every rank adapts; rank 0 says so
            self.governor = ThreadGovernor(self.max_threads or torch.get_num_threads(), self.every_seconds,
                                           say=(lambda line: None) if quiet else None,
                                           advice=None if self.adapt else FIT_ADVICE)
            install(self.governor)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.governor is not None:
            uninstall(self.governor)
            self.governor = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._poll()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._poll()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._poll()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._poll()

    def _poll(self) -> None:
        if self.governor is not None:
            self.governor.poll()


def _others_share(then: float | None, after: float | None, own: float, elapsed: float) -> float | None:
    """Cores' worth of a cgroup's CPU time that its processes other than this one used in a window (None where
    the group's time cannot be read)."""
    return None if then is None or after is None else max(0.0, (after - then) - own) / elapsed


def _quota_is(quota: float) -> str:
    cores = "1 core" if quota == 1 else f"{quota:g} cores"
    return f"pynodeta: this process's CPU quota (its cgroup's cpu.max, a container's CPU limit) is {cores}"


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _check_threads(value, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_threads must be an integer >= 1{alternative}, got {value!r}")


def _checked_seconds(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"every_seconds must be a number > 0, got {value!r}")
    return float(value)
