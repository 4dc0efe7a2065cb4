"""Aug-NODE, HBNODE, SONODE: their right-hand sides against the equations, and their lifted states."""

from __future__ import annotations

import pytest
import torch

from pynodeta.models import (
    HeavyBallField,
    SecondOrderField,
    WithInitialVelocity,
    ZeroAugment,
    build_backbone,
    build_unmixed_classifier,
)

from .helpers import RK4


def test_heavy_ball_field_is_the_hbnode_system():
    backbone = build_backbone("conv4", (2, 4, 4), width=2, norm="gn")
    field = HeavyBallField(backbone, gamma_logit=0.3)
    h, m = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    dh, dm = field(0.4, (h, m))
    gamma = torch.sigmoid(torch.tensor(0.3))
    torch.testing.assert_close(dh, m)
    torch.testing.assert_close(dm, -gamma * m + backbone(0.4, h))
    torch.testing.assert_close(field.gamma, gamma)


def test_second_order_field_sees_position_and_velocity():
    backbone = build_backbone("mlp", (6,), out_channels=3, width=5, depth=2, norm="none")
    field = SecondOrderField(backbone)
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    dx, dv = field(0.2, (x, v))
    torch.testing.assert_close(dx, v)
    torch.testing.assert_close(dv, backbone(0.2, torch.cat([x, v], dim=1)))


def test_lifts():
    x = torch.randn(2, 3, 4, 4)
    lifted = ZeroAugment(2)(x)
    assert lifted.shape == (2, 5, 4, 4)
    torch.testing.assert_close(lifted[:, :3], x)
    assert torch.count_nonzero(lifted[:, 3:]) == 0
    pos, vel = WithInitialVelocity((3, 4, 4), "zero")(x)
    assert pos is x and torch.count_nonzero(vel) == 0
    pos, vel = WithInitialVelocity((3, 4, 4), "learned")(x)
    assert vel.shape == x.shape and torch.count_nonzero(vel) > 0


def test_augnode_head_reads_the_augmented_state():
    model = build_unmixed_classifier("conv4", (1, 8, 8), 3, variant="augnode", aug_channels=3, width=2, solver=RK4)
    assert model.head[1].num_features == 4 * 8 * 8
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_mlp_variants_on_flat_inputs():
    for variant in ("augnode", "hbnode", "sonode"):
        model = build_unmixed_classifier("mlp", (64,), 10, variant=variant, width=8, depth=2, norm="tabn",
                                         solver=RK4)
        assert model(torch.randn(3, 64)).shape == (3, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(variant="resnet"), "unknown variant 'resnet'; valid variants: node, augnode, hbnode, sonode"),
        (dict(variant="node", aug_channels=2), "aug_channels only applies to variant='augnode'"),
        (dict(variant="sonode", gamma_logit=0.0), "gamma_logit only applies to variant='hbnode'"),
        (dict(variant="augnode", initial_velocity="zero"), "initial_velocity only applies"),
        (dict(variant="hbnode", initial_velocity="random"), "initial_velocity must be one of"),
        (dict(variant="augnode", aug_channels=0), "aug_channels must be >= 1"),
        (dict(dropout=-0.1), "dropout must be in"),
    ],
)
def test_bad_variant_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_unmixed_classifier("conv4", (1, 8, 8), 3, width=2, **kwargs)
