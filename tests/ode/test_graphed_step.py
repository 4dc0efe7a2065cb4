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

from .small_field import SmallField

GRAPH = {"cuda_graph": True}


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
def test_replayed_step_takes_the_eager_steps(field, graph_stand_in, method, t):
    with torch.no_grad():
        eager, graphed = _solve(field, method, t), _solve(field, method, t, backend_options=GRAPH)
    (capture,) = graph_stand_in
    assert (capture.warmups, capture.captures) == (graphed_step.WARMUP_STEPS, 1)
    assert capture.replays == graphed.stats.n_steps - graphed_step.WARMUP_STEPS > 10
    assert graphed.stats.t_evaluated == pytest.approx(eager.stats.t_evaluated, rel=1e-7)
    assert graphed.stats.nfe == eager.stats.nfe
    assert (graphed.stats.n_accepted, graphed.stats.n_rejected) == (eager.stats.n_accepted, eager.stats.n_rejected)
    assert eager.stats.n_rejected > 0  # rejected steps replay from the same start
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-9, atol=1e-11)


def test_a_solve_shorter_than_the_warmup_captures_nothing(field, graph_stand_in):
    with torch.no_grad():
        eager = _solve(field, t=(0.0, 1e-3))
        graphed = _solve(field, t=(0.0, 1e-3), backend_options=GRAPH)
    assert graphed.stats.n_steps <= graphed_step.WARMUP_STEPS and graph_stand_in[0].captures == 0
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-12, atol=1e-14)


def test_each_solve_captures_its_own_graph_and_sees_parameters_changed_in_place(graph_stand_in):
    field = SmallField()
    with torch.no_grad():
        before = _solve(field, backend_options=GRAPH)
        for p in field.parameters():
            p.mul_(0.5)  # as an optimiser step does between solves
        after, eager_after = _solve(field, backend_options=GRAPH), _solve(field)
    assert len(graph_stand_in) == 2 and all(capture.captures == 1 for capture in graph_stand_in)
    assert not torch.allclose(before.ys[-1], after.ys[-1])
    torch.testing.assert_close(after.ys, eager_after.ys, rtol=1e-9, atol=1e-11)


def test_adjoint_replays_the_forward_solve_and_runs_the_backward_one_eagerly(field, graph_stand_in):
    grads, nfe = [], []
    for options in (None, GRAPH):
        field.zero_grad()
        solution = _solve(field, adjoint=True, backend_options=options)
        solution.ys[-1].square().sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
        nfe.append(solution.stats.nfe)
    assert len(graph_stand_in) == 1 and graph_stand_in[0].replays > 0  # the forward solve only
    assert nfe[0] == nfe[1]
    for eager, graphed in zip(*grads, strict=True):
        torch.testing.assert_close(graphed, eager, rtol=1e-10, atol=1e-12)


def test_odeint_takes_cuda_graph_among_torchdiffeqs_options(field, graph_stand_in):
    torch.manual_seed(1)
    y0, t = torch.randn(8, 2, dtype=torch.float64), torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    with torch.no_grad():
        graphed = pn.odeint(field, y0, t, rtol=1e-6, atol=1e-8, options={"cuda_graph": True, "max_num_steps": 900})
        eager = pn.odeint(field, y0, t, rtol=1e-6, atol=1e-8)
    assert graph_stand_in[0].replays > 0
    torch.testing.assert_close(graphed, eager, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("read", [lambda t: float(t), lambda t: t.item(), lambda t: 1.0 if t > 0.5 else 2.0,
                                  lambda t: len((t > 0.5).nonzero())], ids=["float", "item", "if", "nonzero"])
def test_a_func_that_reads_to_the_host_fails_to_capture_with_the_fix(field, graph_stand_in, read):
    def reading(t, y):
        return field(t, y) * read(t)

    with torch.no_grad(), pytest.raises(RuntimeError, match=r"cuda_graph.*could not be captured.*reads a value back "
                                        r"to the host.*\.item\(\).*drop the option"):
        _solve(reading, backend_options=GRAPH)
    assert graph_stand_in[0].warmups == graphed_step.WARMUP_STEPS  # the eager warm-up steps ran: only capture refuses


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


def test_a_func_may_read_host_tensors_and_checks_see_that_a_step_is_recorded(field, graph_stand_in):
    table = torch.tensor([1.0, 0.5], dtype=torch.float64)  # a host table, as a schedule's sigmas
    seen = []

    def reading(t, y):
        seen.append(graphed_step.capturing())
        return field(t, y) * float(table[1])

    with torch.no_grad():
        graphed, eager = _solve(reading, backend_options=GRAPH), _solve(reading)
    n_recorded = 6 * (graph_stand_in[0].replays + 1)  # dopri5's six stages, recorded once and replayed
    assert seen.count(True) == n_recorded and seen.count(False) == len(seen) - n_recorded > 0
    assert not graphed_step.capturing()
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-9, atol=1e-11)


def test_tuple_states_events_and_many_output_times_replay_as_the_eager_solve(graph_stand_in):
    def oscillator(t, y):
        return y[1], -y[0] - 0.1 * y[1] + torch.sin(t)

    y0 = (torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    t = torch.linspace(0, 5, 50, dtype=torch.float64)  # several outputs inside most steps: dense output
    start = torch.tensor(0.0, dtype=torch.float64)
    with torch.no_grad():
        eager = pn.odeint(oscillator, y0, t, rtol=1e-7, atol=1e-9)
        graphed = pn.odeint(oscillator, y0, t, rtol=1e-7, atol=1e-9, options=GRAPH)
        event = [pn.odeint_event(lambda t, y: -y, torch.ones(3, dtype=torch.float64), start, rtol=1e-8, atol=1e-10,
                                 event_fn=lambda t, y: y.sum() - 1.0, options=options) for options in (None, GRAPH)]
    assert graph_stand_in[0].replays > 0 and len(graph_stand_in) > 2  # odeint_event solves piece by piece
    for a, b in zip(graphed, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(event[1][0], event[0][0], rtol=1e-12, atol=1e-14)  # the event time
    torch.testing.assert_close(event[1][1], event[0][1], rtol=1e-12, atol=1e-14)
