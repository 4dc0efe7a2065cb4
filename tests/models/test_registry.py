"""Models by name."""

from __future__ import annotations

import pytest

from pynodeta.models import MODELS, ConvODEClassifier, TrajectoryNODE, UnmixedClassifier, build_model

from .helpers import RK4


def test_every_name_builds():
    assert set(MODELS) == {"seed001", "unmixed", "augnode", "hbnode", "sonode", "trajectory"}
    assert isinstance(build_model("seed001", in_shape=(1, 8, 8), num_classes=2, channels=4), ConvODEClassifier)
    for name in ("unmixed", "augnode", "hbnode", "sonode"):
        model = build_model(name, backbone="conv4", in_shape=(1, 8, 8), num_classes=2, width=2, solver=RK4)
        assert isinstance(model, UnmixedClassifier)
    assert isinstance(build_model("trajectory", dim=2), TrajectoryNODE)
    hb = build_model("hbnode", backbone="conv4", in_shape=(1, 8, 8), num_classes=2, width=2)
    assert type(hb.ode.func).__name__ == "HeavyBallField"


def test_typo_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'sonde'; valid models: seed001, unmixed, augnode"):
        build_model("sonde")


def test_variant_models_fix_their_variant():
    with pytest.raises(ValueError, match="model 'hbnode' fixes variant='hbnode'"):
        build_model("hbnode", backbone="conv4", in_shape=(1, 8, 8), num_classes=2, variant="sonode")
