"""AdaptiveThreads: fewer torch threads while other processes use the cores, all of them again afterwards."""

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning
import pytest
import torch
from torch import nn

from pynodeta.train import AdaptiveThreads
from pynodeta.train import adaptive_threads as at
from pynodeta.train.cpu_quota import CpuQuota


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    assert not at._installed, "a test left a governor installed"


@pytest.mark.parametrize("others, cores, max_threads, expected", [
    (0.0, 2, 2, 2), (0.1, 2, 2, 2),  # idle, background noise
    (0.5, 2, 2, 1), (1.0, 2, 2, 1), (0.7, 2, 2, 1),  # half a core in use already costs the second thread
    (2.0, 2, 2, 1), (5.0, 2, 2, 1),  # never below one thread
    (0.0, 16, 4, 4), (4.0, 16, 8, 8), (10.0, 16, 8, 6), (13.9, 16, 8, 2),  # at most max_threads, else the cores left
])
def test_the_thread_count_is_the_cores_left(others, cores, max_threads, expected):
    assert at.threads_for(others, cores, max_threads) == expected


@pytest.mark.parametrize("others, cores, max_threads, quota, expected", [
    (0.0, 16, 8, 2.5, 2), (0.0, 16, 8, 2.0, 2), (0.0, 16, 8, 1.99, 1),  # a quota's whole cores: no allowance
    (0.0, 2, 2, 0.5, 1),  # never below one thread
    (13.0, 16, 8, 4.0, 3), (0.0, 16, 3, 4.0, 3),  # the cores left, and max_threads, still bind below it
])
def test_a_cpu_quota_caps_the_count_at_its_whole_cores(others, cores, max_threads, quota, expected):
    assert at.threads_for(others, cores, max_threads, quota) == expected


@pytest.mark.parametrize("quota, quota_others, expected", [
    (4.0, None, 4), (4.0, 0.0, 4), (4.0, 0.1, 4),  # its time unreadable, or only background noise in it
    (4.0, 2.0, 2), (4.0, 1.8, 2), (4.0, 3.9, 1), (4.0, 9.0, 1),  # the rest of the quota, at least one thread
    (2.5, 0.2, 2),  # never above the quota's whole cores
])
def test_what_the_cgroups_other_processes_use_of_the_quota_is_taken_off_it(quota, quota_others, expected):
    assert at.threads_for(0.0, 16, 8, quota, quota_others) == expected
    assert at.threads_for(14.0, 16, 8, quota, quota_others) == min(expected, 2)  # the busy host still binds


class FakeCores:
    """Core ticks driven by the test: ``others`` and ``own`` cores busy per second of the fake clock; with a
    ``quota``, ``quota_others`` of them in the quota's cgroup (None: its time cannot be read); ``outer``:
    [cores, others] of looser levels enclosing it (others None: unreadable)."""

    def __init__(self, clock, cores=2, available=True):
        self.cores, self.clock, self._available = list(range(cores)), clock, available
        self.others, self.own, self.reads, self.quota, self.quota_others = 0.0, 0.0, 0, None, None
        self.outer: list[list] = []
        self.busy_total = self.own_total = self.group_total = 0.0
        self.outer_totals: list[float] = []
        self.last = 0.0

    @property
    def quotas(self):
        levels = [] if self.quota is None else [self.quota]
        return [CpuQuota(level_cores, None) for level_cores in levels + [level[0] for level in self.outer]]

    def available(self):
        return self._available

    def advance(self):
        elapsed, self.last = self.clock.now - self.last, self.clock.now
        self.busy_total += (self.others + self.own) * elapsed
        self.own_total += self.own * elapsed
        self.group_total += ((self.quota_others or 0.0) + self.own) * elapsed
        self.outer_totals += [0.0] * (len(self.outer) - len(self.outer_totals))
        for index, (_, level_others) in enumerate(self.outer):
            self.outer_totals[index] += ((level_others or 0.0) + self.own) * elapsed

    def read(self):
        self.reads += 1
        self.advance()
        group = [] if self.quota is None else [None if self.quota_others is None else self.group_total]
        group += [None if level_others is None else total
                  for (_, level_others), total in zip(self.outer, self.outer_totals)]
        return at.Reading(self.busy_total, self.own_total, tuple(group))


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


