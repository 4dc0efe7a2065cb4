"""Post-hoc reconstruction: the least-squares fit, reconstruction of a tracked profile, errors."""

import numpy as np
import pytest
import torch
from torch import nn

from pynodeta.ema import PowerFunctionEMA, posthoc_coefficients, posthoc_reconstruct


def test_a_stored_profile_is_reconstructed_by_itself():
    weights = posthoc_coefficients([100, 200, 100, 200], [0.05, 0.05, 0.1, 0.1], 200, 0.1)
    np.testing.assert_allclose(weights, [0, 0, 0, 1], atol=1e-9)


def test_coefficients_sum_to_one_and_use_only_given_profiles():
    weights = posthoc_coefficients([50, 100, 150, 50, 100, 150], [0.05] * 3 + [0.1] * 3, 150, 0.07)
    assert weights.sum() == pytest.approx(1.0)
    assert weights.shape == (6,)


def test_coefficients_reject_repeated_profiles_and_bad_lengths():
    with pytest.raises(ValueError, match="repeat"):
        posthoc_coefficients([10, 10], [0.05, 0.05], 10, 0.07)
    with pytest.raises(ValueError, match="equal length"):
        posthoc_coefficients([10, 20], [0.05], 20, 0.07)
    with pytest.raises(ValueError, match="out_sigma_rel must be in"):
        posthoc_coefficients([10, 20], [0.05, 0.1], 20, 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0])
def test_coefficients_refuse_a_step_that_is_not_finite_and_at_least_one(bad):
    with pytest.raises(ValueError, match="in_steps must all be finite and >= 1"):
        posthoc_coefficients([bad, 2], [0.05, 0.1], 2, 0.07)
    with pytest.raises(ValueError, match="out_step must be finite and >= 1"):
        posthoc_coefficients([1, 2], [0.05, 0.1], bad, 0.07)


def _run(tmp_path, steps=400, every=20):
    """A synthetic training trajectory (drift + oscillation + noise) with snapshots of σ_rel 0.05 and
    0.10 and, beside them, the profile σ_rel 0.07 tracked directly."""
    torch.manual_seed(0)
    module = nn.Linear(16, 16)
    stored = PowerFunctionEMA(module, sigma_rels=(0.05, 0.10))
    tracked = PowerFunctionEMA(module, sigma_rels=(0.07,))
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.02 * torch.randn_like(p) + 0.003 * np.cos(step / 40.0))
        stored.update(step)
        tracked.update(step)
        if step % every == 0:
            stored.save_snapshot(tmp_path, step)
    return module, stored, tracked


def test_reconstruction_matches_a_directly_tracked_profile(tmp_path):
    module, _, tracked = _run(tmp_path)
    direct = tracked.averaged(0.07).state_dict()
    rebuilt = posthoc_reconstruct(tmp_path, 0.07)
    for name, value in direct.items():
        error = (rebuilt[name] - value).norm()
        gap = (module.state_dict()[name] - value).norm()  # how far the EMA is from the raw weights
        assert error < 0.05 * gap, (name, error.item(), gap.item())


def test_reconstruction_at_an_earlier_step_uses_only_earlier_snapshots(tmp_path):
    _, _, _ = _run(tmp_path, steps=200, every=20)
    full = posthoc_reconstruct(tmp_path, 0.1, step=100)
    for path in sorted(tmp_path.iterdir())[5:]:
        path.unlink()
    assert all(torch.equal(full[k], v) for k, v in posthoc_reconstruct(tmp_path, 0.1).items())


def test_reconstructing_a_stored_profile_returns_it(tmp_path):
    _, stored, _ = _run(tmp_path, steps=100, every=20)
    rebuilt = posthoc_reconstruct(tmp_path, 0.10)
    for name, value in stored.averaged(0.10).state_dict().items():
        torch.testing.assert_close(rebuilt[name], value, atol=1e-5, rtol=1e-5)


def test_empty_or_missing_directory_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no snapshots"):
        posthoc_reconstruct(tmp_path, 0.07)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        posthoc_reconstruct(tmp_path / "missing", 0.07)


def test_target_step_beyond_last_snapshot_is_refused(tmp_path):
    _run(tmp_path, steps=40, every=20)
    with pytest.raises(ValueError, match="beyond the last snapshot"):
        posthoc_reconstruct(tmp_path, 0.07, step=41)


def test_snapshots_of_different_models_are_refused(tmp_path):
    for width, step in ((4, 1), (5, 2)):
        ema = PowerFunctionEMA(nn.Linear(width, 2))
        ema.update(step)
        ema.save_snapshot(tmp_path, step)
    with pytest.raises(ValueError, match="different models"):
        posthoc_reconstruct(tmp_path, 0.07)


def test_snapshots_of_different_runs_are_refused(tmp_path):
    for step in (1, 2):
        ema = PowerFunctionEMA(nn.Linear(4, 2))
        ema.update(step)
        ema.save_snapshot(tmp_path, step)
    with pytest.raises(ValueError, match="training runs"):
        posthoc_reconstruct(tmp_path, 0.07)
