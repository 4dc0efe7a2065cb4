"""On a GPU a sampling run reads values back to the host at its start and its end only, never per call; an
ODE solve over the probability flow reads once per step, for its step control.

Reading a value of a device tensor waits for every queued kernel, so a read per denoiser call would keep
the host from queueing the next call while the GPU runs this one. These tests take the GPU's code path on
the CPU (``reads_wait_for`` patched to true) and count the reads of values that would live on the
device with ``DeviceValueReads``: everything computed from the initial noise, the networks' parameters and
the σ tensors the denoiser is handed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pynodeta import _host_copies, record_stats
from pynodeta.diffusion import (
    SAMPLERS,
    DDPMSchedule,
    DenoiserFromEpsilon,
    EDMPrecond,
    GuidedDenoiser,
    NonFiniteDenoiserError,
    karras_sigmas,
    log_likelihood,
    probability_flow,
    sample_ddim,
    sample_ddpm,
)
from pynodeta.diffusion._known_sigmas import as_levels, same_levels, sigma_bounds, sigma_levels
from pynodeta.ode.backends.graphed_step import DeviceValueReads

CLASSES = 3


@pytest.fixture
def reads_wait(monkeypatch):
    """The GPU's path: σ tensors carry their bounds, each output leaves a flag read when the run ends."""
    monkeypatch.setattr(_host_copies, "reads_wait_for", lambda tensor: True)


class CountedReads(DeviceValueReads):
    def __init__(self, tensors):
        super().__init__(tensors)
        self.count = 0

    def read(self, func) -> None:
        self.count += 1