def governor(max_threads=2, cores=2, available=True):
    clock = FakeClock()
    core_use = FakeCores(clock, cores, available)
    calls, lines = [], []
    # windows of exactly 5 s: the drawn windows have tests of their own
    g = at.ThreadGovernor(max_threads, 5.0, core_use=core_use, clock=clock, set_threads=calls.append,
                          say=lines.append, jitter=0.0)
    return g, clock, core_use, calls, lines


def test_it_follows_the_others_load_down_and_back_up_reading_once_a_window():
    g, clock, cores, calls, lines = governor()
    g.start()
    assert calls == [2] and cores.reads == 1
    cores.own = 2.0  # its own two threads: not the others'
    clock.now = 4.9
    g.poll()
    assert cores.reads == 1  # inside the window: nothing read
    clock.now = 5.0
    g.poll()
    assert g.others == pytest.approx(0.0) and calls == [2] and not lines
    cores.others, cores.own = 1.0, 1.0
    clock.now = 10.0
    g.poll()
    assert g.others == pytest.approx(1.0) and calls == [2, 1] and g.threads == 1
    assert lines[-1] == ("pynodeta: other processes used 1.0 of the 2 cores in the last 5 s: running on 1 thread(s), "
                         "back up to 2 when they are free")
    clock.now = 15.0
    g.poll()
    assert calls == [2, 1] and len(lines) == 1  # unchanged: neither set nor said again
    cores.others = 0.0
    clock.now = 20.0
    g.poll()
    assert calls == [2, 1, 2] and g.threads == 2
    assert lines[-1] == "pynodeta: the cores are free again (other processes used 0.0 of 2): running on 2 threads"
    g.stop()
    assert calls[-1] == 2


def test_without_proc_it_says_so_once_and_keeps_the_count():
    g, clock, cores, calls, lines = governor(max_threads=3, available=False)
    g.start()
    for now in (10.0, 20.0, 30.0):
        clock.now = now
        g.poll()
    assert calls == [3] and cores.reads == 0
    assert lines == ["pynodeta: this system has no /proc to read the cores' load from; 3 thread(s) throughout"]
    advisor, _, _, _, advisor_lines = governor(available=False)
    advisor.advice = "pass --fix {threads}"
    advisor.start()
    assert not advisor_lines  # the advisor of every fit stays silent where it cannot read the load


@pytest.mark.parametrize("kwargs, match", [
    ({"max_threads": 0}, "max_threads must be an integer >= 1, got 0"),
    ({"max_threads": True}, "max_threads"),
    ({"max_threads": 1.5}, "max_threads"),
    ({"max_threads": 2, "every_seconds": 0}, "every_seconds must be a number > 0, got 0"),
    ({"max_threads": 2, "every_seconds": True}, "every_seconds"),
])
def test_bad_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        at.ThreadGovernor(**kwargs)
    with pytest.raises(ValueError, match=match.replace(", got 0", "")):
        AdaptiveThreads(**kwargs)


def test_proc_is_read_for_the_cores_of_the_affinity_and_this_process(tmp_path):
    (tmp_path / "self").mkdir()
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text("cpu  900 0 90 9000 90 0 0 0 0 0\n"
                                   "cpu0 100 10 20 5000 40 3 2 5 7 0\n"
                                   "cpu1 400 0 60 2000 50 0 0 0 0 0\n"
                                   "cpu2 50 0 5 3000 10 1 1 0 0 0\nintr 1 2 3\n")
    # a command name with spaces and a ')' of its own; utime and stime are the 14th and 15th fields
    (tmp_path / "self" / "stat").write_text("4242 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 300 45 0 0 20 0 3\n")
    core_use = at.CoreUse(tmp_path)
    core_use.cores, core_use.tick = [0, 2], 100
    busy, own, group = core_use.read()
    assert group == ()  # no quota in this /proc
    assert busy == pytest.approx(((100 + 10 + 20 + 3 + 2 + 5) + (50 + 5 + 1 + 1)) / 100)  # cpu1 not ours
    assert own == pytest.approx((300 + 45) / 100)


