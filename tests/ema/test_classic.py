"""Classic EMA: the recursion, warm-up, store/copy_to/restore, state round trip."""

import pytest
import torch
from torch import nn

from pynodeta.ema import EMA


def test_recursion_without_warmup():
    module = nn.Linear(1, 1, bias=False).double()
    start = module.weight.item()
    ema = EMA(module, decay=0.9, warmup=False)
    values = [1.0, 2.0, -1.0]
    expected = start
    for value in values:
        module.weight.data.fill_(value)
        ema.step(module)
        expected = 0.9 * expected + 0.1 * value
    assert ema.shadow_params[0].item() == pytest.approx(expected)


def _diffusers_decay(optimization_step: int, decay: float, update_after_step: int = 0) -> float:
    """diffusers' EMAModel.get_decay with use_ema_warmup=False and min_decay=0, written out."""
    step = max(0, optimization_step - update_after_step - 1)
    if step <= 0:
        return 0.0
    return min((1 + step) / (10 + step), decay)


def test_warmup_decay_sequence_matches_diffusers_ema_model():
    module = nn.Linear(1, 1, bias=False).double()
    ema = EMA(module, decay=0.9)  # the cap (1 + s)/(10 + s) reaches 0.9 at s = 80
    expected_average = module.weight.item()
    for update in range(1, 101):
        # diffusers' step(): optimization_step += 1, then get_decay(optimization_step)
        decay = _diffusers_decay(update, 0.9)
        assert ema.current_decay() == pytest.approx(decay, abs=1e-15), update
        module.weight.data.fill_(float(update))
        ema.step(module)
        expected_average = decay * expected_average + (1 - decay) * update
        assert ema.shadow_params[0].item() == pytest.approx(expected_average, rel=1e-12)
    assert ema.current_decay() == 0.9


def test_first_warmup_update_copies_the_weights():
    module = nn.Linear(2, 2)
    ema = EMA(module, decay=0.999)
    with torch.no_grad():
        module.weight.add_(3.0)
    ema.step(module)
    assert torch.equal(ema.shadow_params[0], module.weight)
    assert ema.current_decay() == pytest.approx(2 / 11)


def test_store_copy_to_restore_round_trip():
    torch.manual_seed(0)
    module = nn.Linear(3, 3)
    ema = EMA(module, decay=0.5)
    raw = [p.detach().clone() for p in module.parameters()]
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.step(module)
    raw = [p.detach().clone() for p in module.parameters()]
    ema.store(module.parameters())
    ema.copy_to(module)
    assert all(torch.equal(p, s) for p, s in zip(module.parameters(), ema.shadow_params))
    ema.restore(module.parameters())
    assert all(torch.equal(p, r) for p, r in zip(module.parameters(), raw))


def test_state_dict_round_trip_and_errors():
    module = nn.Linear(2, 2)
    ema = EMA(module, decay=0.9)
    ema.step(module)
    other = EMA(nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(other.shadow_params, ema.shadow_params))
    with pytest.raises(ValueError, match="does not match"):
        EMA(nn.Linear(3, 2)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="same model"):
        ema.step(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(module, decay=1.0)
    with pytest.raises(RuntimeError, match="store"):
        EMA(module).restore(module.parameters())
