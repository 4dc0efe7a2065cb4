"""torchdiffeq 0.2.5 behaviours its own test suite exercises: 0-d tuple parts, a single output time,
step callbacks and the adjoint norm's layout."""

import math

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.problems import MatrixSystem

torchdiffeq = pytest.importorskip("torchdiffeq")
F64 = torch.float64


def oscillator(t, state):
    x, v = state
    return v, -x


def test_tuple_state_with_0d_parts_follows_the_oscillator():
    y0 = (torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    t = torch.linspace(0, 2, 5, dtype=F64)
    x, v = pn.odeint(oscillator, y0, t, rtol=1e-10, atol=1e-12)
    assert x.shape == v.shape == (5,)
    assert torch.allclose(x, torch.cos(t), atol=1e-8) and torch.allclose(v, -torch.sin(t), atol=1e-8)


@pytest.mark.parametrize("door", ["odeint", "odeint_adjoint"])
def test_single_output_time_requiring_grad_returns_y0_with_identity_gradient(door):
    y0 = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.3], dtype=F64, requires_grad=True)
    kwargs = {"adjoint_params": ()} if door == "odeint_adjoint" else {}
    ys = getattr(pn, door)(lambda t, y: -y, y0, t, **kwargs)
    assert ys.shape == (1, 2) and torch.equal(ys[0].detach(), y0.detach())
    (ys * torch.tensor([3.0, 5.0], dtype=F64)).sum().backward()
    assert torch.equal(y0.grad, torch.tensor([3.0, 5.0], dtype=F64))
    assert torch.equal(t.grad, torch.zeros(1, dtype=F64))  # y(t0) = y0 whatever t0 is


class Recorder(torch.nn.Module):
    """dy/dt = A y with every callback recording (t0, dt) and the state's layout."""

    def __init__(self, names):
        super().__init__()
        self.field = MatrixSystem()
        self.calls = {name: [] for name in names}
        for name in names:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def record(t0, y0, dt):
            shapes = tuple(p.shape for p in y0) if isinstance(y0, tuple) else y0.shape
            self.calls[name].append((float(t0), float(dt), shapes))
        return record

    def forward(self, t, y):
        return self.field(t, y)


FORWARD = ("callback_step", "callback_accept_step", "callback_reject_step")


@pytest.mark.parametrize("t_end", [2.0, -2.0])
def test_adaptive_callbacks_match_the_steps_in_the_callers_time(t_end):
    func = Recorder(FORWARD)
    y0 = torch.tensor([[1.0, 0.0, 0.5]], dtype=F64)
    sol = pn.solve(func, y0, torch.tensor([0.0, t_end], dtype=F64),
                   controller=pn.IController(rtol=1e-6, atol=1e-8, first_step=1.0))  # too large: a rejection
    steps, accepted, rejected = (func.calls[n] for n in FORWARD)
    assert len(steps) == sol.stats.n_steps and len(accepted) == sol.stats.n_accepted
    assert len(rejected) == sol.stats.n_rejected >= 1
    assert [dt for _, dt, _ in accepted] == pytest.approx(sol.stats.step_sizes, rel=1e-15)
    starts = [t0 for t0, _, _ in accepted]
    assert starts[0] == 0.0 and all(math.copysign(1, t_end) * (b - a) > 0 for a, b in zip(starts, starts[1:]))
    assert all(shape == y0.shape for _, _, shape in steps)


def test_fixed_grid_calls_callback_step_once_per_grid_step_and_warns_about_the_others():
    func = Recorder(("callback_step", "callback_accept_step"))
    with pytest.warns(UserWarning, match="callback_accept_step"):
        pn.odeint(func, torch.ones(1, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                  options={"step_size": 0.1})
    assert [t0 for t0, _, _ in func.calls["callback_step"]] == pytest.approx([i / 10 for i in range(10)])
    assert func.calls["callback_accept_step"] == []


class _CallableWithCallbacks:
    """A plain callable (not a Module) carrying a callback, as torchdiffeq allows."""

    def __init__(self, f, recorder):
        self.f, self.callback_step = f, recorder.callback_step

    def __call__(self, t, y):
        return self.f(t, y)


def test_tuple_state_callbacks_receive_the_tuple():
    recorder = Recorder(("callback_step",))
    func = _CallableWithCallbacks(lambda t, y: (-y[0], -y[1]), recorder)
    y0 = (torch.tensor(1.0, dtype=F64), torch.zeros(2, dtype=F64))
    pn.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="euler", options={"step_size": 0.5})
    assert recorder.calls["callback_step"] == [(0.0, 0.5, ((), (2,))), (0.5, 0.5, ((), (2,)))]


