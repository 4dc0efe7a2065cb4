"""The typed solver settings: validation, equivalence with the torchdiffeq-style sugar, SolverSettings, Method."""

import math

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.methods import ADAPTIVE_HEUN, BOSH3
from pynodeta.ode.problems import MLPField, lotka_volterra, van_der_pol

F64 = dict(dtype=torch.float64)
T = torch.tensor([0.0, 1.0, 2.5], **F64)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: pn.IController(rtol=-1e-6), "rtol"),
        (lambda: pn.IController(atol=math.inf), "atol"),
        (lambda: pn.IController(safety=math.nan), "safety"),
        (lambda: pn.IController(safety=1.5), "safety"),
        (lambda: pn.IController(ifactor=math.inf), "ifactor"),
        (lambda: pn.IController(ifactor=0.5), "ifactor"),
        (lambda: pn.IController(dfactor=0.0), "dfactor"),
        (lambda: pn.IController(dfactor=2.0), "dfactor"),
        (lambda: pn.IController(min_step=0.5, max_step=0.1), "min_step"),
        (lambda: pn.IController(first_step=-1.0), "first_step"),
        (lambda: pn.PIController(gains=(0.0, 0.4)), "gains"),
        (lambda: pn.FixedGrid(step_size=0.0), "step_size"),
        (lambda: pn.FixedGrid(interpolation="quadratic"), "interpolation"),
        (lambda: pn.Adjoint(norm="l2"), "norm"),
    ],
)
def test_each_field_is_validated_where_it_is_written(build, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build()


@pytest.mark.parametrize(
    ("key", "value", "method", "expected"),
    [
        ("max_num_steps", "abc", "dopri5", "an int"),
        ("max_num_steps", 2.5, "dopri5", "an int"),
        ("max_num_steps", True, "dopri5", "an int"),
        ("step_size", "0.1", "rk4", "a number"),
        ("first_step", "abc", "dopri5", "a number"),
        ("min_step", [0.1], "dopri5", "a number"),
        ("max_step", "abc", "dopri5", "a number"),
        ("safety", "abc", "dopri5", "a number"),
        ("ifactor", None.__class__, "dopri5", "a number"),
        ("dfactor", "abc", "dopri5", "a number"),
        ("step_t", 0.5, "dopri5", "a 1-D tensor or a sequence of times"),
        ("jump_t", ["a"], "dopri5", "a 1-D tensor or a sequence of times"),
        ("perturb", "false", "rk4", "True or False"),
        ("interpolation", 1, "rk4", "the string 'linear' or 'cubic'"),
        ("max_iters", 2.7, "implicit_adams", "an int"),
        ("max_order", "12", "implicit_adams", "an int"),
    ],
)
def test_an_option_of_the_wrong_type_names_the_key_and_the_type(key, value, method, expected):
    """'abc' for max_num_steps used to fail inside int() without naming the option; 'false' for perturb
    was read as True and 2.7 for max_iters as 2, silently."""
    options = {key: value, **({"step_size": 0.5} if method != "dopri5" and key != "step_size" else {})}
    with pytest.raises(TypeError, match=rf"^options\['{key}'\] must be {expected}.*, got"):
        pn.odeint(lambda t, y: -y, torch.ones(2, **F64), T, method=method, options=options)


def test_numeric_options_accept_numbers_of_any_kind():
    import numpy as np

    reference = pn.odeint(lambda t, y: -y, torch.ones(2, **F64), T, options={"max_num_steps": 1000,
                                                                               "first_step": 0.01})
    for options in ({"max_num_steps": 1e3, "first_step": np.float32(0.01)},
                    {"max_num_steps": torch.tensor(1000), "first_step": torch.tensor(0.01, **F64)}):
        torch.testing.assert_close(pn.odeint(lambda t, y: -y, torch.ones(2, **F64), T, options=options), reference)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: pn.IController(first_step="0.1"), "first_step"),
        (lambda: pn.IController(safety="0.9"), "safety"),
        (lambda: pn.IController(max_step=None), "max_step"),
        (lambda: pn.FixedGrid(step_size="0.1"), "step_size"),
        (lambda: pn.FixedGrid(max_iters=True), "max_iters"),
        (lambda: pn.Adjoint(max_steps=10.0), "max_steps"),
    ],
)
def test_a_typed_field_of_the_wrong_type_names_the_field(build, field):
    with pytest.raises(TypeError, match=rf"^{field} must be (a number|an int)"):
        build()


def _same(a: pn.Solution, b: pn.Solution) -> None:
    assert torch.equal(a.ys, b.ys)
    assert a.stats.t_evaluated == b.stats.t_evaluated


