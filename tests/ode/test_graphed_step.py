"""backend_options={"cuda_graph": True}: the trial step captured once per solve and replayed.

CUDA graphs need a GPU (tests/test_cuda.py captures real ones). Here the capture is ``RerunCapture``, a CPU
stand-in with a graph's semantics: recording yields output buffers that hold nothing valid (NaN) until a
replay, and every replay rewrites those same buffers in place from the same input buffers. So these tests
check what the solver does around a graph: the steps and NFE of the eager loop, inputs copied in before
each replay, outputs copied out before the next one overwrites them, the warm-up steps, the adjoint's
forward solve, and the refusals."""

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.backends import graphed_step
from pynodeta.ode.backends.graphed_step import RerunCapture

from .small_field import SmallField

GRAPH = {"cuda_graph": True}


@pytest.fixture
def stand_in(monkeypatch):
    captures = []

    def capture_for(device):
        captures.append(RerunCapture())
        return captures[-1]

    monkeypatch.setattr(graphed_step, "graph_capture", capture_for)
    return captures


@pytest.fixture(scope="module")
def field():
    return SmallField()


def _solve(field, method="dopri5", t=(0.0, 0.5, 1.0, 2.0), **kwargs):
    torch.manual_seed(1)
    y0 = torch.randn(8, 2, dtype=torch.float64)
    return pn.solve(field, y0, torch.tensor(t, dtype=torch.float64), method=method,
                    controller=pn.IController(rtol=1e-6, atol=1e-8), **kwargs)


@pytest.mark.parametrize("method", ["dopri5", "adaptive_heun"])  # FSAL, and one with an extra f(t1, y1)
@pytest.mark.parametrize("t", [(0.0, 0.5, 1.0, 2.0), (2.0, 1.0, 0.25, -0.5)], ids=["forward", "backward"])
def test_replayed_step_takes_the_eager_steps(field, stand_in, method, t):
    with torch.no_grad():
        eager, graphed = _solve(field, method, t), _solve(field, method, t, backend_options=GRAPH)
    (capture,) = stand_in
    assert (capture.warmups, capture.captures) == (graphed_step.WARMUP_STEPS, 1)
    assert capture.replays == graphed.stats.n_steps - graphed_step.WARMUP_STEPS > 10
    assert graphed.stats.t_evaluated == pytest.approx(eager.stats.t_evaluated, rel=1e-7)
    assert graphed.stats.nfe == eager.stats.nfe
    assert (graphed.stats.n_accepted, graphed.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    assert eager.stats.n_rejected > 0  # rejected steps replay from the same start
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-9, atol=1e-11)


def test_a_solve_shorter_than_the_warmup_captures_nothing(field, stand_in):
    with torch.no_grad():
        eager = _solve(field, t=(0.0, 1e-3))
        graphed = _solve(field, t=(0.0, 1e-3), backend_options=GRAPH)
    assert graphed.stats.n_steps <= graphed_step.WARMUP_STEPS and stand_in[0].captures == 0
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-12, atol=1e-14)


def test_each_solve_captures_its_own_graph_and_sees_parameters_changed_in_place(stand_in):
    field = SmallField()
    with torch.no_grad():
        before = _solve(field, backend_options=GRAPH)
        for p in field.parameters():
            p.mul_(0.5)  # as an optimiser step does between solves
        after, eager_after = _solve(field, backend_options=GRAPH), _solve(field)
    assert len(stand_in) == 2 and all(capture.captures == 1 for capture in stand_in)
    assert not torch.allclose(before.ys[-1], after.ys[-1])
    torch.testing.assert_close(after.ys, eager_after.ys, rtol=1e-9, atol=1e-11)


def test_adjoint_replays_the_forward_solve_and_runs_the_backward_one_eagerly(field, stand_in):
    grads, nfe = [], []
    for options in (None, GRAPH):
        field.zero_grad()
        solution = _solve(field, adjoint=True, backend_options=options)
        solution.ys[-1].square().sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
        nfe.append(solution.stats.nfe)
    assert len(stand_in) == 1 and stand_in[0].replays > 0  # the forward solve only
    assert nfe[0] == nfe[1]
    for eager, graphed in zip(*grads, strict=True):
        torch.testing.assert_close(graphed, eager, rtol=1e-10, atol=1e-12)


def test_odeint_takes_cuda_graph_among_torchdiffeqs_options(field, stand_in):
    torch.manual_seed(1)
    y0, t = torch.randn(8, 2, dtype=torch.float64), torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    with torch.no_grad():
        graphed = pn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"cuda_graph": True, "max_num_steps": 900})
        eager = pn.odeint(field, y0, t, rtol=1e-6, atol=1e-8)
    assert stand_in[0].replays > 0
    torch.testing.assert_close(graphed, eager, rtol=1e-9, atol=1e-11)


def test_a_failed_capture_names_the_option_what_func_may_not_do_and_the_fix(monkeypatch, field):
    class Refusing(RerunCapture):
        def capture(self, step):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed_step, "graph_capture", lambda device: Refusing())
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"cuda_graph.*not permitted when stream is capturing"
                                        r".*\.item\(\).*drop the option"):
        _solve(field, backend_options=GRAPH)


def test_cuda_graph_refuses_gradients_cpu_states_and_what_it_cannot_replay(field):
    y0, t = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"autograd cannot differentiate: solve under torch.no_grad\(\)"):
        pn.solve(field, y0, t, backend_options=GRAPH)
    with torch.no_grad():
        with pytest.raises(ValueError, match="y0 is on cpu: move y0 and func to a CUDA device, or drop the option"):
            pn.solve(field, y0, t, backend_options=GRAPH)
        with pytest.raises(ValueError, match="fixed-grid: drop the option"):
            pn.solve(field, y0, t, method="rk4", controller=pn.FixedGrid(step_size=0.1), backend_options=GRAPH)
        with pytest.raises(ValueError, match="multistep method: drop the option"):
            pn.solve(field, y0, t, method="implicit_adams", controller=pn.FixedGrid(step_size=0.1),
                     backend_options=GRAPH)
        with pytest.raises(ValueError, match="one of 'compile' and 'cuda_graph', not both"):
            pn.solve(field, y0, t, backend_options={"compile": True, "cuda_graph": True})
        with pytest.raises(ValueError, match="drop batched=True to use it"):
            pn.solve(field, y0, t, batched=True, backend_options=GRAPH)
        with pytest.raises(TypeError, match=r"backend_options\['cuda_graph'\] must be True or False"):
            pn.solve(field, y0, t, backend_options={"cuda_graph": 1})