def test_adjoint_callbacks_run_on_the_backward_solve_with_torchdiffeqs_layout():
    func = Recorder(tuple(n + "_adjoint" for n in FORWARD))
    y0 = torch.tensor([[1.0, 0.0, 0.5]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    sol = pn.solve(func, y0, t, adjoint=True, controller=pn.IController(rtol=1e-6, atol=1e-8))
    assert not any(func.calls.values())  # nothing during the forward solve
    sol.ys.sum().backward()
    steps, accepted, rejected = (func.calls[n + "_adjoint"] for n in FORWARD)
    assert len(steps) == sol.stats.n_steps_adjoint == len(accepted) + len(rejected) > 0
    assert steps[0][0] == 2.0 and all(0.0 <= t0 <= 2.0 for t0, _, _ in steps)
    assert steps[0][2] == ((), (1, 3), (1, 3), (3, 3))  # (t-adjoint, y, dL/dy, dL/dA)


def test_scipy_backend_warns_that_it_cannot_call_callbacks():
    func = Recorder(("callback_step",))
    with pytest.warns(UserWarning, match="does not call the callbacks"):
        pn.solve(func, torch.ones(1, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), backend="scipy",
                 method="rk45")


def _norm_layouts(library, y0, **kwargs):
    layouts = []

    def norm(parts):
        layouts.append(tuple(p.shape for p in parts))
        return max(p.abs().max() if p.numel() else p.new_zeros(()) for p in parts)

    func = MatrixSystem()
    field = (lambda t, y: (func(t, y[0]), -y[1])) if isinstance(y0, tuple) else func
    out = library.odeint_adjoint(field, y0, torch.tensor([0.0, 1.0], dtype=F64),
                                 adjoint_params=tuple(func.parameters()), adjoint_options={"norm": norm}, **kwargs)
    sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    return layouts


@pytest.mark.parametrize("tuple_state", [False, True])
def test_a_user_adjoint_norm_sees_torchdiffeqs_layout(tuple_state):
    def y0():
        first = torch.tensor([[1.0, 0.0, 0.5]], dtype=F64, requires_grad=True)
        return (first, torch.ones(2, dtype=F64, requires_grad=True)) if tuple_state else first

    ours, theirs = _norm_layouts(pn, y0()), _norm_layouts(torchdiffeq, y0())
    assert ours[0] == theirs[0]
    assert ours[0][0] == ()  # the time part is a scalar
    assert len(ours[0]) == (6 if tuple_state else 4)


@pytest.mark.parametrize("solver", ["RK45", "DOP853", "LSODA"])
def test_scipy_solver_method_routes_to_scipy(solver):
    t = torch.linspace(0, 2, 4, dtype=F64)
    y0 = torch.tensor([1.0, -3.0], dtype=F64)
    ys = pn.odeint(lambda t, y: -y, y0, t, method="scipy_solver", options={"solver": solver})
    assert torch.allclose(ys, y0 * torch.exp(-t)[:, None], rtol=1e-5, atol=1e-7)
    y0.requires_grad_(True)
    ys = pn.odeint_adjoint(lambda t, y: -y, y0, t, method="scipy_solver", options={"solver": solver},
                           adjoint_params=())
    (grad,) = torch.autograd.grad(ys[-1].sum(), y0)  # d y(2) / d y0 = exp(-2)
    assert torch.allclose(grad, torch.full_like(y0, math.exp(-2)), rtol=1e-5)


@pytest.mark.parametrize("interface", [pn.odeint, pn.odeint_adjoint])
def test_events_with_the_scipy_solver_are_refused_by_both_interfaces(interface):
    y0, extra = torch.tensor([1.0], dtype=F64), {"adjoint_params": ()} if interface is pn.odeint_adjoint else {}
    with pytest.raises(NotImplementedError, match="event_fn with method='scipy_solver' is not supported"):
        interface(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64), method="scipy_solver",
                  event_fn=lambda t, y: y[0] - 0.5, **extra)


def test_interp_is_torchdiffeqs_name_for_interpolation():
    t = torch.tensor([0.0, 0.33, 1.0], dtype=F64)
    y0 = torch.tensor([1.0], dtype=F64)
    ours = pn.odeint(lambda t, y: -y, y0, t, method="rk4", options={"step_size": 0.25, "interpolation": "cubic"})
    theirs = pn.odeint(lambda t, y: -y, y0, t, method="rk4", options={"step_size": 0.25, "interp": "cubic"})
    linear = pn.odeint(lambda t, y: -y, y0, t, method="rk4", options={"step_size": 0.25})
    assert torch.equal(ours, theirs) and not torch.equal(ours, linear)
    with pytest.raises(ValueError, match="same setting"):
        pn.odeint(lambda t, y: -y, y0, t, method="rk4", options={"interp": "cubic", "interpolation": "cubic"})


class _JumpingDecay(torch.nn.Module):
    """y' = -y before t = 0.5 and -3y after: y(1) = y0 exp(-2)."""

    def __init__(self):
        super().__init__()
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return torch.where(t < 0.5, -y, -3 * y)


@pytest.mark.parametrize("door", ["odeint", "odeint_adjoint"])
def test_jump_t_steps_on_the_discontinuity_and_saves_evaluations(door):
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    kwargs = {"adjoint_params": ()} if door == "odeint_adjoint" else {}
    plain, told = _JumpingDecay(), _JumpingDecay()
    ys_plain = getattr(pn, door)(plain, y0, t, rtol=1e-6, atol=1e-6, **kwargs)
    ys_told = getattr(pn, door)(told, y0, t, rtol=1e-6, atol=1e-6, options={"jump_t": torch.tensor([0.5])},
                                **kwargs)
    assert told.nfe < plain.nfe / 2
    exact = y0.detach() * math.exp(-2)
    assert (ys_told[-1] - exact).abs().max() < (ys_plain[-1] - exact).abs().max() / 10
    ys_told[-1].sum().backward()  # d y(1) / d y0 = exp(-2) for each component
    assert torch.allclose(y0.grad, torch.full((2,), math.exp(-2), dtype=F64), rtol=1e-5)


def test_step_t_points_are_stepped_on():
    sol = pn.solve(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64),
                   controller=pn.IController(rtol=1e-3, atol=1e-3, step_t=(0.3, 1.7)))
    ends = torch.tensor(sol.stats.step_sizes, dtype=F64).cumsum(0)
    assert any(abs(float(e) - 0.3) < 1e-12 for e in ends) and any(abs(float(e) - 1.7) < 1e-12 for e in ends)
    with pytest.raises(ValueError, match="for adaptive methods"):
        pn.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="rk4", options={"step_t": [0.5]})


