"""Finding ODE blocks in a network and auditing each right-hand side at its real input state."""

import pytest
import torch

from pynodeta.diagnose import audit_ode_blocks, capture_state, find_ode_functions
from pynodeta.models import TrajectoryNODE

from .tiny_models import TinyNODE


def test_ode_blocks_are_found_by_their_time_aware_func():
    network = TinyNODE()
    assert [(name, func) for name, _, func in find_ode_functions(network)] == [("ode", network.ode.func)]


def test_the_captured_state_is_the_blocks_input_and_the_solve_never_runs():
    torch.manual_seed(0)
    network = TinyNODE().eval()
    x = torch.randn(3, 1, 8, 8)
    calls = []
    network.ode.func.register_forward_hook(lambda *args: calls.append(1))
    state = capture_state(network, network.ode, lambda: network(x))
    torch.testing.assert_close(state, network.stem(x), rtol=0, atol=0)
    assert calls == []


def test_the_right_hand_side_is_audited_over_the_blocks_span():
    torch.manual_seed(0)
    network = TinyNODE("bn")
    network.ode.t_span = (0.0, 2.0)
    (report,) = audit_ode_blocks(network, torch.randn(4, 1, 8, 8))
    assert report.subject == "ode.func"
    assert report.times == (0.0, 0.5, 1.0, 1.5, 2.0)
    assert [f.kind for f in report.findings] == ["ConcatConv2d", "BatchNorm2d"]


def test_a_trajectory_model_is_audited_over_the_time_grid_it_is_called_with():
    """TrajectoryNODE(t0, y0, t_grid) passes its grid to the ODE block per call: the block's t_span (0, 5) is
    only TA-BN's grid, the solve runs over [0, 2], and times past 2 are refused as for any span."""
    torch.manual_seed(0)
    network = TrajectoryNODE(dim=2, hidden=8, depth=2, norm="tabn", time_horizon=5.0)
    inputs = (0.0, torch.randn(4, 2), torch.linspace(0.0, 2.0, 9))   # the network's positional inputs
    (report,) = audit_ode_blocks(network, inputs)
    assert report.subject == "ode.func" and report.times == (0.0, 0.5, 1.0, 1.5, 2.0)
    assert [f.kind for f in report.findings if f.role == "normalisation"] == ["TABatchNorm1d"]
    with pytest.raises(ValueError, match=r"times \[3.0\] lie outside ode's span \[0, 2\]"):
        audit_ode_blocks(network, inputs, [0.0, 1.0, 3.0])
    # a float32 grid ends at float32(0.7) = 0.69999999: 0.7 lies within it
    assert audit_ode_blocks(network, (0.0, inputs[1], torch.linspace(0.0, 0.7, 8)), [0.0, 0.7])[0].times == (0.0, 0.7)


def test_a_module_path_selects_the_right_hand_side_directly():
    torch.manual_seed(0)
    network = TinyNODE("gn")
    (report,) = audit_ode_blocks(network, torch.randn(4, 1, 8, 8), [0.0, 1.0], module="ode.func")
    assert report.subject == "ode.func" and not report.vanishing


def test_bad_module_paths_and_models_without_blocks_are_explained():
    network = TinyNODE()
    with pytest.raises(ValueError, match=r"module 'ode.fun' not found.*ODE blocks found: \['ode'\]"):
        audit_ode_blocks(network, torch.randn(2, 1, 8, 8), module="ode.fun")
    with pytest.raises(ValueError, match="neither an ODE block"):
        audit_ode_blocks(network, torch.randn(2, 1, 8, 8), module="stem")
    with pytest.raises(ValueError, match="no ODE block found"):
        audit_ode_blocks(network.head, torch.randn(2, 4, 8, 8))