def _sugar(**arguments) -> pn.SolverSettings:
    """torchdiffeq's spellings (rtol=, options=, adjoint_*=) as the typed settings solve takes."""
    return pn.SolverSettings.from_arguments(**arguments)


def test_typed_controllers_take_exactly_the_sugars_steps():
    f, y0 = van_der_pol(2.0), torch.tensor([2.0, 0.0], **F64)
    _same(pn.solve(f, y0, T, controller=pn.IController(rtol=1e-6, atol=1e-8, max_step=0.3)),
          pn.solve(f, y0, T, **_sugar(rtol=1e-6, atol=1e-8, options={"max_step": 0.3})))
    _same(pn.solve(f, y0, T, controller=pn.PIController(rtol=1e-6, atol=1e-8)),
          pn.solve(f, y0, T, **_sugar(rtol=1e-6, atol=1e-8, controller="pi")))
    _same(pn.solve(f, y0, T, method="rk4", controller=pn.FixedGrid(step_size=0.1, interpolation="cubic")),
          pn.solve(f, y0, T, **_sugar(method="rk4", options={"step_size": 0.1, "interpolation": "cubic"})))


def test_pi_gains_change_the_steps_and_zero_beta_is_the_i_rule_on_accepted_steps():
    f, y0 = van_der_pol(5.0), torch.tensor([2.0, 0.0], **F64)
    default = pn.solve(f, y0, T, controller=pn.PIController(rtol=1e-6, atol=1e-8))
    other = pn.solve(f, y0, T, controller=pn.PIController(rtol=1e-6, atol=1e-8, gains=(0.5, 0.2)))
    assert default.stats.step_sizes != other.stats.step_sizes
    assert torch.allclose(default.ys, other.ys, rtol=1e-4, atol=1e-5)


def test_typed_adjoint_matches_the_adjoint_sugar():
    field = MLPField(dtype=torch.float64)
    y0 = torch.randn(4, 2, **F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    grads, nfes = [], []
    for kwargs in (_sugar(adjoint=True, adjoint_options={"norm": "seminorm"}, rtol=1e-6, atol=1e-8),
                   dict(adjoint=pn.Adjoint(norm="seminorm"), controller=pn.IController(rtol=1e-6, atol=1e-8))):
        sol = pn.solve(field, y0, T, **kwargs)
        grads.append(torch.autograd.grad(sol.ys.square().sum(), (y0, *field.parameters())))
        nfes.append((sol.stats.nfe, sol.stats.nfe_adjoint))
    assert nfes[0] == nfes[1]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(controller=pn.IController(), rtol=1e-3), "rtol cannot also be"),
        (dict(controller=pn.IController(), options={"max_step": 0.1}), r"options\['max_step'\] cannot also be"),
        (dict(adjoint=pn.Adjoint(), adjoint_rtol=1e-3), "adjoint_rtol cannot also be"),
        (dict(controller=pn.FixedGrid()), "needs a fixed-grid method"),
        (dict(method="rk4", controller=pn.IController()), "'rk4' is a fixed-grid method"),
        (dict(adjoint_options={"norm": "seminorm"}), "adjoint_options only apply with adjoint=True"),
        (dict(controller="p"), "controller must be 'i'"),
        (dict(max_steps=0), "max_steps must be an int >= 1"),
    ],
)
def test_mixing_typed_parts_with_their_sugar_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pn.SolverSettings.from_arguments(**kwargs)


def test_solver_settings_unpack_into_solve_and_validate_once():
    settings = pn.SolverSettings(method="tsit5", controller=pn.IController(rtol=1e-6, atol=1e-8), max_steps=500)
    y0 = torch.tensor([1.0, 1.0], **F64)
    _same(pn.solve(lotka_volterra, y0, T, **settings),
          pn.solve(lotka_volterra, y0, T,
                   **_sugar(method="tsit5", rtol=1e-6, atol=1e-8, options={"max_num_steps": 500})))
    assert dict(settings)["max_steps"] == 500
    with pytest.raises(ValueError, match="unknown method 'dopri7'"):
        pn.SolverSettings(method="dopri7")
    with pytest.raises(ValueError, match="needs a fixed-grid method"):
        pn.SolverSettings(controller=pn.FixedGrid())
    assert pn.SolverSettings.from_arguments(method="rk4", options={"step_size": 0.5}) == pn.SolverSettings(
        method="rk4", controller=pn.FixedGrid(step_size=0.5))


def test_solver_settings_read_from_a_config():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--solver", type=pn.SolverSettings)
    config = parser.parse_args(["--solver", '{"method": "bosh3", "controller": {"rtol": 1e-4, "gains": [0.6, 0.3]},'
                                            ' "adjoint": {"norm": "seminorm"}}'])
    settings = parser.instantiate(config).solver
    assert settings == pn.SolverSettings(method="bosh3", controller=pn.PIController(rtol=1e-4, gains=(0.6, 0.3)),
                                         adjoint=pn.Adjoint(norm="seminorm"))