class _CountedDecay:
    def __init__(self):
        self.times = []

    def __call__(self, t, y):
        self.times.append(float(t))
        return -y


@pytest.mark.parametrize("end", [2.5, -2.5])
def test_a_step_t_at_the_end_lands_the_last_step_there_as_torchdiffeq_does(end):
    """Without it dopri5 steps past t[-1] and interpolates (torchdiffeq's stepping); with it no evaluation
    lies beyond t[-1], with torchdiffeq's evaluation times."""
    y0, t = torch.ones(1, dtype=F64), torch.tensor([0.0, end], dtype=F64)
    plain = pn.solve(lambda t, y: -y, y0, t, controller=pn.IController(rtol=1e-5, atol=1e-5))
    assert max(abs(v) for v in plain.stats.t_evaluated) > abs(end)  # what the option prevents
    theirs, ours = _CountedDecay(), _CountedDecay()
    torchdiffeq.odeint(theirs, y0, t, rtol=1e-5, atol=1e-5, options={"step_t": torch.tensor([end], dtype=F64)})
    sol = pn.solve(ours, y0, t, controller=pn.IController(rtol=1e-5, atol=1e-5, step_t=(end,)))
    assert max(abs(v) for v in ours.times) <= abs(end)
    assert ours.times == pytest.approx(theirs.times, rel=1e-12, abs=1e-12)
    assert float(sol.ys[-1]) == pytest.approx(math.exp(-end), rel=1e-3)


