"""Every model family: forward/backward with every norm kind, NFE, overfitting, batch independence, state dicts."""

from __future__ import annotations

import pytest
import torch

from pynodeta.models import build_model, ode_blocks, total_nfe
from pynodeta.nn import tabn_regularizer
from pynodeta.ode import IController, SolverSettings

from .helpers import LOOSE_DOPRI5, NORMS, RK4, RK4_ADJOINT, tiny_batch, train_steps

IMAGE = (1, 8, 8)

# (registry name, arguments) of one tiny member of each family
FAMILIES = {
    "seed001": dict(in_shape=IMAGE, num_classes=4, channels=8),
    "unmixed-conv4": dict(backbone="conv4", in_shape=IMAGE, num_classes=4, width=4),
    "unmixed-conv6": dict(backbone="conv6", in_shape=IMAGE, num_classes=4, width=4),
    "unmixed-conv7+L": dict(backbone="conv7+L", in_shape=IMAGE, num_classes=4, width=2, extra_layers=1),
    "unmixed-unet18": dict(backbone="unet18", in_shape=IMAGE, num_classes=4, width=2),
    "unmixed-mlp": dict(backbone="mlp", in_shape=(64,), num_classes=4, width=16, depth=3),
    "augnode": dict(backbone="conv4", in_shape=IMAGE, num_classes=4, width=4, aug_channels=2),
    "hbnode": dict(backbone="conv4", in_shape=IMAGE, num_classes=4, width=4),
    "sonode": dict(backbone="conv4", in_shape=IMAGE, num_classes=4, width=4),
}


def make(family: str, **overrides):
    return build_model(family.split("-")[0], **{**FAMILIES[family], **overrides})


def batch_for(family: str, n: int = 8, seed: int = 0):
    shape = FAMILIES[family]["in_shape"]
    return tiny_batch(n, shape=shape, seed=seed)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_backward_with_every_norm(family, norm):
    torch.manual_seed(0)
    model = make(family, norm=norm, solver=RK4_ADJOINT)
    x, y = batch_for(family, n=4)
    logits = model(x)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()
    (torch.nn.functional.cross_entropy(logits, y) + tabn_regularizer(model)).backward()
    (block,) = ode_blocks(model)
    ode_grads = [p.grad for p in block.func.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in ode_grads)
    assert sum(g.abs().sum() for g in ode_grads) > 0
    assert total_nfe(model) == (block.nfe_forward, block.nfe_backward)
    assert block.nfe_forward == 8 and block.nfe_backward > 0


@pytest.mark.parametrize("family", ["unmixed-conv4", "hbnode", "sonode"])
def test_adjoint_gradients_match_backprop(family):
    # float64, tight tolerances, eval mode (no dropout), Softplus and GroupNorm so that f is smooth:
    # with ReLU the adjoint ODE has a discontinuous right-hand side and the two gradients differ by
    # ~1% (torchdiffeq's adjoint shows the same). TA-BN's per-grid-point parameters are left out too:
    # backprop differentiates the computed solution, where grid points no stage time touched have
    # exactly zero gradient, while the adjoint's backward solve visits other times.
    x, y = batch_for(family, n=2)
    grads = {}
    for adjoint in (True, False):
        torch.manual_seed(1)
        solver = SolverSettings(controller=IController(rtol=1e-6, atol=1e-6), adjoint=adjoint)
        model = make(family, norm="gn", activation="softplus", width=2, solver=solver).double().eval()
        torch.nn.functional.cross_entropy(model(x.double()), y).backward()
        grads[adjoint] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    scale = grads[False].abs().max()
    torch.testing.assert_close(grads[True] / scale, grads[False] / scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_overfits_a_tiny_batch(family):
    torch.manual_seed(0)
    model = make(family, norm="tabn", solver=RK4, dropout=0.0)
    x, y = batch_for(family)
    losses = train_steps(model, x, y, steps=15)
    assert losses[-1] < 0.5 * losses[0], losses


def test_dopri5_with_tabn_reaches_past_the_span_end_without_error():
    # Adaptive steps evaluate stage times beyond T inside the last step: TA-BN must clamp there.
    torch.manual_seed(0)
    model = make("unmixed-conv4", norm="tabn", solver=LOOSE_DOPRI5)
    x, y = batch_for("unmixed-conv4")
    torch.nn.functional.cross_entropy(model(x), y).backward()
    stats = ode_blocks(model)[0].last_stats
    assert stats.nfe > 0 and stats.nfe_adjoint > 0


def _sample_output_in_batches(norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = make("unmixed-conv4", norm=norm, solver=RK4)
    x, y = batch_for("unmixed-conv4", n=16)
    train_steps(model, x, y, steps=3)  # move the running statistics off their initial values
    model.eval()
    with torch.no_grad():
        return model(x[:2])[0], model(x)[0]


def test_tabn_eval_output_does_not_depend_on_the_batch():
    in_two, in_sixteen = _sample_output_in_batches("tabn")
    torch.testing.assert_close(in_two, in_sixteen, rtol=1e-5, atol=1e-6)


def test_minibatch_bn_eval_output_depends_on_the_batch():
    in_two, in_sixteen = _sample_output_in_batches("minibatch-bn")
    assert (in_two - in_sixteen).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["seed001", "unmixed-unet18", "augnode", "hbnode", "sonode"])
def test_state_dict_round_trip_reproduces_outputs(family):
    torch.manual_seed(0)
    trained = make(family, norm="tabn", solver=RK4)
    x, y = batch_for(family)
    train_steps(trained, x, y, steps=2)
    torch.manual_seed(123)
    fresh = make(family, norm="tabn", solver=RK4)
    fresh.load_state_dict(trained.state_dict())
    trained.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


def test_wrong_input_shape_is_reported():
    model = make("unmixed-conv4", norm="none", solver=RK4)
    with pytest.raises(ValueError, match=r"x must be \(batch, 1, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))