@pytest.mark.parametrize(("controller", "expected"), [
    ({"rtol": 1e-3, "atol": 1e-3}, pn.IController(rtol=1e-3, atol=1e-3)),  # fits PIController too: I comes first
    ({"rtol": 1e-3, "gains": [0.7, 0.4]}, pn.PIController(rtol=1e-3)),
    ({"class_path": "pynodeta.PIController", "init_args": {"rtol": 1e-3}}, pn.PIController(rtol=1e-3)),
    ({"step_size": 0.25}, pn.FixedGrid(step_size=0.25)),
])
def test_a_controller_mapping_in_a_config_is_the_first_controller_type_that_takes_its_keys(controller, expected):
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--solver", type=pn.SolverSettings)
    method = "rk4" if isinstance(expected, pn.FixedGrid) else "dopri5"
    config = parser.parse_object({"solver": {"method": method, "controller": controller}})
    settings = parser.instantiate(config).solver
    assert type(settings.controller) is type(expected) and settings.controller == expected


def test_own_tableau_benchmarks_against_dopri5_in_three_lines():
    # the user's tableau: Bogacki-Shampine 3(2) typed in by hand, so it must reproduce "bosh3" exactly
    tableau = pn.ButcherTableau.from_fractions(
        c=[0, "1/2", "3/4", 1], a=[[], ["1/2"], [0, "3/4"], ["2/9", "1/3", "4/9"]],
        b=["2/9", "1/3", "4/9", 0], b_hat=["7/24", "1/4", "1/3", "1/8"])
    f, y0, t = van_der_pol(1.0), torch.tensor([2.0, 0.0], **F64), torch.linspace(0, 3, 7, **F64)

    mine = pn.Method.from_tableau(tableau, order=3, name="my_bs3")
    tolerances = pn.IController(rtol=1e-7, atol=1e-9)
    results = {m if isinstance(m, str) else m.name: pn.solve(f, y0, t, method=m, controller=tolerances)
               for m in (mine, "dopri5")}

    assert tableau == BOSH3 and results["my_bs3"].stats.method == "my_bs3"
    _same(results["my_bs3"], pn.solve(f, y0, t, method="bosh3", controller=pn.IController(rtol=1e-7, atol=1e-9)))
    assert results["my_bs3"].stats.nfe > results["dopri5"].stats.nfe  # a 3rd-order pair needs more work
    assert torch.allclose(results["my_bs3"].ys, results["dopri5"].ys, rtol=1e-5, atol=1e-6)


def test_own_non_fsal_tableau_gets_hermite_dense_output_with_f1():
    mine = pn.Method.from_tableau(ADAPTIVE_HEUN, order=2)
    f, y0 = van_der_pol(1.0), torch.tensor([2.0, 0.0], **F64)
    _same(pn.solve(f, y0, T, method=mine, controller=pn.IController(rtol=1e-5, atol=1e-7)),
          pn.solve(f, y0, T, method="adaptive_heun", controller=pn.IController(rtol=1e-5, atol=1e-7)))
    with pytest.raises(ValueError, match="Method object runs on backend 'torch' only"):
        pn.solve(f, y0, T, method=mine, backend="scipy")


def test_own_method_serves_the_adjoint_too():
    field = MLPField(dtype=torch.float64)
    y0 = torch.randn(4, 2, **F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    grads = []
    for method in (pn.Method.from_tableau(BOSH3, order=3), "bosh3"):
        sol = pn.solve(field, y0, T, method=method, controller=pn.IController(rtol=1e-6, atol=1e-8), adjoint=True)
        grads.append(torch.autograd.grad(sol.ys.sum(), (y0, *field.parameters())))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_adjoint_true_reuses_a_typed_forward_controller():
    """adjoint=True with a typed controller must solve backwards at the forward's tolerances, exactly as
    the rtol=/atol= sugar does (a regression: it once fell back to the 1e-7/1e-9 defaults)."""
    field = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    y0, t = torch.randn(4, 3, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    counts = []
    params = tuple(field.parameters())
    for settings in (pn.SolverSettings(controller=pn.IController(rtol=1e-2, atol=1e-2),
                                       adjoint=pn.Adjoint(params=params)),
                     _sugar(rtol=1e-2, atol=1e-2, adjoint=True, adjoint_params=params)):
        sol = pn.solve(lambda s, y: field(y), y0, t, **settings)
        sol.ys.square().sum().backward()
        counts.append((sol.stats.nfe, sol.stats.nfe_adjoint))
    assert counts[0] == counts[1]
    assert counts[0][1] < 100  # the 1e-7 defaults take several times more evaluations