def test_the_initial_step_probe_stays_short_of_the_first_stop():
    """Hairer's initial-step rule probes t0 + h0 with h0 = 0.01·|y|/|f| = 0.01 here; over a span of 1e-3
    torchdiffeq probes past the end (Hairer's HINIT caps h0 at |t_end − t0|), pynodeta stops at the end."""
    y0, t = torch.ones(1, dtype=F64), torch.tensor([0.0, 1e-3], dtype=F64)
    theirs, ours = _CountedDecay(), _CountedDecay()
    torchdiffeq.odeint(theirs, y0, t, rtol=1e-5, atol=1e-5, options={"step_t": t[1:]})
    sol = pn.solve(ours, y0, t, controller=pn.IController(rtol=1e-5, atol=1e-5, step_t=(1e-3,)))
    assert max(theirs.times) == pytest.approx(1e-2)
    assert max(ours.times) <= 1e-3
    assert float(sol.ys[-1]) == pytest.approx(math.exp(-1e-3), rel=1e-9)


def test_a_jump_t_bounds_the_initial_step_probe():
    """A probe across a jump sees the other side's field; the probe now stops at the jump."""
    jumping = _JumpingDecay()
    times = []

    def field(t, y):
        times.append(float(t))
        return jumping(t, y)

    pn.solve(field, torch.ones(1, dtype=F64), torch.tensor([0.499, 1.0], dtype=F64),
             controller=pn.IController(rtol=1e-6, atol=1e-6, jump_t=(0.5,)))
    assert times[1] <= 0.5  # the probe: the second evaluation, after f(t0)


def _free_fall(g):
    return lambda t, y: (y[1], -g * torch.ones_like(y[1]))


@pytest.mark.parametrize("door", ["odeint", "odeint_adjoint"])
def test_event_time_and_its_gradients_match_free_falls_closed_form(door):
    """h(t) = h0 - g t^2 / 2 hits 0 at t* = t0 + sqrt(2 h0 / g): dt*/dh0 = 1/sqrt(2 h0 g),
    dt*/dg = -sqrt(2 h0) g^(-3/2) / 2, dt*/dt0 = 1; the speed there is -sqrt(2 g h0)."""
    g = torch.tensor(9.81, dtype=F64, requires_grad=True)
    h0 = torch.tensor(2.0, dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    kwargs = {"adjoint_params": (g,)} if door == "odeint_adjoint" else {}
    event_t, (h, v) = pn.odeint_event(_free_fall(g), (h0, torch.tensor(0.0, dtype=F64)), t0,
                                      event_fn=lambda t, y: y[0], odeint_interface=getattr(pn, door),
                                      rtol=1e-10, atol=1e-12, **kwargs)
    assert float(event_t) == pytest.approx(0.5 + math.sqrt(2 * 2.0 / 9.81), abs=1e-10)
    assert h.shape == (2,) and float(h[-1]) == pytest.approx(0.0, abs=1e-10)
    assert float(v[-1]) == pytest.approx(-math.sqrt(2 * 9.81 * 2.0), rel=1e-9)
    d_h0, d_g, d_t0 = torch.autograd.grad(event_t, (h0, g, t0))
    assert float(d_h0) == pytest.approx(1 / math.sqrt(2 * 2.0 * 9.81), rel=1e-8)
    assert float(d_g) == pytest.approx(-math.sqrt(2 * 2.0) / 2 * 9.81**-1.5, rel=1e-8)
    assert float(d_t0) == pytest.approx(1.0, rel=1e-8)


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.01, "interp": "cubic"})])
def test_event_backwards_in_time_on_exponential_decay(method, options):
    """y' = -y from y(0) = 1 backwards: y = e^(-t) reaches 2 at t* = -ln 2."""
    event_t, ys = pn.odeint_event(lambda t, y: -y, torch.tensor([1.0], dtype=F64), torch.tensor(0.0, dtype=F64),
                                  event_fn=lambda t, y: y.sum() - 2.0, reverse_time=True, method=method,
                                  options=options, rtol=1e-10, atol=1e-12)
    assert float(event_t) == pytest.approx(-math.log(2), abs=1e-7)
    assert ys.shape == (2, 1) and float(ys[-1]) == pytest.approx(2.0, abs=1e-7)