@pytest.mark.skipif(not Path("/proc/stat").is_file() or not hasattr(os, "sched_getaffinity"), reason="Linux /proc")
def test_a_busy_neighbour_process_is_seen_as_the_others_load():
    lines = []
    g = at.ThreadGovernor(2, 1.0, say=lines.append, jitter=0.0)  # the poll after 1 s must end a window
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the neighbour is running when the first window begins
        g.start()
        time.sleep(1.0)
        g.poll()
        threads = torch.get_num_threads()
    finally:
        neighbour.kill()
        neighbour.wait()
        g.stop()
    assert g.others >= 0.5, g.others  # one spinning process: about one core (less if the machine is busy)
    if len(g.core_use.cores) <= 2:  # then the neighbour leaves at most one core
        assert threads == 1 and lines


class _Tiny(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.threads_seen = []

    def training_step(self, batch, batch_idx):
        self.threads_seen.append(torch.get_num_threads())
        return self.linear(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_callback_drops_to_one_thread_under_load_during_a_fit_and_restores_the_count(monkeypatch, capsys):
    class Busy(at.CoreUse):  # another process on 1.5 of 2 cores, whatever this process does
        def __init__(self):
            self.cores, self.start, self.quotas = [0, 1], time.monotonic(), []

        def available(self):
            return True

        def read(self):
            return at.Reading(1.5 * (time.monotonic() - self.start), 0.0)

    monkeypatch.setattr(at, "CoreUse", Busy)
    torch.set_num_threads(2)
    model = _Tiny()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 2)), batch_size=2)
    trainer = lightning.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[AdaptiveThreads(every_seconds=1e-9)])
    trainer.fit(model, data)
    assert model.threads_seen[0] == 2 and model.threads_seen[-1] == 1  # max_threads: the fit's starting count
    assert torch.get_num_threads() == 2  # the fit's count again after it
    assert "other processes used 1.5 of the 2 cores" in capsys.readouterr().out


def test_an_installed_governor_is_polled_between_batches_of_images(monkeypatch):
    from pynodeta.models import DDPMUNet
    from pynodeta.train import DiffusionModule, EDMObjective
    from pynodeta.train.diffusion_sampling import generate_batches

    from .test_run_loader import UNET

    module = DiffusionModule(DDPMUNet(**UNET, time_scale=250.0), EDMObjective())
    polls = []
    g = at.ThreadGovernor(1, say=lambda line: None)
    monkeypatch.setattr(g, "poll", lambda: polls.append(1))
    with at.command_scope():
        at.install(g)
        batches = list(generate_batches(module, 5, "euler", 2, batch_size=2))
    assert len(batches) == 3 and len(polls) == 3
    assert not at._installed


def test_sample_follows_the_load_with_adaptive_threads_and_restores_the_count(tmp_path, monkeypatch, capsys):
    from pynodeta.cli import main

    from .test_run_loader import _write_run

    checkpoint = _write_run(tmp_path)
    installed = []
    monkeypatch.setattr(at.ThreadGovernor, "start", lambda self: installed.append((self, torch.get_num_threads())))
    torch.set_num_threads(1)
    argv = ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--num", "2", "--out", str(tmp_path / "g.png")]
    assert main([*argv, "--num-threads", "2", "--adaptive-threads"]) == 0, capsys.readouterr().err
    [(governor, threads_then)] = installed
    assert governor.max_threads == 2 and threads_then == 2  # up to --num-threads
    assert not at._installed  # the command's scope ended it
    installed.clear()
    assert main(argv) == 0  # 2 threads again, without the flag: an advisor, which never changes the count
    [(governor, _)] = installed
    assert governor.advice == at.COMMAND_ADVICE
    installed.clear()
    assert main([*argv, "--num-threads", "1"]) == 0
    assert not installed  # one thread: nothing to advise


