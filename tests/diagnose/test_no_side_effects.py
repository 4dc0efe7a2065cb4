"""An audit leaves the model exactly as it found it, and the global RNG untouched."""

import pytest
import torch

from pynodeta.diagnose import audit_ode_blocks, time_awareness
from pynodeta.nn import ConcatConv2d, TABatchNorm2d, TimeSequential

from .tiny_models import CountingFunc, TinyNODE


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


def _assert_unchanged(model, before):
    state, flags = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("training", [True, False])
def test_state_dict_flags_counters_and_rng_are_restored(mode, training):
    torch.manual_seed(0)
    model = CountingFunc().train(training)
    x = torch.randn(4, 4, 6, 6)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    report = time_awareness(model, x, mode=mode)
    _assert_unchanged(model, before)
    assert model.nfe == 0
    assert torch.equal(torch.get_rng_state(), rng)
    # Dropout in train mode draws the same mask at every time, so its noise is not taken for time.
    assert report.findings[-1].survival > 0.05


def test_tabn_running_statistics_are_restored_after_a_train_mode_audit():
    torch.manual_seed(0)
    model = TimeSequential(ConcatConv2d(3, 4, 3), TABatchNorm2d(4, M=4))
    with torch.no_grad():
        model[1].running_mean.normal_()
    before = _snapshot(model)
    time_awareness(model, torch.randn(5, 3, 6, 6), mode="train")
    _assert_unchanged(model, before)


def test_ode_block_audit_leaves_the_network_unchanged():
    torch.manual_seed(0)
    network = TinyNODE("bn").train()
    before = _snapshot(network)
    audit_ode_blocks(network, torch.randn(4, 1, 8, 8))
    _assert_unchanged(network, before)
    assert not hasattr(network.ode, "last_stats") or network.ode.last_stats is None
