"""The digits fits report describes the runs it holds: what each was asked to do is read from its config."""

from pathlib import Path

import pytest
from benchmark_scripts import load_script

import pynodeta

fits = load_script("digits_diffusion_fits")
CONFIGS = Path(pynodeta.__file__).parent / "configs"


@pytest.mark.parametrize("name", fits.CONFIGS)
def test_asked_reads_limits_threads_and_evaluation_sizes_from_a_config(name):
    asked = fits.asked(CONFIGS / f"{name}.yaml")  # a shipped config has the layout of the config.yaml a run saves
    assert asked["num_threads"] == 2 and asked["adaptive_threads"]
    assert asked["num_samples"] >= 360 and asked["nll_num_images"] >= 32
    assert asked["max_time"] or asked["max_epochs"]


@pytest.mark.parametrize(("max_time", "max_epochs", "limit"), [
    ("00:00:08:00", 1000, "8 min or 1000 epochs"), ("00:00:00:12", 60, "12 s or 60 epochs"),
    ("00:01:30:00", None, "90 min"), ("00:01:30:00", -1, "90 min"), (None, 60, "60 epochs"), (None, None, "no limit")])
def test_training_limit_names_what_stops_training(max_time, max_epochs, limit):
    assert fits.training_limit({"max_time": max_time, "max_epochs": max_epochs}) == limit


def test_threads_say_the_count_and_how_often_it_changed():
    run = {"num_threads": 2, "adaptive_threads": True, "thread_changes": []}
    assert fits.threads(run) == "≤ 2, adaptive (0 changes)"
    assert fits.threads({**run, "thread_changes": ["pynodeta: ... running on 1 thread(s)"]}) == \
        "≤ 2, adaptive (1 change)"
    assert fits.threads({**run, "adaptive_threads": False, "num_threads": 1}) == "1"