def test_evaluate_takes_the_same_flag(capsys):
    from pynodeta.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--adaptive-threads" in capsys.readouterr().out


def test_an_advisor_says_once_that_the_cores_are_too_busy_and_keeps_the_count():
    g, clock, cores, calls, lines = governor()
    g.advice = "pass --fix {threads}"
    g.start()
    cores.others = 1.0
    for now in (5.0, 10.0, 15.0):
        clock.now = now
        g.poll()
    assert calls == [2] and g.threads == 2  # never changed
    assert lines == ["pynodeta: other processes used 1.0 of the 2 cores in the last 5 s while this run has 2 threads, "
                     "which then wait for one another at every op (a digits training step ran about 2x slower than "
                     "on 1 thread); pass --fix 1"]


def test_fit_adds_an_advisor_to_a_cpu_fit_of_several_threads_without_adaptive_threads():
    from pynodeta.train.cli import _thread_advice

    torch.set_num_threads(2)
    [advisor] = _thread_advice({"accelerator": "cpu", "callbacks": []})
    assert isinstance(advisor, AdaptiveThreads) and advisor.adapt is False
    assert _thread_advice({"accelerator": "cpu", "callbacks": [AdaptiveThreads()]}) == []  # it adapts already
    torch.set_num_threads(1)
    assert _thread_advice({"accelerator": "cpu", "callbacks": None}) == []  # one thread: nothing to stall


def test_adapt_must_be_a_bool():
    with pytest.raises(ValueError, match="adapt must be true or false, got 'no'"):
        AdaptiveThreads(adapt="no")


def test_under_a_cpu_quota_it_starts_on_the_quotas_cores_and_stays_there_on_free_cores():
    g, clock, cores, calls, lines = governor(max_threads=4, cores=8)
    cores.quota = 2.5
    g.start()
    assert calls == [4, 2] and g.threads == 2
    assert lines == ["pynodeta: this process's CPU quota (its cgroup's cpu.max, a container's CPU limit) is 2.5 "
                     "cores: running on 2 thread(s), not 4"]
    cores.others = 7.0  # the host's cores busy: one thread
    clock.now = 5.0
    g.poll()
    assert g.threads == 1 and lines[-1].endswith("running on 1 thread(s), back up to 2 when they are free")
    cores.others = 0.0
    clock.now = 10.0
    g.poll()
    assert g.threads == 2 and lines[-1].endswith("running on 2 threads")  # up to the quota, not max_threads


def test_under_a_quota_it_leaves_the_cgroups_other_processes_their_share_and_takes_it_back():
    g, clock, cores, calls, lines = governor(max_threads=8, cores=16)
    cores.quota, cores.quota_others = 4.0, 0.0
    g.start()
    assert g.threads == 4
    cores.others = cores.quota_others = 2.0  # two DataLoader workers in the container: on its quota, and on cores
    cores.own = 2.0
    clock.now = 5.0
    g.poll()
    assert g.quota_others == pytest.approx(2.0) and g.threads == 2
    assert lines[-1] == ("pynodeta: other processes in this cgroup used 2.0 of its CPU quota of 4 cores in the last "
                         "5 s: running on 2 thread(s), back up to 4 when it is free")
    cores.others = cores.quota_others = 0.0
    clock.now = 10.0
    g.poll()
    assert g.threads == 4
    assert lines[-1] == ("pynodeta: the cores are free again (other processes used 0.0 of 16, 0.0 of the quota's 4): "
                         "running on 4 threads")
    cores.quota_others, cores.others = None, 2.0  # the cgroup's time unreadable: the whole quota, the free cores
    clock.now = 15.0
    g.poll()
    assert g.quota_others is None and g.threads == 4


