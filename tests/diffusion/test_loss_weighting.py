"""Min-SNR and P2 weightings: closed forms, and the identity that makes Min-SNR one objective for every target."""

import pytest
import torch

from pynodeta.diffusion.loss_weighting import LOSS_WEIGHTINGS, make_loss_weighting, min_snr_weight, p2_weight
from pynodeta.diffusion.schedules import DDPMSchedule


def test_min_snr_closed_forms_at_chosen_snrs():
    snr = torch.tensor([0.0, 1.0, 5.0, 10.0, 100.0], dtype=torch.float64)
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1, 1, 1, 0.5, 0.05]).double())
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "sample"), torch.tensor([0, 1, 5, 5, 5]).double())
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v"), torch.tensor([0, 0.5, 5 / 6, 5 / 11, 5 / 101]).double())


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
def test_min_snr_weights_every_target_to_the_same_x0_objective(prediction):
    # ‖ε − ε̂‖² = SNR·‖x0 − x̂0‖² and ‖v − v̂‖² = (SNR + 1)·‖x0 − x̂0‖², so each target's weighted loss must
    # equal min(SNR, γ)·‖x0 − x̂0‖² (Hang et al. 2023): check it with a schedule and random predictions.
    torch.manual_seed(0)
    schedule = DDPMSchedule(1000)
    t = torch.tensor([0, 10, 100, 400, 999])
    x0, eps, eps_hat = (torch.randn(5, 3, dtype=torch.float64) for _ in range(3))
    a = schedule.alphas_cumprod[t][:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    target, predicted = {"epsilon": (eps, eps_hat), "sample": (x0, x0_hat),
                         "v": (a.sqrt() * eps - (1 - a).sqrt() * x0, a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat)
                         }[prediction]
    snr = schedule.snr(t)
    weighted = min_snr_weight(snr, 5.0, prediction) * (target - predicted).pow(2).sum(1)
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * (x0 - x0_hat).pow(2).sum(1))


def test_p2_closed_form_and_limits():
    snr = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(p2_weight(snr, k=1.0, gamma=1.0), torch.tensor([1, 0.5, 0.25]).double())
    torch.testing.assert_close(p2_weight(snr, k=1.0, gamma=0.5), torch.tensor([1, 0.5**0.5, 0.5]).double())
    torch.testing.assert_close(p2_weight(snr, k=2.0, gamma=0.0), torch.ones(3).double())


def test_factory_builds_each_weighting_and_checks_options_at_construction():
    snr = torch.tensor([0.5, 8.0])
    assert set(LOSS_WEIGHTINGS) == {"none", "p2", "min-snr"}
    torch.testing.assert_close(make_loss_weighting("none")(snr), torch.ones(2))
    torch.testing.assert_close(make_loss_weighting("p2", gamma=0.5)(snr), p2_weight(snr, gamma=0.5))
    torch.testing.assert_close(make_loss_weighting("min-snr", gamma=2.0)(snr), torch.tensor([1.0, 0.25]))
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        make_loss_weighting("minsnr")
    with pytest.raises(ValueError, match="gamma must be > 0"):
        make_loss_weighting("min-snr", gamma=-1.0)
    with pytest.raises(TypeError):
        make_loss_weighting("p2", kk=1.0)


@pytest.mark.parametrize("bad", [torch.tensor([-1.0]), torch.tensor([float("nan")]), torch.tensor([float("inf")])])
def test_bad_snr_is_refused_with_the_reason(bad):
    with pytest.raises(ValueError, match="snr must be finite and >= 0"):
        min_snr_weight(bad)
    with pytest.raises(ValueError, match="snr must be finite and >= 0"):
        p2_weight(bad)


def test_bad_prediction_and_p2_parameters_name_the_argument():
    with pytest.raises(ValueError, match="prediction must be one of"):
        min_snr_weight(torch.ones(1), prediction="x0")
    with pytest.raises(ValueError, match="k must be > 0"):
        p2_weight(torch.ones(1), k=0.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        p2_weight(torch.ones(1), gamma=-0.5)