@pytest.mark.parametrize("perturb", [True, False])
def test_perturb_evaluates_one_sided_at_grid_points(perturb):
    """f jumps at t = 0.5: with perturb each step sees only its own side, so rk4 with step 0.5 integrates
    the piecewise-constant field exactly (0.5 * 1 + 0.5 * 3); without it, the c = 1 stage of the first
    step and the c = 0 stage of the second read the other side's value at the grid point 0.5."""
    times = []

    def field(t, y):
        times.append(float(t))
        return torch.where(t < 0.5, 1.0, 3.0) * torch.ones_like(y)

    ys = pn.odeint(field, torch.zeros(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rk4",
                   options={"step_size": 0.5, "perturb": perturb})
    assert (0.5 in times) != perturb and (0.0 in times) != perturb
    if perturb:
        assert float(ys[-1]) == pytest.approx(2.0, abs=1e-12)
    else:
        assert abs(float(ys[-1]) - 2.0) > 0.1


@pytest.mark.parametrize("door", ["odeint", "odeint_adjoint"])
def test_grid_constructor_sets_the_euler_grid_forward_and_backward(door):
    """Euler on y' = y with 10 steps of 0.1 gives (1.1)^10 and, through the same grid backwards, the same
    discrete gradient; the constructor sees t = [0, 1] forward and [1, 0] in the adjoint's backward solve."""
    seen = []

    def grid(func, y0, t):
        seen.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=F64)

    x0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    kwargs = {"adjoint_params": ()} if door == "odeint_adjoint" else {}
    xs = getattr(pn, door)(lambda t, x: x, x0, torch.tensor([0.0, 1.0], dtype=F64), method="euler",
                           options={"grid_constructor": grid}, **kwargs)
    assert float(xs[1]) == pytest.approx(1.1**10, rel=1e-12)
    xs[1].backward()
    assert float(x0.grad) == pytest.approx(1.1**10, rel=1e-12)
    assert seen == ([[0.0, 1.0], [1.0, 0.0]] if door == "odeint_adjoint" else [[0.0, 1.0]])
    with pytest.raises(ValueError, match="grid_constructor"):
        pn.odeint(lambda t, x: x, x0, torch.tensor([0.0, 1.0], dtype=F64), method="euler",
                  options={"grid_constructor": lambda f, y0, t: torch.tensor([0.0, 0.5], dtype=F64)})


def test_adams_weights_are_the_classical_ones():
    from pynodeta.ode.adams import adams_weights

    assert adams_weights(2, False) == pytest.approx((3 / 2, -1 / 2), abs=1e-15)
    assert adams_weights(4, False) == pytest.approx(tuple(w / 24 for w in (55, -59, 37, -9)), abs=1e-15)
    assert adams_weights(4, True) == pytest.approx(tuple(w / 24 for w in (9, 19, -5, 1)), abs=1e-15)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams", "fixed_adams"])
def test_adams_methods_take_torchdiffeqs_steps(method):
    from pynodeta.ode.problems import rational

    y0, t = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    ours = pn.odeint(rational, y0, t, method=method, options={"step_size": 0.05})
    theirs = torchdiffeq.odeint(rational, y0, t, method=method, options={"step_size": 0.05})
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-11)


def test_implicit_adams_converges_at_order_four_or_more():
    import numpy as np

    from pynodeta.ode.problems import rational, rational_exact

    y0, t = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    steps = [0.05, 0.025, 0.0125]
    errors = [float((pn.odeint(rational, y0, t, method="implicit_adams", options={"step_size": h})[-1]
                     - rational_exact(y0, t)[-1]).abs().max()) for h in steps]
    assert float(np.polyfit(np.log(steps), np.log(errors), 1)[0]) >= 3.7


def test_event_in_float32_is_located_to_float32_resolution():
    event_t, ys = pn.odeint(lambda t, y: -y, torch.tensor([1.0]), torch.tensor([0.0, 1.0]),
                            event_fn=lambda t, y: y.sum() - 0.5, rtol=1e-5, atol=1e-7)
    assert event_t.dtype == torch.float32 and float(event_t) == pytest.approx(math.log(2), abs=1e-5)


def _slow_decay(t, y):
    """y' = -y / 10,000: y = e^(-t / 10,000), quiet for thousands of time units."""
    return -1e-4 * y


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_an_event_past_ten_thousand_windows_is_found_as_torchdiffeq_finds_it(reverse):
    """y = e^(-t / 10,000) reaches e^(-1.5) at t* = 15,000 (backwards, e^(1.5) at -15,000), further than the
    10,000 windows of length 1 after which the search once gave up; torchdiffeq, checking the sign at the end
    of each of its steps, finds it. Windows that grow over the quiet stretch find it in a few dozen solves."""
    level = math.exp(1.5 if reverse else -1.5)
    kwargs = {"event_fn": lambda t, y: y.sum() - level, "reverse_time": reverse, "rtol": 1e-10, "atol": 1e-12}
    y0, t0 = torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64)
    with pn.record_stats() as solves:
        event_t, ys = pn.odeint_event(_slow_decay, y0, t0, **kwargs)
    anchor_t, _ = torchdiffeq.odeint_event(_slow_decay, y0, t0, **kwargs)
    assert float(event_t) == pytest.approx(-15_000.0 if reverse else 15_000.0, abs=1e-5)
    assert float(event_t) == pytest.approx(float(anchor_t), abs=1e-5)
    assert float(ys[-1, 0]) == pytest.approx(level, rel=1e-9)
    assert len(solves) < 100


