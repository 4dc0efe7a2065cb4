"""The digits race's pure helpers: the interval over seeds, the sweep's choice, the anchor's learning-rate rule."""

import dataclasses
import math

import pytest
from benchmark_scripts import load_script

race = load_script("diffusion_vs_diffusers")
anchor = load_script("digits_anchor")


def test_mean_interval_is_students_t():
    pytest.importorskip("scipy")
    mean, half = race.mean_interval([1.0, 2.0, 3.0])
    # sample std 1; t_{0.975, 2} = 4.30265 (any t table)
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    # wider with fewer seeds at the same spread: t_{0.975, 1} = 12.7062
    assert race.mean_interval([1.0, 3.0])[1] == pytest.approx(12.7062, rel=1e-5)  # std sqrt(2), n 2


def test_mean_interval_of_one_seed_has_no_width_and_of_none_refuses():
    mean, half = race.mean_interval([0.8])
    assert mean == 0.8 and math.isnan(half)
    with pytest.raises(ValueError, match="at least one"):
        race.mean_interval([])


def test_best_recipe_averages_a_recipes_seeds():
    runs = [{"recipe": "a", "fd_ratio": 1.0}, {"recipe": "a", "fd_ratio": 3.0},  # one lucky seed, mean 2.0
            {"recipe": "b", "fd_ratio": 1.5}, {"recipe": "b", "fd_ratio": 1.7}]
    assert race.best_recipe(runs) == "b"
    with pytest.raises(ValueError, match="--anchor"):
        race.best_recipe([])


def test_documented_recipe_is_diffusers_defaults_and_the_grid_varies_lr_batch_ema():
    documented = race.CANDIDATES["diffusers_documented"]
    assert (documented.lr, documented.batch, documented.betas) == (1e-4, 16, (0.95, 0.999))
    assert (documented.weight_decay, documented.eps, documented.max_grad_norm) == (1e-6, 1e-8, 1.0)
    assert (documented.ema_power, documented.ema_decay, documented.warmup_steps) == (0.75, 0.9999, 500)
    edge = {"lr4e-3_b64_p0.75", "lr2e-3_b32_p0.75"}
    grid = [r for name, r in race.CANDIDATES.items() if name.startswith("lr") and name not in edge]
    assert {r.lr for r in grid} == {5e-4, 1e-3, 2e-3} and {r.batch for r in grid} == {64, 128}
    assert {(r.ema_power, r.ema_decay) for r in grid} == {(0.75, 0.9999), (2 / 3, 0.9999), (0, 0.999)}
    # past the grid's best corner: twice its learning rate, half its batch, the rest of the corner's recipe
    corner = race.CANDIDATES["lr2e-3_b64_p0.75"]
    assert race.CANDIDATES["lr4e-3_b64_p0.75"] == dataclasses.replace(corner, lr=4e-3)
    assert race.CANDIDATES["lr2e-3_b32_p0.75"] == dataclasses.replace(corner, batch=32)


def test_lr_factor_warms_up_then_follows_the_cosine_over_the_budget():
    recipe = anchor.Recipe(lr=1e-3, batch=64, warmup_steps=4)
    assert [anchor.lr_factor(recipe, s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert anchor.lr_factor(recipe, 10, 0.0) == pytest.approx(1.0)
    assert anchor.lr_factor(recipe, 10, 0.5) == pytest.approx(0.5)
    assert anchor.lr_factor(recipe, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    # quality_per_nfe's untuned anchor keeps a constant learning rate
    assert {anchor.lr_factor(anchor.UNTUNED_RECIPE, s, f) for s, f in ((0, 0.0), (5, 0.5), (900, 1.0))} == {1.0}


def test_training_limit_is_what_each_run_trained_under():
    shipped = {"max_time": "00:00:08:00", "max_epochs": 60}
    runs = [{**shipped, "fit_args": "--trainer.max_epochs 1000"}, {**shipped, "max_epochs": 1000, "fit_args": ""},
            {**shipped, "fit_args": "--trainer.max_time 00:00:01:00"}]
    assert race._training_limits(runs[:2]) == "max_time 00:00:08:00, max_epochs 1000"
    assert race._training_limits(runs) == ("max_time 00:00:08:00, max_epochs 1000; "
                                           "max_time 00:00:01:00, max_epochs 60")


def test_target_is_put_against_the_real_data_floor():
    assert "0.81: below 1.0" in race.target_against_floor(1.16, 1000)
    assert "0.86x the anchor" in race.target_against_floor(1.16, 1000)
    assert "1.05: above 1.0" in race.target_against_floor(1.5, 1000)


def test_sampler_column_names_each_distinct_sampler_with_its_options():
    clipped = {"sampler": "ddim", "sampler_options": {"clip_x0": True}, "nfe": 50.0}
    before = {"sampler": "ddim", "nfe": 50.0}  # a record kept from before the config had options
    assert race._samplers([clipped, clipped]) == "ddim (clip_x0=True), NFE 50"
    assert race._samplers([before, clipped]) == "ddim, NFE 50; ddim (clip_x0=True), NFE 50"


def test_the_sample_commands_line_is_read_with_and_without_options():
    pattern = race.SAMPLE_LINE
    plain = pattern.search("pynodeta sample: 1000 images, sampler ddim, NFE 50, weights sigma_rel=0.1 -> x.pt")
    assert plain.group(1, 2, 3) == ("ddim", "50", "sigma_rel=0.1")
    line = "pynodeta sample: 1000 images, sampler ddim (clip_x0=True), NFE 50, weights ema -> x.pt"
    assert pattern.search(line).group(1, 2, 3) == ("ddim", "50", "ema")