def test_a_looser_enclosing_quota_binds_when_its_other_processes_leave_less_of_it():
    # a container of 4 cores in a systemd slice of 8 that other users' jobs keep 5 cores busy in
    g, clock, cores, calls, lines = governor(max_threads=8, cores=32)
    cores.quota, cores.quota_others, cores.outer = 4.0, 0.0, [[8.0, 0.0]]
    g.start()
    assert g.threads == 4  # the tightest level's whole cores
    cores.own, cores.others, cores.outer[0][1] = 4.0, 5.0, 5.0
    clock.now = 5.0
    g.poll()
    assert g.quota_use == [(4.0, pytest.approx(0.0)), (8.0, pytest.approx(5.0))]
    assert g.quota_others == pytest.approx(0.0) and g.threads == 3
    assert lines[-1] == ("pynodeta: other processes in an enclosing cgroup used 5.0 of its CPU quota of 8 cores in the "
                         "last 5 s: running on 3 thread(s), back up to 4 when it is free")
    cores.outer[0][1] = None  # the enclosing level's time unreadable: its whole quota, which does not bind
    cores.others = 0.0
    clock.now = 10.0
    g.poll()
    assert g.quota_use == [(4.0, pytest.approx(0.0)), (8.0, None)] and g.threads == 4
    assert lines[-1] == ("pynodeta: the cores are free again (other processes used 0.0 of 32, 0.0 of the quota's 4): "
                         "running on 4 threads")
    cores.outer[0][1], cores.quota_others, cores.others = 2.0, 3.0, 3.0  # both busy: the level that leaves least
    clock.now = 15.0
    g.poll()
    assert g.threads == 1 and "in this cgroup used 3.0 of its CPU quota of 4 cores" in lines[-1]


def test_an_advisor_names_the_quotas_other_users_when_they_hold_the_count_down():
    g, clock, cores, calls, lines = governor(max_threads=4, cores=16)
    cores.quota, cores.quota_others = 4.0, 3.0
    g.advice = "pass --fix {threads}"
    g.start()
    cores.others = 3.0
    clock.now = 5.0
    g.poll()
    assert calls == [4] and lines == [
        "pynodeta: other processes in this cgroup used 3.0 of its CPU quota of 4 cores in the last 5 s while this run "
        "has 4 threads, which then wait for one another at every op (a digits training step ran about 2x slower than "
        "on 1 thread); pass --fix 1"]


def test_each_window_is_drawn_within_a_quarter_of_every_seconds():
    import random

    clock = FakeClock()
    windows = []
    for seed in (1, 2):
        g = at.ThreadGovernor(2, 4.0, core_use=FakeCores(clock), clock=clock, set_threads=lambda n: None,
                              say=lambda line: None, rng=random.Random(seed))
        g.start()
        drawn = []
        for _ in range(200):
            drawn.append(g._next - clock.now)
            clock.now = g._next
            g.poll()
        windows.append(drawn)
    assert all(3.0 <= w <= 5.0 for w in windows[0] + windows[1])
    assert min(windows[0]) < 3.2 and max(windows[0]) > 4.8  # the whole range is drawn
    assert windows[0] != windows[1]  # two runs started together do not keep measuring the same windows


@pytest.mark.parametrize("jitter", [-0.1, 1.0, True, "0.2"])
def test_jitter_must_be_below_one(jitter):
    with pytest.raises(ValueError, match=f"jitter must be a number in \\[0, 1\\), got {jitter!r}"):
        at.ThreadGovernor(2, jitter=jitter)


class SharedMachine:
    """``cores`` cores shared by several runs: each gets CPU in proportion to its threads once they outnumber
    the cores (the scheduler's fair share), and reads /proc's figures of that."""

    def __init__(self, cores, runs, max_threads):
        self.cores, self.threads = cores, [max_threads] * runs
        self.busy, self.own = 0.0, [0.0] * runs

    def advance(self, seconds):
        share = min(1.0, self.cores / sum(self.threads))
        self.busy += min(self.cores, sum(self.threads)) * seconds
        self.own = [own + threads * share * seconds for own, threads in zip(self.own, self.threads)]

    def core_use(self, run):
        machine = self

        class View:
            cores, quota, quotas = list(range(machine.cores)), None, []

            def available(self):
                return True

            def read(self):
                return at.Reading(machine.busy, machine.own[run])

        return View()

    def set_threads(self, run):
        return lambda threads: self.threads.__setitem__(run, threads)


