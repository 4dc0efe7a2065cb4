"""The probability-flow ODE through pynodeta.solve against the exact flow of Gaussian data."""

import pytest
import torch

from pynodeta import FixedGrid, IController, PIController, SolverSettings
from pynodeta.diffusion import NonFiniteDenoiserError, probability_flow
from pynodeta.diffusion.flow_solver import FLOW_SOLVER

from .gaussian_data import standard_case


@pytest.mark.parametrize("sigma_start, sigma_end", [(80.0, 0.002), (0.01, 50.0)])
def test_flow_matches_the_exact_map_both_ways(sigma_start, sigma_end):
    data = standard_case()
    x = data.noisy(16, sigma_start, torch.Generator().manual_seed(0))
    solution = probability_flow(data.denoiser, x, sigma_start, sigma_end, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(solution.ys[-1], data.flow(x, sigma_start, sigma_end), atol=1e-5, rtol=1e-5)
    assert solution.stats.nfe > 0 and solution.stats.method == "dopri5"
    assert solution.stats.t_evaluated[0] == pytest.approx(sigma_start)


def test_error_follows_the_tolerance_and_fixed_step_methods_work():
    data = standard_case()
    x = data.noisy(8, 80.0, torch.Generator().manual_seed(1))
    exact = data.flow(x, 80.0, 0.002)
    loose = probability_flow(data.denoiser, x, 80.0, 0.002, rtol=1e-3, atol=1e-3)
    tight = probability_flow(data.denoiser, x, 80.0, 0.002, rtol=1e-7, atol=1e-7)
    assert (tight.ys[-1] - exact).abs().max() < (loose.ys[-1] - exact).abs().max()
    assert tight.stats.nfe > loose.stats.nfe
    rk4 = probability_flow(data.denoiser, x, 10.0, 0.1, method="rk4", options={"step_size": 0.01})
    torch.testing.assert_close(rk4.ys[-1], data.flow(x, 10.0, 0.1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("sigma_start, sigma_end, match", [
    (80.0, 0.0, "sigma_end"), (-1.0, 0.1, "sigma_start"), (1.0, 1.0, "differ"), (float("inf"), 1.0, "sigma_start"),
])
def test_bad_noise_levels_are_refused(sigma_start, sigma_end, match):
    data = standard_case()
    with pytest.raises(ValueError, match=match):
        probability_flow(data.denoiser, torch.zeros(2, 2), sigma_start, sigma_end)


def test_a_non_finite_start_is_refused_under_the_name_x():
    x = torch.zeros(2, 2)
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x \(the state at sigma_start\) contains NaN or Inf"):
        probability_flow(standard_case().denoiser, x, 80.0, 0.002)


def test_non_finite_denoiser_is_named_with_its_noise_level():
    def broken(x, sigma):
        return torch.where(sigma[:, None] < 5.0, torch.nan, x * 0)

    with pytest.raises(NonFiniteDenoiserError, match="sigma=4"):
        probability_flow(broken, torch.ones(2, 2, dtype=torch.float64), 80.0, 0.1, method="euler",
                         options={"step_size": 1.0})


def test_other_backends_solve_the_same_flow():
    """The ODE goes through pynodeta.solve, so a backend is one argument (here scipy's DOP853)."""
    data = standard_case()
    x = data.noisy(4, 20.0, torch.Generator().manual_seed(2))
    solution = probability_flow(data.denoiser, x, 20.0, 0.01, method="dop853", backend="scipy", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(solution.ys[-1], data.flow(x, 20.0, 0.01), atol=1e-5, rtol=1e-5)
    assert solution.stats.backend == "scipy" and solution.stats.nfe > 0


def test_typed_solver_settings_give_the_sugar_results_bit_for_bit():
    """solver=SolverSettings(...), a typed controller= and the old rtol=/atol=/options= spellings are one
    solve; the default is dopri5 at rtol = atol = 1e-5."""
    data = standard_case()
    x = data.noisy(4, 80.0, torch.Generator().manual_seed(3))
    default = probability_flow(data.denoiser, x, 80.0, 0.002)
    spelled = probability_flow(data.denoiser, x, 80.0, 0.002, solver=SolverSettings(
        method="dopri5", controller=IController(rtol=1e-5, atol=1e-5)))
    assert FLOW_SOLVER == SolverSettings(method="dopri5", controller=IController(rtol=1e-5, atol=1e-5))
    assert torch.equal(default.ys, spelled.ys) and default.stats.t_evaluated == spelled.stats.t_evaluated
    sugar = probability_flow(data.denoiser, x, 80.0, 0.002, rtol=1e-3, atol=1e-4, controller="pi")
    typed = probability_flow(data.denoiser, x, 80.0, 0.002, controller=PIController(rtol=1e-3, atol=1e-4))
    assert torch.equal(sugar.ys, typed.ys) and sugar.stats.nfe == typed.stats.nfe
    grid = probability_flow(data.denoiser, x, 10.0, 0.1, method="rk4", options={"step_size": 0.5})
    typed_grid = probability_flow(data.denoiser, x, 10.0, 0.1,
                                  solver=SolverSettings(method="rk4", controller=FixedGrid(step_size=0.5)))
    assert torch.equal(grid.ys, typed_grid.ys)


def test_a_typed_controller_keeps_its_own_tolerances():
    """controller=IController(...) was refused next to the default rtol/atol; now its tolerances hold."""
    data = standard_case()
    x = data.noisy(8, 80.0, torch.Generator().manual_seed(4))
    exact = data.flow(x, 80.0, 0.002)
    loose = probability_flow(data.denoiser, x, 80.0, 0.002, controller=IController(rtol=1e-3, atol=1e-3))
    tight = probability_flow(data.denoiser, x, 80.0, 0.002, controller=IController(rtol=1e-8, atol=1e-8))
    assert (tight.ys[-1] - exact).abs().max() < 1e-6 < (loose.ys[-1] - exact).abs().max()


def test_solver_and_its_sugar_together_are_refused():
    data = standard_case()
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"both solver= and rtol=, atol="):
        probability_flow(data.denoiser, x, 80.0, 0.002, solver=FLOW_SOLVER, rtol=1e-3, atol=1e-3)
    with pytest.raises(TypeError, match="solver must be a SolverSettings"):
        probability_flow(data.denoiser, x, 80.0, 0.002, solver={"method": "rk4"})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['rtl'\]"):
        probability_flow(data.denoiser, x, 80.0, 0.002, rtl=1e-3)


def _tiny_denoisers():
    from pynodeta.diffusion import DDPMSchedule, DenoiserFromEpsilon, EDM2Precond, EDMPrecond
    from pynodeta.models.diffusion import DDPMUNet, EDM2UNet

    torch.manual_seed(0)
    ddpm = dict(image_size=8, channels=16, num_res_blocks=1, attention_resolutions=(4,), dropout=0.0)
    return {
        "DenoiserFromEpsilon": DenoiserFromEpsilon(DDPMUNet(**ddpm), DDPMSchedule()),
        "EDMPrecond": EDMPrecond(DDPMUNet(**ddpm, time_scale=250)),
        "EDM2Precond": EDM2Precond(EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                            attn_resolutions=(4,)), logvar_channels=8),
    }


@pytest.mark.parametrize("name", ["DenoiserFromEpsilon", "EDMPrecond", "EDM2Precond"])
def test_flow_of_each_denoiser_replays_as_a_graph_with_the_eager_result(graph_stand_in, name):
    """backend_options={"cuda_graph": True}: the denoisers' per-call checks of σ and of their output read
    values back to the host, so they stand aside while a step is recorded (the span was checked before the
    solve; the solver's control sees what the replays compute); the replays give the eager flow and NFE."""
    denoiser = _tiny_denoisers()[name].double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    with torch.no_grad():
        eager = probability_flow(denoiser, x, 10.0, 0.5, rtol=1e-5, atol=1e-5)
        graphed = probability_flow(denoiser, x, 10.0, 0.5, rtol=1e-5, atol=1e-5, backend_options={"cuda_graph": True})
    assert graph_stand_in[0].replays > 0 and graphed.stats.nfe == eager.stats.nfe
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-9, atol=1e-9)
