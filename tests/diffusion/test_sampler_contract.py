"""Every sampler in SAMPLERS keeps k-diffusion's contract: signature, extra_args, generator, callback,
progress bar, published NFE, and refusals of bad input."""

import inspect
import io
import math
import sys

import pytest
import torch

from pynodeta import record_stats
from pynodeta.diffusion import SAMPLERS, NonFiniteDenoiserError, get_sampler, karras_sigmas
from pynodeta.diffusion._progress import progress_shown

from .gaussian_data import GaussianData

DATA = GaussianData(torch.tensor([0.7]), std=0.5)
STOCHASTIC = {  # name -> options that make it draw fresh noise
    "euler": {"s_churn": 10.0}, "heun": {"s_churn": 10.0}, "dpm_2": {"s_churn": 10.0},
    "euler_ancestral": {}, "dpm_2_ancestral": {}, "dpmpp_2s_ancestral": {}, "dpmpp_sde": {},
    "dpmpp_2m_sde": {}, "dpmpp_3m_sde": {}, "dpm_adaptive": {"eta": 1.0}, "ddim": {"eta": 1.0}, "ddpm": {},
}
# denoiser evaluations on n levels ending at 0: one per step, two for the second-order single-step ones
# (whose last step to σ = 0 is a first-order step)
NFE = {"euler": 1, "euler_ancestral": 1, "lms": 1, "dpmpp_2m": 1, "dpmpp_2m_sde": 1, "dpmpp_3m_sde": 1,
       "ddim": 1, "ddpm": 1, "heun": 2, "dpm_2": 2, "dpm_2_ancestral": 2, "dpmpp_2s_ancestral": 2, "dpmpp_sde": 2}


def _noise(n=4, seed=0):
    return DATA.noisy(n, 80.0, torch.Generator().manual_seed(seed))


def test_the_registry_lists_every_sampler_by_its_k_diffusion_name():
    assert list(SAMPLERS) == ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_adaptive",
                              "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
                              "ddim", "ddpm"]
    assert all(get_sampler(name) is sampler for name, sampler in SAMPLERS.items())
    assert set(STOCHASTIC) | {"lms", "dpmpp_2m"} == set(SAMPLERS) and set(NFE) | {"dpm_adaptive"} == set(SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_has_the_k_diffusion_signature(name):
    parameters = list(inspect.signature(SAMPLERS[name]).parameters.values())
    assert [p.name for p in parameters[:3]] == ["denoiser", "x", "sigmas"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters[:3])
    keyword = {p.name: p.default for p in parameters[3:] if p.kind is p.KEYWORD_ONLY}
    assert len(keyword) == len(parameters) - 3, "everything after sigmas is keyword-only"
    assert {k: keyword[k] for k in ("extra_args", "generator", "callback", "disable")} == dict.fromkeys(
        ("extra_args", "generator", "callback", "disable"))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_extra_args_reach_the_denoiser_on_every_call(name):
    labels = torch.eye(3)[[0, 2, 1, 0]]  # one-hot class labels, (batch, num_classes)
    calls = []

    def conditional(x, sigma, class_labels):  # no default: a call without the labels fails
        calls.append(class_labels)
        return DATA.denoiser(x, sigma)

    with record_stats() as log:
        out = get_sampler(name)(conditional, _noise(), karras_sigmas(6, dtype=torch.float64),
                                extra_args={"class_labels": labels})
    assert torch.isfinite(out).all() and len(calls) == log[-1].nfe > 0
    assert all(c is labels for c in calls)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_keep_no_graph_and_a_denoiser_may_still_take_gradients_inside(name):
    # k-diffusion's samplers run under no_grad: without it every denoiser call's graph is kept to the end
    # (gigabytes for an image network); a denoiser that needs a gradient (classifier guidance) enables it itself
    scale = torch.nn.Parameter(torch.ones(()))
    gradients = []

    def guided(x, sigma):
        with torch.enable_grad():
            probe = x.detach().requires_grad_()
            gradients.append(torch.autograd.grad((probe * scale).sum(), probe)[0])
        return DATA.denoiser(x, sigma) * scale

    out = get_sampler(name)(guided, _noise(), karras_sigmas(4, dtype=torch.float64),
                            generator=torch.Generator().manual_seed(0))
    assert not out.requires_grad and out.grad_fn is None and torch.is_grad_enabled()
    assert gradients and all(torch.equal(g, torch.ones_like(g)) for g in gradients)


def test_extra_args_must_be_a_dict_of_keywords():
    with pytest.raises(TypeError, match="extra_args must be a dict"):
        get_sampler("euler")(DATA.denoiser, _noise(), karras_sigmas(3), extra_args=[1, 2])


@pytest.mark.parametrize("name", sorted(NFE))
def test_samplers_publish_their_evaluations(name):
    n = 7
    sigmas = karras_sigmas(n, dtype=torch.float64)
    with record_stats() as log:
        get_sampler(name)(DATA.denoiser, _noise(), sigmas, generator=torch.Generator().manual_seed(0))
    stats = log[-1]
    assert stats.method == name and stats.backend == "sampler" and stats.n_steps == n
    assert stats.nfe == NFE[name] * n - (NFE[name] - 1)
    assert stats.t_evaluated[0] == pytest.approx(80.0)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_the_generator_drives_all_fresh_noise(name):
    sampler, options, x = get_sampler(name), STOCHASTIC[name], _noise(64)
    sigmas = karras_sigmas(8, dtype=torch.float64)
    first = sampler(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), **options)
    again = sampler(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), **options)
    other = sampler(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(4), **options)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_generator_that_is_not_a_torch_generator_is_refused_before_the_first_evaluation(name):
    calls = []

    def denoiser(x, sigma):
        calls.append(sigma)
        return DATA.denoiser(x, sigma)

    # deterministic samplers draw nothing from it, but a seed where a Generator belongs is a bug there too
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got str.*manual_seed"):
        get_sampler(name)(denoiser, _noise(), karras_sigmas(4, dtype=torch.float64), generator="seed",
                          **STOCHASTIC.get(name, {}))
    assert calls == []


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "dpm_adaptive"])
def test_the_callback_gets_k_diffusion_s_dict_once_per_step(name):
    seen = []
    n = 5
    options = {"s_churn": 40.0} if name in ("euler", "heun", "dpm_2") else {}
    sigmas = karras_sigmas(n, dtype=torch.float64)
    get_sampler(name)(DATA.denoiser, _noise(), sigmas, callback=seen.append, generator=torch.Generator(), **options)
    assert [info["i"] for info in seen] == list(range(n))
    for info in seen:
        assert set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert info["sigma"] == pytest.approx(float(sigmas[info["i"]]))
        # denoised is D at the state handed over: x is the state at sigma_hat, before the step's update
        expected = DATA.denoiser(info["x"], torch.full((4,), info["sigma_hat"], dtype=torch.float64))
        torch.testing.assert_close(info["denoised"], expected)
    if options:  # churn raised the noise level above sigma
        assert any(info["sigma_hat"] > info["sigma"] * 1.01 for info in seen)