def threads_beyond_the_cores(runs, cores, jitter, seconds=600.0, step=0.1):
    """(mean, most) threads beyond ``cores`` over the second half of ``seconds`` that ``runs`` governed runs,
    started together, hold."""
    import random

    machine, clock = SharedMachine(cores, runs, cores), FakeClock()
    governors = [at.ThreadGovernor(cores, 5.0, core_use=machine.core_use(run), clock=clock,
                                   set_threads=machine.set_threads(run), say=lambda line: None, jitter=jitter,
                                   rng=random.Random(run)) for run in range(runs)]
    for g in governors:
        g.start()
    beyond = []
    ticks = int(seconds / step)
    for tick in range(ticks):
        machine.advance(step)
        clock.now += step
        for g in governors:
            g.poll()
        if tick >= ticks // 2:
            beyond.append(max(0, sum(machine.threads) - cores))
    return sum(beyond) / len(beyond), max(beyond)


@pytest.mark.parametrize("runs, cores", [(3, 8), (6, 16), (10, 16)])
def test_runs_started_together_settle_without_oversubscribing_the_cores(runs, cores):
    # windows of one fixed length: all runs see the same free cores, take them at once, then all give them
    # back, over and over
    mean, most = threads_beyond_the_cores(runs, cores, jitter=0.0)
    assert mean >= cores / 4 and most >= cores / 2
    # drawn windows: at most one thread beyond the cores, which the quarter-core allowance of each run lets stand
    mean, most = threads_beyond_the_cores(runs, cores, jitter=0.25)
    assert most <= 1


def test_an_advisor_under_a_cpu_quota_says_so_at_the_start_and_keeps_the_count():
    g, clock, cores, calls, lines = governor(max_threads=2)
    cores.quota = 1.0
    g.advice = "pass --fix {threads}"
    g.start()
    clock.now = 5.0
    g.poll()
    assert calls == [2] and g.threads == 2
    assert lines == ["pynodeta: this process's CPU quota (its cgroup's cpu.max, a container's CPU limit) is 1 core "
                     "while this run has 2 threads, which then wait for one another at every op; pass --fix 1"]


@pytest.mark.parametrize("quota, threads_after", [(1.5, 1), (None, 2), (2.0, 2), (8.0, 2)])
def test_torchs_default_is_lowered_to_a_quota_below_it_and_said(quota, threads_after):
    torch.set_num_threads(2)
    lines = []
    at.default_threads_within_quota("--num_threads", say=lines.append, read_quota=lambda: quota)
    assert torch.get_num_threads() == threads_after
    assert len(lines) == (threads_after < 2)
    if lines:
        assert lines[0] == ("pynodeta: this process's CPU quota (its cgroup's cpu.max, a container's CPU limit) is "
                            "1.5 cores: 1 thread(s) instead of torch's default 2, which would wait for one another "
                            "at every op; pass --num_threads to choose")


def test_fit_and_sample_without_a_thread_count_run_on_the_quota_and_with_one_are_advised(tmp_path, monkeypatch, capsys):
    from pynodeta.cli import main

    from .test_run_loader import _write_run

    monkeypatch.setattr(at, "cpu_quota", lambda proc=None: 1.0)  # torch's default lowered to it
    monkeypatch.setattr(at, "quota_levels", lambda proc=None: [CpuQuota(1.0, None)])  # the advisor's
    torch.set_num_threads(2)
    argv = ["fit", "--config", "digits_tabn", "--num_threads", "null", "--trainer.fast_dev_run", "true",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    assert torch.get_num_threads() == 1 and "pass --num_threads to choose" in capsys.readouterr().out
    checkpoint = _write_run(tmp_path)
    argv = ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--num", "2", "--out", str(tmp_path / "g.png")]
    torch.set_num_threads(2)
    assert main(argv) == 0
    assert torch.get_num_threads() == 1 and "pass --num-threads to choose" in capsys.readouterr().out
    assert main([*argv, "--num-threads", "2"]) == 0  # asked for: kept, and the advisor says what it costs
    assert torch.get_num_threads() == 2
    assert "while this run has 2 threads" in capsys.readouterr().out
