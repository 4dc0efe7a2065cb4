"""Bad input to solve(..., batched=True): every refusal names the argument and says what to do."""

import pytest
import torch

import pynodeta as pn

Y0 = torch.ones(3, 2)
T = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


@pytest.mark.parametrize(
    ("t", "match"),
    [
        (torch.zeros(2, 2), r"t must be shaped \(n,\) .* or \(batch, n\) = \(3, n\)"),
        (torch.zeros(3, 2, 1), r"t must be shaped"),
        (torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]), r"each row of t must be strictly .* rows \[2\]"),
        (torch.tensor([[0.0, 1.0, 0.5]] * 3), r"rows \[0, 1, 2\]"),
        (torch.tensor([0.0, float("nan")]), "t must be finite"),
        (torch.tensor([0, 1]), "t must be floating point"),
    ],
)
def test_bad_output_times(t, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pn.solve(decay, Y0, t, batched=True)


@pytest.mark.parametrize("method", ["rk4", "euler", "implicit_adams"])
def test_methods_without_error_estimate_are_refused(method):
    with pytest.raises(ValueError, match=r"batched=True (needs an adaptive method|supports explicit Runge-Kutta)"):
        pn.solve(decay, Y0, T, method=method, batched=True)
    with pytest.raises(ValueError, match="batched=True"):
        pn.SolverSettings(method=method, batched=True)


def test_other_backends_are_refused():
    with pytest.raises(ValueError, match="batched=True runs on backend 'torch' only"):
        pn.solve(decay, Y0, T, backend="scipy", batched=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(controller=pn.IController(rtol=(1e-3, 1e-4))), r"single number for controller.rtol"),
        (dict(controller=pn.IController(atol=torch.full((3, 2), 1e-6))), r"single number for controller.atol"),
        (dict(controller=pn.IController(step_t=(0.5,))), r"step_t / jump_t"),
        (dict(adjoint=pn.Adjoint(norm=lambda parts: parts[1].abs().max())), r"Adjoint\(norm=<callable>\)"),
        (dict(adjoint=pn.Adjoint(method="rk4")), r"'rk4' is fixed-grid"),
        (dict(backend_options={"x": 1}), r"takes only backend_options=\{.compile.: True\}, got \[.x.\]"),
        (dict(batched="yes"), r"batched must be True or False"),
    ],
)
def test_unsupported_settings(kwargs, match):
    kwargs = {"batched": True, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        pn.solve(decay, Y0, T, **kwargs)


def test_bad_states_and_func():
    with pytest.raises(TypeError, match=r"one tensor shaped \(batch, \*features\)"):
        pn.solve(lambda t, y: y, (Y0, Y0), T, batched=True)
    with pytest.raises(ValueError, match="real floating-point y0"):
        pn.solve(decay, torch.ones(3, 2, dtype=torch.long), T, batched=True)
    with pytest.raises(ValueError, match=r"func must return dy/dt shaped like y \(3, 2\), got \(3,\)"):
        pn.solve(lambda t, y: y.sum(1), Y0, T, batched=True)


def test_a_per_sample_norm_must_return_one_value_per_sample():
    with pytest.raises(ValueError, match=r"controller.norm must map .* shape \(3,\); got \(\)"):
        pn.solve(decay, Y0, T, batched=True, controller=pn.IController(norm=lambda x: x.abs().max()))


def test_underflow_names_the_sample():
    def blow_up(t, y):
        return y**3 * torch.tensor([0.0, 0.0, 1.0])[:, None]

    with pytest.raises((pn.StepSizeUnderflowError, pn.NonFiniteStateError), match="t=0.5|sample 2"):
        pn.solve(blow_up, torch.ones(3, 1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64),
                 batched=True)


def test_single_output_time_and_empty_batch():
    sol = pn.solve(decay, Y0, torch.tensor([0.5]), batched=True)
    assert sol.ys.shape == (3, 1, 2) and torch.equal(sol.ys[:, 0], Y0)
    empty = pn.solve(decay, torch.ones(0, 2), T, batched=True)
    assert empty.ys.shape == (0, 2, 2)


def test_float32_with_tolerances_below_its_resolution_warns():
    with pytest.warns(pn.SolverWarning, match="ask for more than a torch.float32 state can resolve"):
        pn.solve(decay, Y0, T, batched=True, controller=pn.IController(rtol=1e-9, atol=1e-12))


def test_a_sample_that_finishes_on_its_last_allowed_step_is_not_an_error():
    t = torch.tensor([[0.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    y0 = torch.ones(2, 1, dtype=torch.float64)
    steps = pn.solve(decay, y0, t, batched=True).stats.n_steps_per_sample
    assert steps[0] < steps[1]
    sol = pn.solve(decay, y0[:1], t[:1], batched=True, max_steps=int(steps[0]))  # exactly enough
    assert sol.stats.n_steps_per_sample[0] == steps[0]
    with pytest.raises(pn.MaxStepsReachedError):
        pn.solve(decay, y0, t, batched=True, max_steps=int(steps[0]))  # the other sample needs more
