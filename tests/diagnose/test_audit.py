"""time_awareness on models whose fate of t is known from seed 001's algebra."""

import json

import pytest
import torch
from torch import nn

from pynodeta.diagnose import time_awareness
from pynodeta.nn import (
    ConcatConv2d,
    ConcatLinear,
    LinearTimestepEmbedding,
    PositionalTimestepEmbedding,
    TABatchNorm2d,
    TimeSequential,
)

from .tiny_models import InlineTimeFunc, OwnConcatConv, OwnODEFunc

C = 8


def _input(channels=4, size=7, batch=6, seed=0):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _model(*layers, seed=0):
    torch.manual_seed(seed)
    return TimeSequential(*[layer() for layer in layers])


def _norm_finding(report, kind):
    return next(f for f in report.findings if f.role == "normalisation" and f.kind == kind)


BAD = {
    "concat-conv-no-padding->batchnorm": (
        lambda: ConcatConv2d(4, C, 3), lambda: nn.BatchNorm2d(C)),
    "additive-embedding->instancenorm": (
        lambda: nn.Conv2d(4, C, 3), lambda: LinearTimestepEmbedding(C), lambda: nn.InstanceNorm2d(C)),
    "concat-conv->groupnorm-G=C": (
        lambda: ConcatConv2d(4, C, 3), lambda: nn.GroupNorm(C, C)),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layers", BAD.values(), ids=BAD.keys())
def test_known_bad_models_are_flagged_with_survival_near_zero(layers, mode):
    report = time_awareness(_model(*layers), _input(), mode=mode)
    norm = next(f for f in report.findings if f.role == "normalisation")
    assert report.vanishing
    assert norm.verdict == "cancelled"
    assert norm.survival < 1e-9                              # exact up to float32 round-off
    assert norm.offset_fraction == pytest.approx(1.0, abs=1e-6)
    assert "cancelled here" in norm.message


def test_eval_mode_batchnorm_is_measured_with_batch_statistics_and_reports_the_running_ones():
    report = time_awareness(_model(*BAD["concat-conv-no-padding->batchnorm"]), _input(), mode="eval")
    norm = _norm_finding(report, "BatchNorm2d")
    # Running statistics are a per-channel affine map: the offset passes (about 1) in eval mode.
    assert norm.survival_running_stats == pytest.approx(1.0, abs=0.1)
    assert norm.survival < 1e-9
    assert report.output_sensitivity > 1e-2                 # eval-mode output does move with t


def _tabn_with_time_dependent_affine():
    tabn = TABatchNorm2d(C, M=10)
    with torch.no_grad():
        tabn.weight.uniform_(0.5, 1.5)
        tabn.bias.normal_()
    return tabn


GOOD = {
    "groupnorm-G=1": (lambda: ConcatConv2d(4, C, 3), lambda: nn.GroupNorm(1, C)),
    "positional+batchnorm": (lambda: ConcatConv2d(4, C, 3), lambda: PositionalTimestepEmbedding(5, 5),
                             lambda: nn.BatchNorm2d(C)),
    "tabn": (lambda: ConcatConv2d(4, C, 3), _tabn_with_time_dependent_affine),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layers", GOOD.values(), ids=GOOD.keys())
def test_known_good_models_are_not_flagged(layers, mode):
    report = time_awareness(_model(*layers), _input(), mode=mode)
    assert not report.vanishing
    assert all(f.verdict in ("entry", "preserved") for f in report.findings)
    assert report.output_sensitivity > 1e-2


def test_tabn_with_time_dependent_affine_is_an_entry_that_puts_time_back():
    report = time_awareness(_model(*GOOD["tabn"]), _input(), mode="train")
    entry = next(f for f in report.findings if f.role == "time entry" and f.kind == "TABatchNorm2d")
    assert entry.injects and entry.detected_by == "type"
    assert "γ(t), β(t) put time back" in _norm_finding(report, "TABatchNorm2d").message


def test_tabn_without_time_dependent_affine_does_not_restore_time():
    # At initialisation γ*_m = 1, β*_m = 0 at every grid point: TA-BN is plain BN in training.
    report = time_awareness(_model(lambda: ConcatConv2d(4, C, 3), lambda: TABatchNorm2d(C, M=10)),
                            _input(), mode="train")
    assert _norm_finding(report, "TABatchNorm2d").verdict == "cancelled"
    entry = next(f for f in report.findings if f.role == "time entry" and f.kind == "TABatchNorm2d")
    assert not entry.injects and "does not vary with t" in entry.message
    assert report.vanishing


@pytest.mark.parametrize(("norm", "verdict"), [(nn.BatchNorm1d, "cancelled"), (nn.LayerNorm, "preserved")])
def test_features_path_concat_linear_into_batchnorm1d_or_layernorm(norm, verdict):
    torch.manual_seed(0)
    model = TimeSequential(ConcatLinear(5, C), norm(C))
    report = time_awareness(model, torch.randn(16, 5), mode="train")
    assert _norm_finding(report, norm.__name__).verdict == verdict


def test_survival_decreases_monotonically_with_the_number_of_groups():
    channels, survivals = 16, []
    conv = _model(lambda: ConcatConv2d(4, channels, 3, padding=0))[0]
    for groups in (1, 2, 4, 8, channels):
        report = time_awareness(TimeSequential(conv, nn.GroupNorm(groups, channels)), _input())
        survivals.append(_norm_finding(report, "GroupNorm").survival)
    assert all(a > b for a, b in zip(survivals, survivals[1:])), survivals
    assert survivals[0] > 0.5 and survivals[-1] < 1e-9


def test_zero_padding_border_leak_is_partial_survival():
    layers = (lambda: ConcatConv2d(4, C, 3, padding=1), lambda: nn.BatchNorm2d(C))
    report = time_awareness(_model(*layers), _input(size=5), mode="train")
    norm = _norm_finding(report, "BatchNorm2d")
    assert norm.verdict == "partial"
    assert 0.05 < norm.survival < 0.5
    assert 0.5 < norm.offset_fraction < 1 - 1e-3            # mostly an offset, but not entirely
    assert "zero-padding border" in norm.message
    assert not report.vanishing


def test_a_plain_torch_concat_conv_before_a_plain_batchnorm_is_found():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = OwnConcatConv(4, C)
            self.norm = nn.BatchNorm2d(C)

        def forward(self, t, x):
            return self.norm(self.conv(t, x))

    torch.manual_seed(0)
    report = time_awareness(Model(), _input())
    entry = next(f for f in report.findings if f.role == "time entry")
    assert (entry.layer, entry.detected_by) == ("conv", "measured")
    assert entry.offset_fraction == pytest.approx(1.0, abs=1e-6)
    norm = _norm_finding(report, "BatchNorm2d")
    assert (norm.layer, norm.verdict, norm.entry) == ("norm", "cancelled", "conv")
    assert report.vanishing


def test_an_injection_whose_input_already_varies_is_found_by_rerunning_it():
    torch.manual_seed(0)
    report = time_awareness(OwnODEFunc(), _input(channels=6, size=6), mode="train")
    entries = {f.layer: f for f in report.findings if f.role == "time entry"}
    assert set(entries) == {"conv1", "conv2"}
    assert "re-run" in entries["conv2"].message
    assert entries["conv2"].offset_fraction == pytest.approx(1.0, abs=1e-6)   # no padding: pure offset
    assert _norm_finding(report, "BatchNorm2d").entry == "conv2"


def test_time_added_in_a_forward_body_is_attributed_to_that_module():
    torch.manual_seed(0)
    report = time_awareness(InlineTimeFunc(), _input())
    entry = next(f for f in report.findings if f.role == "time entry")
    assert entry.layer == "<model>" and "own forward code" in entry.message
    assert _norm_finding(report, "InstanceNorm2d").verdict == "cancelled"


def test_a_norm_after_a_cancelling_one_sees_no_signal():
    layers = (lambda: ConcatConv2d(4, C, 3), lambda: nn.GroupNorm(C, C), lambda: nn.GroupNorm(1, C))
    report = time_awareness(_model(*layers), _input())
    verdicts = [f.verdict for f in report.findings]
    assert verdicts == ["entry", "cancelled", "no signal"]


def test_norms_before_the_first_time_entry_are_not_reported():
    layers = (lambda: nn.GroupNorm(2, 4), lambda: ConcatConv2d(4, C, 3), lambda: nn.GroupNorm(1, C))
    report = time_awareness(_model(*layers), _input())
    assert [f.layer for f in report.findings] == ["1", "2"]


def test_a_model_that_ignores_t_is_vanishing():
    report = time_awareness(TimeSequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)), _input())
    assert report.findings == [] and report.output_sensitivity == 0.0 and report.vanishing


