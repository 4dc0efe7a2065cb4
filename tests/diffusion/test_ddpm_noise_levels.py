"""DDPM and DDIM two ways: the ε-network wrappers (sample_ddpm, sample_ddim) and the noise-level samplers
SAMPLERS["ddpm"], SAMPLERS["ddim"] over DenoiserFromEpsilon; diffusers' timestep spacings."""

import pytest
import torch

from pynodeta import record_stats
from pynodeta.diffusion import (
    DDPMSchedule,
    DenoiserFromEpsilon,
    ddim_timesteps,
    ddpm_sigmas,
    get_sampler,
    sample_ddim,
    sample_ddpm,
)

from .gaussian_data import standard_case

# sample_ddpm / sample_ddim before the samplers shared one contract (same data, noise and seeds as below)
BEFORE = {
    ("linear", "ddpm"): [[0.36700814642895785, -0.5775991327181937], [0.5338366734899573, -1.0914904301510528],
                         [0.8115471701881009, -0.6688806098373069]],
    ("linear", "ddpm_large_clipped"): [[0.441975050307235, -0.5610939221309822],
                                       [0.6570498261289343, -0.9999999999999991],
                                       [0.872898751167853, -0.6888929033954816]],
    ("linear", "ddim"): [[1.2584323636374624, -0.46760709545636553], [-0.33490972446541883, -0.0984357797247592],
                         [0.13381131722820028, -0.940996834418328]],
    ("linear", "ddim_eta"): [[1.0426140798683508, -0.5979797611318665], [-0.17879266507925434, -0.7634911887967928],
                             [0.714660750542465, -0.9265294793420068]],
    ("cosine", "ddpm"): [[0.31747448441024456, -0.19147436000642273], [0.968676923933897, -0.7745884817966444],
                         [0.707139434407584, -0.33760648352482686]],
    ("cosine", "ddpm_large_clipped"): [[0.24518085817417468, -0.15214301241642594],
                                       [0.9818321095306881, -0.7615143777563093],
                                       [0.6726925855509164, -0.27512279537702317]],
    ("cosine", "ddim"): [[1.3116467903802667, -0.5162928286466986], [-0.165899579237174, -0.1739509414907564],
                         [0.2687572836479929, -0.9552790924503405]],
    ("cosine", "ddim_eta"): [[1.0258790249207186, -0.6269925102879637], [0.009628833250052243, -0.9214048403811776],
                             [0.9376377520383793, -0.8767030169964524]],
}
SCHEDULES = {"linear": lambda: DDPMSchedule(20, "linear", 1e-3, 0.2), "cosine": lambda: DDPMSchedule(30, "cosine")}


def _seed(n):
    return torch.Generator().manual_seed(n)