def test_two_close_crossings_after_a_quiet_stretch_are_seen_first():
    """event_fn = (y - c1)(y - c2) along y = e^(-t / 10,000) is negative only between t1 = 20,550 and
    t2 = 20,950, about one of the solver's steps apart. Windows that kept doubling would be 16,384 long
    there, sampled every 512, and pass over both crossings; windows grown only while they keep a sample per
    accepted step see the first, as torchdiffeq's check at the end of each step does."""
    c1, c2 = math.exp(-2.055), math.exp(-2.095)
    kwargs = {"event_fn": lambda t, y: (y.sum() - c1) * (y.sum() - c2) / (c1 * c2), "rtol": 1e-10, "atol": 1e-12}
    y0, t0 = torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64)
    event_t, _ = pn.odeint_event(_slow_decay, y0, t0, **kwargs)
    anchor_t, _ = torchdiffeq.odeint_event(_slow_decay, y0, t0, **kwargs)
    assert float(event_t) == pytest.approx(20_550.0, abs=1e-5)
    assert float(event_t) == pytest.approx(float(anchor_t), abs=1e-5)


def test_an_event_just_before_the_dynamics_break_down_is_found_though_a_long_window_overshoots():
    """y' = -1 / (2y) from y(0) = sqrt(100.6): y^2 = 100.6 - t reaches 1 at t* = 99.6 and y reaches 0 (where
    y' is infinite) at 100.6. The window grown to [63, 127] cannot be solved; the search goes on from 63 in
    windows of length 1, as it did before windows grew. Each window ends on a step of its solve, so the next
    starts from a step's own state: restarts from states interpolated inside a step past the window's end
    put the event 2e-4 early here."""
    y0, t0 = torch.tensor([math.sqrt(100.6)], dtype=F64), torch.tensor(0.0, dtype=F64)
    kwargs = {"event_fn": lambda t, y: y.sum() - 1}
    event_t, ys = pn.odeint_event(lambda t, y: -1 / (2 * y), y0, t0, **kwargs)
    anchor_t, _ = torchdiffeq.odeint_event(lambda t, y: -1 / (2 * y), y0, t0, **kwargs)
    assert float(event_t) == pytest.approx(99.6, abs=1e-5)
    assert float(event_t) == pytest.approx(float(anchor_t), abs=1e-5)
    assert float(ys[-1, 0]) == pytest.approx(1.0, abs=1e-5)


def test_an_event_that_never_happens_ends_where_float64_does():
    """A constant state never reaches 2: its windows double (the solver takes a step or two in each) until
    the next would pass float64's range, about a thousand solves, none of them at an infinite time."""
    times = []

    def constant(t, y):
        times.append(float(t))
        return torch.zeros_like(y)

    with pytest.raises(RuntimeError, match=r"did not change sign from t0 = 0\.0 to t = .*e\+307, searched in "
                                           r"windows from length 1\.0.*pass float64's range"):
        pn.odeint_event(constant, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64),
                        event_fn=lambda t, y: y.sum() - 2)
    assert all(math.isfinite(t) for t in times)


def test_an_event_that_never_happens_where_steps_are_dense_names_the_window_bound(monkeypatch):
    """An oscillator's x never reaches 5; its windows stop growing where the solver's steps fill them, and the
    search gives up after _MAX_WINDOWS of them, saying how to search further."""
    from pynodeta.ode import events

    monkeypatch.setattr(events, "_MAX_WINDOWS", 20)
    with pytest.raises(RuntimeError, match=r"did not change sign from t0 = 0\.0 to t = .*: 20 windows searched; "
                                           r"check the event function, or start from longer windows: "
                                           r"odeint\(func, y0, torch\.stack\(\[t0, t0 \+ T\]\)"):
        pn.odeint_event(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([1.0, 0.0], dtype=F64),
                        torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0] - 5)
