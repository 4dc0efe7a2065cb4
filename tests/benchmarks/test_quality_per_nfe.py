"""The quality-per-NFE report's pure helpers: points averaged over seeds, the matching NFE on the mean curves and
within each seed, the sampler labelled with its options, and the seed arguments."""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("scipy")  # the interval over seeds
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # where the scripts import each other from
import quality_per_nfe as quality  # noqa: E402

ANCHOR = "diffusers UNet2DModel"


def _point(model, sampler, steps, nfe, fd, seed, options=None):
    point = {"model": model, "sampler": sampler, "steps": steps, "nfe": nfe, "fd_ratio": fd, "seed": seed}
    return point if options is None else {**point, "sampler_options": options}


def test_sampler_is_labelled_with_the_options_it_drew_with():
    assert quality.label(_point("m", "ddim", 5, 5.0, 1.0, 0, {"clip_x0": True})) == "ddim (clip_x0=True)"
    assert quality.label(_point("m", "heun", 5, 9.0, 1.0, 0, {})) == "heun"
    assert quality.label(_point("m", "heun", 5, 9.0, 1.0, 0)) == "heun"  # the anchor's points carry none


def test_mean_points_average_each_sampler_and_step_count_over_seeds():
    points = [_point("m", "ddim", 10, 10.0, fd, seed, {"clip_x0": True}) for seed, fd in ((1, 1.4), (0, 1.2))]
    points += [_point("m", "ddim", 10, 10.0, 2.0, 0)]  # unclipped DDIM is another sampler, not another seed
    means = {p["sampler"]: p for p in quality.mean_points(points)}
    clipped = means["ddim (clip_x0=True)"]
    assert clipped["fd_ratio"] == pytest.approx(1.3)
    assert clipped["fd_ratios"] == [1.2, 1.4] and clipped["seeds"] == [0, 1]  # in seed order
    # two values 0.2 apart: sample std 0.1414, t_{0.975, 1} = 12.7062
    assert clipped["half_width"] == pytest.approx(12.7062 * 0.1414214 / math.sqrt(2), rel=1e-4)
    assert means["ddim"]["fd_ratio"] == 2.0 and math.isnan(means["ddim"]["half_width"])


def test_matching_nfe_on_the_mean_curves_and_within_each_seed():
    # seed 0: the model matches its anchor at 10 NFE; seed 1 only at 35; on the mean curves at 35
    raw = {"seeds": [0, 1], "points": [
        _point(ANCHOR, "diffusers DDIM", 50, 50.0, 1.2, 0), _point(ANCHOR, "diffusers DDIM", 50, 50.0, 1.0, 1),
        _point("digits_edm", "heun", 5, 9.0, 1.1, 0), _point("digits_edm", "heun", 5, 9.0, 1.5, 1),
        _point("digits_edm", "dpmpp_2m_sde", 35, 35.0, 1.0, 0), _point("digits_edm", "dpmpp_2m_sde", 35, 35.0, 0.9, 1),
    ], "fits": {"0": {}, "1": {}}, "anchor_steps": {"0": 10, "1": 12}, "anchor_minutes": 8,
           "anchor_recipe": "tuned"}
    summary = quality._summary(raw, quality.mean_points(raw["points"]))
    row = next(r for r in summary.rows if r[0] == "digits_edm")
    assert row[4] == "35 (dpmpp_2m_sde)"  # mean 0.95 ≤ the anchor's mean 1.1; heun's mean 1.3 is not
    assert row[5] == "9, 35"
    assert "DDIM-50 reaches FD / floor@1000 = 1.10 ±" in summary.caption
    assert "recipe tuned, 10, 12 steps" in summary.caption
    best = quality._best_within(quality.mean_points(raw["points"]))
    assert best.rows[0][0] == 10 and best.rows[0][2].startswith("1.30 ± ")  # within 10 NFE: heun only
    assert best.rows[2][2].startswith("0.95 ± ") and "dpmpp_2m_sde, 35" in best.rows[2][2]


@pytest.mark.parametrize("arguments, message", [
    (["--race-dir", "race", "--race-seed", "1", "1"], "--race-seed: each seed once, got [1, 1]"),
    (["--runs-dir", "runs", "--race-seed", "2"], "--race-seed: only with --race-dir"),
])
def test_seed_arguments_are_refused_by_name_before_anything_runs(monkeypatch, capsys, arguments, message):
    monkeypatch.setattr(sys, "argv", ["quality_per_nfe.py", *arguments])
    with pytest.raises(SystemExit):
        quality.main()
    assert message in capsys.readouterr().err