class TinyNetwork(nn.Module):
    """F(c_noise, x[, class_labels]) with parameters, for EDMPrecond; time-first for DenoiserFromEpsilon."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.time = nn.Parameter(torch.tensor(0.1))
        self.classes = nn.Parameter(torch.randn(CLASSES))

    def forward(self, c_noise, x, class_labels=None):
        out = self.scale * x + self.time * c_noise.to(x.dtype).reshape(-1, 1)
        return out if class_labels is None else out + (class_labels @ self.classes).reshape(-1, 1)


class OnDevice(nn.Module):
    """The denoiser, handed its σ as a GPU run would hand it: a tensor whose values live on the device."""

    def __init__(self, denoiser, reads: CountedReads):
        super().__init__()
        self.denoiser, self.reads = denoiser, reads

    def forward(self, x, sigma, **kwargs):
        self.reads.track(sigma)
        return self.denoiser(x, sigma, **kwargs)


def _case(kind: str):
    """(denoiser, noise levels of a 5-step grid as a function of n, extra_args)."""
    if kind == "eps":
        denoiser = DenoiserFromEpsilon(TinyNetwork(), DDPMSchedule(100))
        return denoiser, lambda n: karras_sigmas(n, denoiser.sigma_min, denoiser.sigma_max), None
    if kind == "guided":
        labels = torch.eye(CLASSES)[torch.arange(4) % CLASSES]
        return GuidedDenoiser(EDMPrecond(TinyNetwork()), 2.0), karras_sigmas, {"class_labels": labels}
    return EDMPrecond(TinyNetwork()), karras_sigmas, None


def _reads_of_a_run(sampler: str, kind: str, n: int) -> tuple[int, object]:
    denoiser, sigmas_of, extra_args = _case(kind)
    sigmas = sigmas_of(n)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    reads = CountedReads([x, *denoiser.parameters()])
    with torch.no_grad(), record_stats() as log, reads:
        SAMPLERS[sampler](OnDevice(denoiser, reads), x, sigmas, extra_args=extra_args,
                          generator=torch.Generator().manual_seed(1), disable=True)
    return reads.count, log[-1]


@pytest.mark.parametrize("kind", ["edm", "eps", "guided"])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_run_reads_at_its_start_and_end_only(reads_wait, sampler, kind):
    """Two reads (the initial noise's check, the outputs' flags) however many calls; dpm_adaptive adds the
    one its step-size control needs per step, its error estimate."""
    for n in (4, 8):
        count, stats = _reads_of_a_run(sampler, kind, n)
        per_step = stats.n_steps if sampler == "dpm_adaptive" else 0
        assert count == 2 + per_step, f"{count} reads for {stats.nfe} denoiser calls"


class NaNBelow(nn.Module):
    """The denoiser, returning NaN below a noise level: a network that breaks late in a run."""

    def __init__(self, denoiser, below: float):
        super().__init__()
        self.denoiser, self.below = denoiser, below

    def forward(self, x, sigma, **kwargs):
        out = self.denoiser(x, sigma, **kwargs)
        return torch.where(sigma.reshape(-1, 1) < self.below, math.nan, out)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_nan_output_gives_the_same_error_on_either_path(monkeypatch, sampler):
    """Deferred to the end of the run or raised at once, the error names the first σ that gave NaN."""
    sigmas = karras_sigmas(6)
    below = float(sigmas[2]) * 1.01  # the third level is the first that breaks
    messages, first_broken = {}, {}
    for deferred in (False, True):
        monkeypatch.setattr(_host_copies, "reads_wait_for", lambda tensor, deferred=deferred: deferred)
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * sigmas[0]
        with torch.no_grad(), record_stats() as log, pytest.raises(NonFiniteDenoiserError) as error:
            SAMPLERS[sampler](NaNBelow(EDMPrecond(TinyNetwork()), below), x, sigmas,
                              generator=torch.Generator().manual_seed(1), disable=True)
        messages[deferred] = str(error.value)
        first_broken[deferred] = next(s for s in log[-1].t_evaluated if s < below)
    assert first_broken[True] == first_broken[False]
    assert messages[True] == messages[False]
    assert f"sigma={first_broken[True]:.6g}" in messages[True]


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim])
def test_the_eps_samplers_read_at_start_and_end_and_name_the_broken_timestep(reads_wait, sampler):
    network, schedule = TinyNetwork(), DDPMSchedule(50)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    reads = CountedReads([x_T, *network.parameters()])
    with torch.no_grad(), reads:
        sampler(network, x_T, schedule, disable=True)
    assert reads.count == 2

    def broken_late(t, x):
        return torch.where(t.reshape(-1, 1) < 20, math.nan, network(t, x))

    with pytest.raises(NonFiniteDenoiserError, match=r"timestep t=19: "):
        sampler(broken_late, x_T, schedule, disable=True) if sampler is sample_ddpm else \
            sampler(broken_late, x_T, schedule, num_steps=50, disable=True)


def test_a_sampler_made_sigma_carries_its_bounds_until_it_changes(reads_wait):
    x, level = torch.zeros(3, 2), float(torch.tensor(0.1, dtype=torch.float32))
    sigma = sigma_levels(0.1, x)
    reads = CountedReads([sigma])
    with reads:
        assert sigma_bounds(sigma) == (level, level)
    assert reads.count == 0
    sigma.mul_(-1)  # a wrapper that changes the levels in place: the bounds no longer hold
    assert sigma_bounds(sigma) == (-level, -level)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        EDMPrecond(TinyNetwork())(x, sigma)


def test_known_bounds_follow_casts_and_copies_but_not_other_tensors(reads_wait):
    sigma = sigma_levels(0.1, torch.zeros(4, dtype=torch.float64))
    half = as_levels(sigma, torch.zeros(4, dtype=torch.bfloat16))
    reads = CountedReads([half])
    with reads:
        assert sigma_bounds(half) == (float(torch.tensor(0.1).bfloat16()),) * 2
        doubled = same_levels(sigma, torch.cat([sigma, sigma]))
        assert sigma_bounds(doubled) == (0.1, 0.1)
    assert reads.count == 0
    other = sigma * 2  # a new tensor computed from known levels is read, not trusted
    reads = CountedReads([other])
    with reads:
        assert sigma_bounds(other) == (0.2, 0.2)
    assert reads.count == 2


def test_a_nan_noise_level_is_refused_by_the_denoisers():
    x, nan = torch.zeros(2, 3), torch.full((2,), math.nan)
    with pytest.raises(ValueError, match="sigma must be > 0.*nan"):
        EDMPrecond(TinyNetwork())(x, nan)
    with pytest.raises(ValueError, match="sigma must lie in the schedule's range"):
        DenoiserFromEpsilon(TinyNetwork(), DDPMSchedule(100))(x, nan)


def _flow(kind: str, denoiser, x):
    if kind == "probability_flow":
        return probability_flow(denoiser, x, 80.0, 0.5, rtol=1e-4, atol=1e-4)
    return log_likelihood(denoiser, x, sigma_min=0.5, sigma_max=80.0, generator=torch.Generator().manual_seed(0),
                          rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["probability_flow", "log_likelihood"])
def test_an_ode_solve_reads_per_step_not_per_call(monkeypatch, kind):
    """The solver reads its error estimate once per step; the outputs' checks add one read per solve, not one
    per denoiser call."""
    counts, nfe = {}, {}
    for deferred in (False, True):
        monkeypatch.setattr(_host_copies, "reads_wait_for", lambda tensor, deferred=deferred: deferred)
        denoiser = EDMPrecond(TinyNetwork())
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 80
        reads = CountedReads([x, *denoiser.parameters()])
        with torch.no_grad(), record_stats() as log, reads:
            _flow(kind, OnDevice(denoiser, reads), x)
        counts[deferred], nfe[deferred] = reads.count, log[-1].nfe
    assert nfe[True] == nfe[False] > 20
    assert counts[True] == counts[False] - nfe[False] + 1


@pytest.mark.parametrize("kind", ["probability_flow", "log_likelihood"])
def test_a_nan_output_in_an_ode_solve_gives_the_same_error_on_either_path(monkeypatch, kind):
    """Deferred, the NaN makes the solver fail (its error estimate is NaN, the steps shrink); the failure is
    reported as the denoiser's, naming the same σ as the immediate check."""
    messages = {}
    for deferred in (False, True):
        monkeypatch.setattr(_host_copies, "reads_wait_for", lambda tensor, deferred=deferred: deferred)
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 80
        with torch.no_grad(), pytest.raises(NonFiniteDenoiserError) as error:
            _flow(kind, NaNBelow(EDMPrecond(TinyNetwork()), 5.0), x)
        messages[deferred] = str(error.value)
    assert messages[True] == messages[False]


def test_on_the_cpu_a_sampler_made_sigma_is_a_plain_tensor():
    """Where a read costs nothing, carrying bounds would cost more than reading them."""
    sigma = sigma_levels(0.1, torch.zeros(3, 2))
    assert sigma_bounds(sigma) == (float(torch.tensor(0.1)),) * 2 and not hasattr(sigma, "_pynodeta_sigma_bounds")
