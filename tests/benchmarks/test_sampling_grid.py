"""The sampling-grid report's pure helpers: each raised σ_min against the model's own grid as paired differences on
the same seed, the best per NFE budget on either grid, and the arguments."""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("scipy")  # the interval over seeds
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # where the scripts import each other from
import sampling_grid as grid  # noqa: E402


def _point(sampler, steps, nfe, sigma_min, fd, seed, model="digits_edm"):
    return {"model": model, "sampler": sampler, "steps": steps, "nfe": nfe, "sigma_min": sigma_min, "fd_ratio": fd,
            "seed": seed}


# two seeds of one model: the raised grid is better by 0.3 and 0.1 on the same seeds
POINTS = [_point("dpmpp_2m", 10, 10.0, "model", 1.8, 0), _point("dpmpp_2m", 10, 10.0, "model", 1.4, 1),
          _point("dpmpp_2m", 10, 10.0, 0.2, 1.5, 0), _point("dpmpp_2m", 10, 10.0, 0.2, 1.3, 1),
          _point("dpmpp_sde", 10, 19.0, "model", 1.2, 0), _point("dpmpp_sde", 10, 19.0, "model", 1.2, 1),
          _point("dpmpp_sde", 10, 19.0, 0.2, 1.25, 0), _point("dpmpp_sde", 10, 19.0, 0.2, 1.35, 1)]


def test_each_grid_is_compared_with_the_default_on_the_same_seed():
    rows = {(r["sampler"], r["sigma_min"]): r for r in grid.paired(POINTS)}
    raised = rows[("dpmpp_2m", 0.2)]
    assert raised["fd_ratio"] == pytest.approx(1.4) and raised["change"] == pytest.approx(-0.2)
    # paired differences -0.3 and -0.1: sample std 0.1414, t_{0.975, 1} = 12.7062; the FDs themselves spread more
    assert raised["change_half_width"] == pytest.approx(12.7062 * 0.1414214 / math.sqrt(2), rel=1e-4)
    default = rows[("dpmpp_2m", "model")]
    assert default["change"] == 0 and default["change_half_width"] == 0
    assert rows[("dpmpp_sde", 0.2)]["change"] == pytest.approx(0.1)


def test_the_budget_table_sets_the_best_raised_grid_beside_the_best_default():
    table = grid._budget_table(grid.paired(POINTS), ["digits_edm"])
    within_10, within_20 = table.rows[0], table.rows[1]
    assert within_10[:2] == ["digits_edm", 10]
    assert within_10[2].startswith("1.60 ± ") and "(dpmpp_2m, 10)" in within_10[2]
    assert within_10[3].startswith("1.40 ± ") and "σ_min 0.2" in within_10[3] and within_10[4].startswith("-0.20 ± ")
    # within 20 NFE the default grid's dpmpp_sde is best (1.20); the best raised grid is dpmpp_sde's too (1.30)
    assert within_20[2].startswith("1.20 ± 0.00 (dpmpp_sde, 19)")
    assert "(dpmpp_sde, 19, σ_min 0.2)" in within_20[3] and within_20[4].startswith("+0.10 ± ")


@pytest.mark.parametrize("arguments, message", [
    ([], "--race-dir: the digits race's folder whose fits are sampled"),
    (["--race-dir", "race", "--sigma-min", "0.1", "0.2"], "--sigma-min: include 'model'"),
    (["--race-dir", "race", "--race-seed", "1", "1"], "--race-seed: each seed once, got [1, 1]"),
    (["--race-dir", "race", "--sigma-min", "model", "-0.1"], "got '-0.1'"),
    (["--race-dir", "race", "--sigma-min", "model", "low"],
     "a noise level > 0 or 'model' (the model's own grid), got 'low'"),
])
def test_arguments_are_refused_by_name_before_anything_runs(monkeypatch, capsys, arguments, message):
    monkeypatch.setattr(sys, "argv", ["sampling_grid.py", *arguments])
    with pytest.raises(SystemExit):
        grid.main()
    assert message in capsys.readouterr().err
