"""Power-function EMA: the β recursion against its closed form, σ_rel ↔ γ, resume, snapshots, errors."""

import math

import pytest
import torch
from torch import nn

from pynodeta.ema import MAX_SIGMA_REL, PowerFunctionEMA, gamma_to_sigma_rel, power_function_beta, sigma_rel_to_gamma


def test_reference_gammas_of_the_paper():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.07, 0.1, 0.2, 0.28])
def test_sigma_rel_gamma_round_trip(sigma_rel):
    assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-10)


def test_gamma_zero_is_the_largest_width():
    assert gamma_to_sigma_rel(1e-12) == pytest.approx(MAX_SIGMA_REL, rel=1e-9)


def test_beta_recursion_equals_the_power_function_weighted_average():
    # The weight of θ_τ at step t after β_s = (1 - 1/s)^(γ+1) updates is (τ^(γ+1) - (τ-1)^(γ+1)) / t^(γ+1).
    torch.manual_seed(0)
    values = torch.randn(60, dtype=torch.float64)
    module = nn.Linear(1, 1, bias=False).double()
    ema = PowerFunctionEMA(module, sigma_rels=(0.1,))
    gamma = ema.gammas[0]
    for step in range(1, 61):
        module.weight.data.fill_(values[step - 1].item())
        ema.update(step)
    tau = torch.arange(1, 61, dtype=torch.float64)
    weights = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / 60 ** (gamma + 1)
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-12)
    expected = (weights * values).sum().item()
    assert ema.averaged(0.1).weight.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_beta_formula_and_first_update_copies():
    assert power_function_beta(6.0, 1) == 0.0
    assert power_function_beta(6.0, 10) == pytest.approx(0.9 ** 7)
    module = nn.Linear(3, 2)
    ema = PowerFunctionEMA(module)
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update(1)
    for sigma_rel in ema.sigma_rels:
        assert torch.equal(ema.averaged(sigma_rel).weight, module.weight)


def _train_steps(module, ema, first, last):
    for step in range(first, last + 1):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.sin(torch.tensor(float(step))) * 0.1 + 0.01 * torch.randn_like(p))
        ema.update(step)


def test_resume_from_state_dict_is_exact():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    ema = PowerFunctionEMA(module)
    _train_steps(module, ema, 1, 10)
    saved_model, saved_ema = {k: v.clone() for k, v in module.state_dict().items()}, ema.state_dict()
    rng = torch.get_rng_state()
    _train_steps(module, ema, 11, 20)
    reference = [ema.averaged(s).state_dict() for s in ema.sigma_rels]

    resumed_module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    resumed_module.load_state_dict(saved_model)
    resumed = PowerFunctionEMA(resumed_module)
    resumed.load_state_dict(saved_ema)
    torch.set_rng_state(rng)
    _train_steps(resumed_module, resumed, 11, 20)
    assert resumed.run_id == ema.run_id
    for sigma_rel, expected in zip(ema.sigma_rels, reference):
        got = resumed.averaged(sigma_rel).state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_averaged_module_is_in_eval_mode_and_has_no_grad():
    module = nn.Linear(2, 2)
    average = PowerFunctionEMA(module).averaged(0.05)
    assert not average.training
    assert not any(p.requires_grad for p in average.parameters())


def test_snapshot_file_holds_every_profile_and_leaves_no_temporary(tmp_path):
    module = nn.Linear(3, 3)
    ema = PowerFunctionEMA(module, sigma_rels=(0.05, 0.1))
    _train_steps(module, ema, 1, 5)
    path = ema.save_snapshot(tmp_path, 5)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 5
    assert [p["sigma_rel"] for p in payload["profiles"]] == [0.05, 0.1]
    assert torch.equal(payload["profiles"][1]["state_dict"]["weight"], ema.averaged(0.1).weight)


@pytest.mark.parametrize("sigma_rel", [0.0, -0.1, MAX_SIGMA_REL, 0.3])
def test_bad_sigma_rel_is_refused(sigma_rel):
    with pytest.raises(ValueError, match="sigma_rels entries must be in"):
        PowerFunctionEMA(nn.Linear(1, 1), sigma_rels=(sigma_rel,))
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        sigma_rel_to_gamma(sigma_rel)


def test_non_increasing_step_is_refused():
    ema = PowerFunctionEMA(nn.Linear(1, 1))
    with pytest.raises(ValueError, match="step >= 1"):
        ema.update(0)
    ema.update(3)
    for step in (3, 2):
        with pytest.raises(ValueError, match=r"larger than the last update's step \(3\)"):
            ema.update(step)
    with pytest.raises(TypeError, match="integer"):
        ema.update(4.5)


def test_snapshot_of_a_step_not_updated_is_refused(tmp_path):
    ema = PowerFunctionEMA(nn.Linear(1, 1))
    ema.update(2)
    with pytest.raises(ValueError, match="averages are at step 2"):
        ema.save_snapshot(tmp_path, 3)


def test_untracked_width_points_to_posthoc():
    with pytest.raises(KeyError, match="posthoc_reconstruct"):
        PowerFunctionEMA(nn.Linear(1, 1)).averaged(0.07)


def test_loading_state_with_other_widths_is_refused():
    state = PowerFunctionEMA(nn.Linear(1, 1), sigma_rels=(0.05,)).state_dict()
    with pytest.raises(ValueError, match="same sigma_rels"):
        PowerFunctionEMA(nn.Linear(1, 1)).load_state_dict(state)


def test_max_sigma_rel_is_sqrt_one_twelfth():
    assert MAX_SIGMA_REL == pytest.approx(math.sqrt(1 / 12))
