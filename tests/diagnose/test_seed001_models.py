"""The audit on pynodeta's own seed-001 NODE classifier: the paper's bad and fixed configurations."""

import torch

from pynodeta.diagnose import audit_ode_blocks
from pynodeta.models import ConvODEClassifier


def _audit(**options):
    torch.manual_seed(0)
    model = ConvODEClassifier((1, 8, 8), 10, channels=8, stem_strides=(1, 1), **options)
    (report,) = audit_ode_blocks(model, torch.randn(8, 1, 8, 8))
    return report


def test_additive_embedding_into_batchnorm_is_cancelled_exactly():
    # conv(padding=1) + t·v is an exact per-channel offset: BN's batch statistics remove all of it.
    report = _audit(norm="popti-bn", time_injection="additive")
    assert report.subject == "ode.func" and report.vanishing
    assert [f.verdict for f in report.findings if f.role == "normalisation"] == ["cancelled", "cancelled"]


def test_the_linear_positional_embedding_restores_time_through_batchnorm():
    report = _audit(norm="popti-bn", time_injection="additive", positional=True, positional_mode="linear")
    assert not report.vanishing
    assert all(f.survival > 0.05 for f in report.findings if f.role == "normalisation")


def test_an_mlp_positional_embedding_still_small_at_initialisation_is_reported():
    # At init the MLP branch's map p_t is small next to t·v (std 1): BN leaves little of the time signal.
    report = _audit(norm="popti-bn", time_injection="additive", positional=True, positional_mode="mlp")
    first = next(f for f in report.findings if f.role == "normalisation")
    assert 0 < first.survival < 0.05 and 1 - 1e-3 > first.offset_fraction > 0.9
    assert "only the part not constant over a unit passes" in first.message


def test_concat_conv_into_groupnorm_with_one_channel_per_group_leaks_only_at_the_border():
    report = _audit(norm="gn", groups=8)
    norms = [f for f in report.findings if f.role == "normalisation"]
    assert norms[0].verdict in ("partial", "cancelled") and norms[0].survival < 0.5
    assert 0.5 < norms[0].offset_fraction < 1 - 1e-3