def test_report_prints_a_table_and_serialises_to_json():
    report = time_awareness(_model(*BAD["concat-conv-no-padding->batchnorm"]), _input())
    text = str(report)
    assert "survival" in text.splitlines()[1] and "VANISHING" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["vanishing"] is True
    assert [f["verdict"] for f in data["findings"]] == ["entry", "cancelled"]
    assert data["times"] == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(times=[0.5]), "at least two distinct"),
        (dict(times=[0.0, float("nan")]), "finite"),
        (dict(mode="inference"), "mode must be 'eval' or 'train'"),
        (dict(threshold=0.0), r"threshold must be a number in \(0, 0.5\)"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_awareness(_model(*GOOD["groupnorm-G=1"]), _input(), **kwargs)


def test_half_precision_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"audit a float32 copy instead \(model.float\(\), x.float\(\)\)"):
        time_awareness(_model(*GOOD["groupnorm-G=1"]).half(), _input().half())


def test_a_module_called_a_varying_number_of_times_is_refused():
    class Adaptive(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ConcatConv2d(4, 4, 3, padding=1)

        def forward(self, t, x):
            for _ in range(1 + int(t > 0.5)):
                x = self.conv(t, x)
            return x

    with pytest.raises(ValueError, match="different number of times"):
        time_awareness(Adaptive(), _input())
