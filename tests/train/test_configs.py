"""Every shipped config parses against the typed signatures and builds its model and data module."""

from __future__ import annotations

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

from pynodeta.train import TrainingModule, shipped_config_path, shipped_configs
from pynodeta.train.configs import resolve_config_args


def _load(name: str) -> dict:
    return yaml.safe_load(shipped_config_path(name).read_text())


# the paper-size latent EDM2 networks (up to 1.5 G parameters) are parsed, not built; their data module is built
NETWORK_PRESETS = sorted(name for name in shipped_configs() if name.startswith("edm2_img512_"))
TRAINABLE = sorted(set(shipped_configs()) - set(NETWORK_PRESETS))


def test_every_config_names_its_data_and_the_latent_presets_read_encoded_latents():
    assert len(NETWORK_PRESETS) == 6 and all("data" in _load(name) for name in shipped_configs())
    for name in NETWORK_PRESETS:
        data = _load(name)["data"]
        assert data["class_path"] == "pynodeta.data.LatentDataModule" and data["init_args"]["data_dir"]
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(LightningDataModule, "data")
        built = parser.instantiate_classes(parser.parse_object({"data": data}))  # no file is read yet
        assert isinstance(built.data, LightningDataModule)


@pytest.mark.parametrize("name", NETWORK_PRESETS)
def test_network_presets_parse_without_building(name):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(TrainingModule, "model")
    parser.parse_object({"model": _load(name)["model"]})  # checked against the signatures, nothing allocated


@pytest.mark.parametrize("name", TRAINABLE)
def test_shipped_config_builds(name):
    config = _load(name)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(TrainingModule, "model")
    parser.add_subclass_arguments(LightningDataModule, "data")
    parsed = parser.parse_object({"model": config["model"], "data": config["data"]})
    built = parser.instantiate_classes(parsed)  # constructors validate; no file is read yet
    assert isinstance(built.model, TrainingModule) and isinstance(built.data, LightningDataModule)
    assert sum(p.numel() for p in built.model.parameters()) > 0


def test_bare_config_names_resolve_to_the_packaged_files():
    argv = resolve_config_args(["fit", "--config", "digits_tabn", "--config=pendulum_tabn"])
    assert argv[2] == str(shipped_config_path("digits_tabn")) and argv[2].endswith("configs/digits_tabn.yaml")
    assert argv[3] == "--config=" + str(shipped_config_path("pendulum_tabn"))
    # paths and inline YAML are left to jsonargparse
    assert resolve_config_args(["--config", "my/run.yaml", "--config", "{a: 1}"]) == [
        "--config", "my/run.yaml", "--config", "{a: 1}"]
