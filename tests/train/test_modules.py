"""LightningModules: a one-batch fit logs every metric; the TA-BN regulariser and clipping act."""

from __future__ import annotations

import dataclasses

import lightning
import pytest
import torch
import torch.nn.functional as F

from pynodeta.data import DigitsDataModule, TrajectoryDataModule
from pynodeta.nn import TABatchNorm1d, tabn_regularizer
from pynodeta.train import NODEClassifier, PlateauSGD, TABNAdamW, TrajectoryRegressor

from .tiny_models import TinyDigitsClassifier, TinyTrajectoryModel


def _trainer(tmp_path, **kwargs) -> lightning.Trainer:
    options = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=1, limit_test_batches=1,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    return lightning.Trainer(**{**options, **kwargs})


def test_classifier_one_batch_fit_logs_loss_accuracy_and_nfe(tmp_path):
    torch.manual_seed(0)
    module = NODEClassifier(TinyDigitsClassifier(), optim=TABNAdamW(step_epochs=1))
    trainer = _trainer(tmp_path)
    data = DigitsDataModule(batch_size=32)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "train/tabn_reg", "val/loss", "val/acc"):
        assert key in metrics, key
    # dopri5 with the adjoint: at least the start, the step probe and one 6-stage step each way
    assert metrics["train/nfe_forward"] >= 8 and metrics["val/nfe_forward"] >= 8
    assert metrics["train/nfe_backward"] >= 8
    trainer.test(module, datamodule=data, verbose=False)
    assert 0.0 <= float(trainer.callback_metrics["test/acc"]) <= 1.0
    assert trainer.callback_metrics["test/nfe_forward"] >= 8


def test_backward_nfe_is_zero_without_adjoint(tmp_path):
    model = TinyDigitsClassifier()
    model.ode.solver = dataclasses.replace(model.ode.solver, adjoint=False)
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(NODEClassifier(model, optim=TABNAdamW(step_epochs=1)), datamodule=DigitsDataModule(batch_size=16))
    assert trainer.callback_metrics["train/nfe_forward"] >= 8
    assert trainer.callback_metrics["train/nfe_backward"] == 0


def test_trajectory_regressor_one_batch_fit(tmp_path):
    torch.manual_seed(0)
    data = TrajectoryDataModule("pendulum", n_trajectories=20, n_times=5, t_span=(0.0, 1.0), batch_size=8)
    module = TrajectoryRegressor(TinyTrajectoryModel(dim=2), optim=TABNAdamW(step_epochs=1), loss="mae")
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert torch.isclose(metrics["train/loss"], metrics["train/mae"])  # loss="mae" is what is minimised
    assert metrics["val/mse"] > 0 and metrics["train/nfe_forward"] >= 8 and metrics["train/nfe_backward"] >= 8


def _digits_batch(n: int = 16):
    data = DigitsDataModule(batch_size=n)
    data.setup()
    return next(iter(data.train_dataloader()))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("weight", [None, 0.0, 0.5])
def test_tabn_regulariser_is_added_to_the_training_loss(weight):
    torch.manual_seed(0)
    model = TinyDigitsClassifier(dropout=0.0).eval()  # eval: the data loss is deterministic
    (tabn,) = [m for m in model.modules() if isinstance(m, TABatchNorm1d)]
    with torch.no_grad():
        tabn.weight.fill_(3.0)   # (γ - 1)² = 4 at each of the M + 1 = 5 grid points
        tabn.bias.fill_(-1.0)    # β² = 1
    module = NODEClassifier(model, tabn_reg_weight=weight)
    x, y = _digits_batch()
    data_loss = F.cross_entropy(model(x), y).detach()
    lam = tabn.reg_weight if weight is None else weight
    expected = lam * 5 * (4.0 + 1.0)
    assert float(tabn_regularizer(model, weight).detach()) == pytest.approx(expected)
    total = module.training_step((x, y), 0)
    assert float(total.detach()) == pytest.approx(float(data_loss) + expected, rel=1e-6)


def test_tabn_regulariser_rejects_negative_weight():
    with pytest.raises(ValueError, match="tabn_reg_weight must be >= 0"):
        NODEClassifier(TinyDigitsClassifier(), tabn_reg_weight=-1.0)


def _grad_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


class _LoudClassifier(NODEClassifier):
    """Multiplies the loss so that every gradient norm is far above the clipping thresholds."""

    def _loss_and_metrics(self, batch):
        loss, metrics, n = super()._loss_and_metrics(batch)
        return 1e6 * loss, metrics, n


class _GradientProbe(lightning.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        tabn = [p for m in module.modules() if isinstance(m, TABatchNorm1d) for p in (m.weight, m.bias)]
        self.tabn_norm = _grad_norm(tabn)
        self.total_norm = _grad_norm([p for p in module.parameters() if p.grad is not None])


@pytest.mark.parametrize("clip", [True, False])
def test_training_clips_global_norm_and_tabn_gamma_beta(tmp_path, clip):
    torch.manual_seed(0)
    optim = TABNAdamW(step_epochs=1) if clip else TABNAdamW(step_epochs=1, max_norm=None, tabn_max_norm=None)
    probe = _GradientProbe()
    _trainer(tmp_path, limit_val_batches=0, callbacks=[probe]).fit(
        _LoudClassifier(TinyDigitsClassifier(), optim=optim), datamodule=DigitsDataModule(batch_size=16))
    if clip:  # the gradients the optimiser stepped with
        assert probe.tabn_norm <= 1.0 + 1e-5 and probe.total_norm <= 10.0 + 1e-4
    else:
        assert probe.tabn_norm > 10.0 and probe.total_norm > 10.0


def test_plateau_sgd_preset_is_sgd_with_plateau_decay():
    module = NODEClassifier(TinyDigitsClassifier(), optim=PlateauSGD())
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.1 and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 1e-4
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.patience == 15
    assert config["lr_scheduler"]["monitor"] == "val/loss"


def test_tabn_preset_decays_at_half_the_epochs(tmp_path):
    module = NODEClassifier(TinyDigitsClassifier())
    trainer = _trainer(tmp_path, max_epochs=8, limit_train_batches=0, limit_val_batches=0)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 4
    assert scheduler.gamma == 0.1
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 2e-2


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TABNAdamW(lr=0.0), "lr must be > 0"),
        (lambda: TABNAdamW(step_epochs=0), "step_epochs must be >= 1"),
        (lambda: PlateauSGD(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: TrajectoryRegressor(TinyTrajectoryModel(), loss="l3"), "loss must be 'mse' or 'mae'"),
    ],
)
def test_bad_training_options_fail_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_tabn_preset_needs_max_epochs_or_step_epochs():
    module = NODEClassifier(TinyDigitsClassifier())
    with pytest.raises(ValueError, match="set trainer.max_epochs or the preset's step_epochs"):
        _ = module.optim._step_epochs(module)
