"""backend_options={"compile": True}: the adaptive trial step as one compiled graph takes the same steps as
the eager loop (the same NFE and accepted and rejected steps, at the same times up to the error estimate's
round-off), gives the same solution and gradients up to round-off, and refuses what it cannot compile.
Each compile costs seconds on a CPU, so the tests share a few small fields and solve in float64, where
round-off cannot flip an accept/reject decision."""

import pytest
import torch

import pynodeta as pn

from .small_field import SmallField

COMPILE = {"compile": True}


@pytest.fixture(scope="module")
def field():
    return SmallField()


def _solve(field, method="dopri5", t=(0.0, 0.5, 2.0), **kwargs):
    torch.manual_seed(1)
    y0 = torch.randn(8, 2, dtype=torch.float64)
    return pn.solve(field, y0, torch.tensor(t, dtype=torch.float64), method=method,
                    controller=pn.IController(rtol=1e-6, atol=1e-8), **kwargs)


@pytest.mark.parametrize("method", ["dopri5", "adaptive_heun"])  # FSAL, and one with an extra f(t1, y1)
@pytest.mark.parametrize("t", [(0.0, 0.5, 2.0), (2.0, 1.0, -0.5)], ids=["forward", "backward"])
def test_compiled_step_takes_the_eager_steps(field, method, t):
    with torch.no_grad():
        eager, compiled = _solve(field, method, t), _solve(field, method, t, backend_options=COMPILE)
    # the error estimate cancels most of its digits, so the step sizes agree to its round-off, not to ulps
    assert compiled.stats.t_evaluated == pytest.approx(eager.stats.t_evaluated, rel=1e-7)
    assert compiled.stats.nfe == eager.stats.nfe
    assert (compiled.stats.n_accepted, compiled.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    assert eager.stats.n_rejected > 0  # the test exercises rejections
    assert compiled.stats.step_sizes == pytest.approx(eager.stats.step_sizes, rel=1e-7)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-9, atol=1e-11)


def test_compiled_step_backpropagates_as_the_eager_step(field):
    grads = []
    for options in (None, COMPILE):
        field.zero_grad()
        solution = _solve(field, backend_options=options)
        solution.ys[-1].square().sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)


def test_adjoint_compiles_the_forward_solve_and_runs_the_backward_one_eagerly(field):
    grads, nfe = [], []
    for options in (None, COMPILE):
        field.zero_grad()
        solution = _solve(field, adjoint=True, backend_options=options)
        solution.ys[-1].square().sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
        nfe.append(solution.stats.nfe)
    assert nfe[0] == nfe[1]
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)


def test_compile_refuses_fixed_grid_and_multistep_methods(field):
    y0, t = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="fixed-grid: drop the option"):
        pn.solve(field, y0, t, method="rk4", controller=pn.FixedGrid(step_size=0.1), backend_options=COMPILE)
    with pytest.raises(ValueError, match="multistep method: drop the option"):
        pn.solve(field, y0, t, method="implicit_adams", controller=pn.FixedGrid(step_size=0.1),
                 backend_options=COMPILE)


def test_compile_option_must_be_a_bool_and_other_options_are_still_refused(field):
    y0, t = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(TypeError, match=r"backend_options\['compile'\] must be True or False"):
        pn.solve(field, y0, t, backend_options={"compile": "yes"})
    with pytest.raises(ValueError, match=r"unknown backend_options \['jacobian'\] for backend 'torch'"):
        pn.solve(field, y0, t, backend_options={"compile": True, "jacobian": "autograd"})


@pytest.mark.parametrize("t", [(0.0, 0.5, 2.0), (2.0, 1.0, -0.5)], ids=["forward", "backward"])
def test_compiled_per_sample_step_takes_the_eager_steps(field, t):
    with torch.no_grad():
        eager, compiled = _solve(field, t=t, batched=True), _solve(field, t=t, batched=True, backend_options=COMPILE)
    assert compiled.stats.nfe == eager.stats.nfe
    assert torch.equal(compiled.stats.n_steps_per_sample, eager.stats.n_steps_per_sample)
    assert torch.equal(compiled.stats.n_accepted_per_sample, eager.stats.n_accepted_per_sample)
    assert (eager.stats.n_steps_per_sample > eager.stats.n_accepted_per_sample).any()  # some samples reject
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-9, atol=1e-11)


def test_compiled_per_sample_adjoint_gives_the_eager_gradients(field):
    grads = []
    for options in (None, COMPILE):
        field.zero_grad()
        solution = _solve(field, batched=True, adjoint=True, backend_options=options)
        solution.ys[:, -1].square().sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-11)


def test_a_failed_compile_names_the_option_and_the_eager_fallback():
    from pynodeta.ode.backends.compiled_step import run_compiled

    def graph(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, OSError("no C++ compiler found"), None)

    with pytest.raises(RuntimeError, match=r"compile.*OSError: no C\+\+ compiler found.*drop the option"):
        run_compiled(graph, 1, 2)


def test_odeint_takes_compile_among_torchdiffeqs_options(field):
    torch.manual_seed(1)
    y0, t = torch.randn(8, 2, dtype=torch.float64), torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    with torch.no_grad(), pn.record_stats() as records:
        compiled = pn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"compile": True, "max_num_steps": 1000})
        eager = pn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"max_num_steps": 1000})
    assert records[0].nfe == records[1].nfe
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-11)
    with pytest.raises(TypeError, match=r"backend_options\['compile'\] must be True or False"):
        pn.odeint(field, y0, t, options={"compile": 1})