def _x_T():
    return torch.randn(3, 2, generator=_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("beta_schedule", list(SCHEDULES))
def test_the_wrappers_defaults_give_the_samples_they_gave_before(beta_schedule):
    schedule, data = SCHEDULES[beta_schedule](), standard_case()
    eps = data.eps_model(schedule)
    runs = {
        "ddpm": sample_ddpm(eps, _x_T(), schedule, generator=_seed(1)),
        "ddpm_large_clipped": sample_ddpm(eps, _x_T(), schedule, generator=_seed(1), variance="fixed_large",
                                          clip_x0=True),
        "ddim": sample_ddim(eps, _x_T(), schedule, num_steps=7),
        "ddim_eta": sample_ddim(eps, _x_T(), schedule, num_steps=7, eta=0.5, generator=_seed(2)),
    }
    for key, samples in runs.items():
        expected = torch.tensor(BEFORE[beta_schedule, key], dtype=torch.float64)
        torch.testing.assert_close(samples, expected, rtol=0, atol=1e-13, msg=key)


def _noise_level_run(name, eps, schedule, sigmas, **options):
    """The noise-level sampler on the VE view: x = x_T·√(1 + σ_max²), the same generator seed."""
    denoiser = DenoiserFromEpsilon(eps, schedule)
    x = _x_T() * (1 + sigmas[0] ** 2).sqrt()
    return get_sampler(name)(denoiser, x, sigmas, **options)


@pytest.mark.parametrize("beta_schedule", list(SCHEDULES))
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddpm_in_sigma_is_the_ancestral_sampler_up_to_round_off(beta_schedule, variance, clip_x0):
    schedule, data = SCHEDULES[beta_schedule](), standard_case()
    eps = data.eps_model(schedule)
    direct = sample_ddpm(eps, _x_T(), schedule, generator=_seed(1), variance=variance, clip_x0=clip_x0)
    in_sigma = _noise_level_run("ddpm", eps, schedule, ddpm_sigmas(schedule), generator=_seed(1),
                                variance=variance, clip_x0=clip_x0)
    torch.testing.assert_close(in_sigma, direct, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("beta_schedule", list(SCHEDULES))
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("eta, clip_x0", [(0.0, False), (0.5, False), (1.0, True), (1.7, False)])
def test_ddim_in_sigma_is_ddim_up_to_round_off(beta_schedule, spacing, eta, clip_x0):
    schedule, data = SCHEDULES[beta_schedule](), standard_case()
    eps = data.eps_model(schedule)
    direct = sample_ddim(eps, _x_T(), schedule, 7, eta, _seed(2), timestep_spacing=spacing, clip_x0=clip_x0)
    with record_stats() as log:
        in_sigma = _noise_level_run("ddim", eps, schedule, ddpm_sigmas(schedule, 7, spacing), eta=eta,
                                    clip_x0=clip_x0, generator=_seed(2))
    torch.testing.assert_close(in_sigma, direct, rtol=1e-10, atol=1e-10)
    assert log[-1].nfe == 7


def test_clipping_changes_the_ddim_samples():
    schedule, data = DDPMSchedule(20, "linear", 1e-3, 0.2), standard_case()
    x_T = 3 * _x_T()  # far-out noise: x̂0 leaves [-1, 1] on the first steps
    plain = sample_ddim(data.eps_model(schedule), x_T, schedule, 5)
    clipped = sample_ddim(data.eps_model(schedule), x_T, schedule, 5, clip_x0=True)
    assert (plain - clipped).abs().max() > 1e-2


# diffusers DDIMScheduler.set_timesteps, T = 1000 training steps, 50 inference steps:
#   linspace: np.linspace(0, 999, 50).round()[::-1]
#   leading:  (np.arange(50) * (1000 // 50)).round()[::-1] + steps_offset
#   trailing: np.round(np.arange(1000, 0, -1000 / 50)) - 1
LINSPACE_1000_50 = [999, 979, 958, 938, 917, 897, 877, 856, 836, 816, 795, 775, 754, 734, 714, 693, 673, 652, 632,
                    612, 591, 571, 550, 530, 510, 489, 469, 449, 428, 408, 387, 367, 347, 326, 306, 285, 265, 245, 224,
                    204, 183, 163, 143, 122, 102, 82, 61, 41, 20, 0]


def test_timestep_spacings_are_diffusers():
    assert ddim_timesteps(1000, 50) == LINSPACE_1000_50
    assert LINSPACE_1000_50 == [round(k * 999 / 49) for k in reversed(range(50))]
    assert ddim_timesteps(1000, 50, "leading") == list(range(980, -1, -20))
    assert ddim_timesteps(1000, 50, "leading", steps_offset=1) == list(range(981, 0, -20))
    assert ddim_timesteps(1000, 50, "trailing") == list(range(999, 18, -20))
    assert ddim_timesteps(1000, 3, "leading") == [666, 333, 0]
    assert ddim_timesteps(1000, 3, "trailing") == [999, 666, 332]  # round(1000 − k·333.3…) − 1


def test_timestep_spacing_edge_cases_and_refusals():
    # 85·999/102 = 832.5 lands a hair above the half in numpy's linspace (diffusers: 833), below in torch's (832,
    # the timestep pynodeta used before it followed diffusers)
    assert ddim_timesteps(1000, 103)[17] == 833
    assert ddim_timesteps(1000, 1) == [999]  # diffusers: [0]
    assert ddim_timesteps(50, 29, "trailing")[-1] == 1 and len(ddim_timesteps(50, 29, "trailing")) == 29
    with pytest.raises(ValueError, match="unknown timestep_spacing 'uniform'"):
        ddim_timesteps(1000, 50, "uniform")
    with pytest.raises(ValueError, match="steps_offset shifts 'leading' timesteps only"):
        ddim_timesteps(1000, 50, "linspace", steps_offset=1)
    with pytest.raises(ValueError, match="past T − 1"):
        ddim_timesteps(1000, 50, "leading", steps_offset=20)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(10, 11, "trailing")


def test_ddpm_sigmas_are_the_schedule_s_noise_levels_then_zero():
    schedule = DDPMSchedule(1000)
    sigmas = ddpm_sigmas(schedule, 50, "leading")
    assert sigmas.dtype == torch.float64 and sigmas.shape == (51,) and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[:-1], schedule.sigmas[list(range(980, -1, -20))], rtol=0, atol=0)
    assert len(ddpm_sigmas(schedule)) == 1001 and ddpm_sigmas(schedule)[0] == schedule.sigmas[-1]
    with pytest.raises(TypeError, match="DDPMSchedule"):
        ddpm_sigmas("linear", 10)


def test_denoiser_from_epsilon_forwards_class_labels():
    schedule, data = DDPMSchedule(20, "linear", 1e-3, 0.2), standard_case()
    labels = torch.eye(4)[[1, 3, 0]]
    seen = []

    def conditional_eps(t, x, class_labels=None):
        seen.append(class_labels)
        return data.eps_model(schedule)(t, x)

    denoiser = DenoiserFromEpsilon(conditional_eps, schedule)
    x = _x_T() * (1 + ddpm_sigmas(schedule)[0] ** 2).sqrt()
    get_sampler("ddim")(denoiser, x, ddpm_sigmas(schedule, 4), extra_args={"class_labels": labels})
    assert len(seen) == 4 and all(s is labels for s in seen)
    sample_ddim(conditional_eps, _x_T(), schedule, 4, extra_args={"class_labels": labels})
    assert len(seen) == 8 and all(s is labels for s in seen)
    denoiser(x, ddpm_sigmas(schedule, 4)[:1].expand(3))  # no labels: eps_model(t, x) with two arguments
    assert seen[-1] is None


def test_the_wrappers_draw_their_progress_bar_when_asked(monkeypatch):
    import io
    import sys

    schedule, data = DDPMSchedule(10), standard_case()
    for disable, shown in ((False, True), (True, False), (None, False)):  # None: stderr here is no terminal
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        sample_ddim(data.eps_model(schedule), _x_T(), schedule, 4, disable=disable)
        sample_ddpm(data.eps_model(schedule), _x_T(), schedule, disable=disable)
        assert ("4/4" in stderr.getvalue() and "10/10" in stderr.getvalue()) is shown, stderr.getvalue()