def test_the_adaptive_sampler_reports_each_attempted_step():
    seen = []
    with record_stats() as log:
        get_sampler("dpm_adaptive")(DATA.denoiser, _noise(), karras_sigmas(4, dtype=torch.float64),
                                    callback=seen.append)
    assert [info["i"] for info in seen] == list(range(log[-1].n_steps))
    assert sum(info["accepted"] for info in seen) == log[-1].n_accepted > 0
    assert seen[0]["sigma"] == pytest.approx(80.0) and seen[-1]["sigma"] > 0.002
    for info in seen:
        assert set(info) == {"x", "i", "sigma", "sigma_hat", "denoised", "error", "h", "accepted"}
        expected = DATA.denoiser(info["x"], torch.full((4,), info["sigma"], dtype=torch.float64))
        torch.testing.assert_close(info["denoised"], expected)


class _Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("name", ["heun", "dpm_adaptive"])
@pytest.mark.parametrize("disable, tty, shown", [(None, True, True), (None, False, False), (False, False, True),
                                                 (True, True, False)])
def test_the_progress_bar_shows_on_a_terminal_unless_disabled(monkeypatch, name, disable, tty, shown):
    stderr = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", stderr)
    get_sampler(name)(DATA.denoiser, _noise(), karras_sigmas(6, dtype=torch.float64), disable=disable)
    assert (name in stderr.getvalue()) is shown, stderr.getvalue()
    if shown and name == "heun":
        assert "6/6" in stderr.getvalue()


def test_disable_must_be_a_bool_or_none():
    assert progress_shown(True) is False and progress_shown(False) is True
    with pytest.raises(TypeError, match="disable must be True, False or None"):
        get_sampler("euler")(DATA.denoiser, _noise(), karras_sigmas(3), disable="yes")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bad_noise_levels_are_refused(name):
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly decreasing"):
        get_sampler(name)(DATA.denoiser, x, karras_sigmas(5).flip(0))
    with pytest.raises(ValueError, match=">= 0"):
        get_sampler(name)(DATA.denoiser, x, torch.tensor([1.0, 0.5, -0.1]))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_non_finite_denoiser_output_names_the_noise_level(name):
    def broken(x, sigma):
        return torch.where(sigma[:, None] < 1.0, torch.nan, x)

    sigmas = torch.tensor([4.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    with pytest.raises(NonFiniteDenoiserError, match=r"sigma=0\.[0-9]"):
        get_sampler(name)(broken, torch.ones(2, 1, dtype=torch.float64), sigmas)


@pytest.mark.parametrize("name, options, message", [
    ("euler_ancestral", {"eta": math.nan}, "eta must be"), ("dpmpp_sde", {"s_noise": -1.0}, "s_noise must be"),
    ("dpmpp_2m_sde", {"solver_type": "rk4"}, "solver_type must be one of"), ("lms", {"order": 0}, "order must be"),
    ("dpmpp_sde", {"r": 1.0}, "r must lie in"), ("dpm_adaptive", {"order": 4}, "order must be 2"),
    ("dpm_adaptive", {"rtol": 0.0, "atol": 0.0}, "cannot both be 0"), ("dpm_adaptive", {"h_init": 0.0}, "h_init"),
    ("ddim", {"eta": math.inf}, "eta must be"), ("ddpm", {"variance": "learned"}, "unknown variance"),
])
def test_bad_options_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(name)(DATA.denoiser, _noise(), karras_sigmas(4, dtype=torch.float64), **options)
