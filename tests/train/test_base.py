"""The family-neutral TrainingModule: any subclass trains through ``pynodeta fit``, the run summary
prints the module's own metrics, presets give parameter groups or several optimisers, and the RNG
states travel in checkpoints."""

from __future__ import annotations

import json
import math

import lightning
import pytest
import torch
import yaml

from pynodeta.cli import main
from pynodeta.data import DigitsDataModule
from pynodeta.train import AdamWPreset, OptimizerPreset, RunSummary, TrainingModule

from .tiny_models import TinySoftmaxRegression

ONE_BATCH = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1,
             "log_every_n_steps": 1, "enable_model_summary": False, "num_sanity_val_steps": 0,
             "enable_progress_bar": False}


def test_a_non_ode_module_trains_through_the_command_and_its_summary_has_its_metrics(tmp_path, capsys):
    config = {
        "seed_everything": 0, "num_threads": 1, "test_after_fit": True,
        "trainer": {**ONE_BATCH, "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                            "init_args": {"save_dir": str(tmp_path)}}},
        "model": {"class_path": "tests.train.tiny_models.TinySoftmaxRegression"},
        "data": {"class_path": "pynodeta.data.DigitsDataModule", "init_args": {"batch_size": 16}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.startswith("pynodeta summary:")]
    assert "test error rate" in line and "test loss" in line
    assert "accuracy" not in line and "NFE" not in line
    summary = json.loads((tmp_path / "lightning_logs" / "version_0" / "summary.json").read_text())
    assert set(summary) == {"test/error_rate", "test/loss"}
    assert f"test error rate {summary['test/error_rate']:.3f}" in line  # the module's own format
    assert 0.0 <= summary["test/error_rate"] <= 1.0


def test_run_summary_orders_by_the_module_formats_then_other_test_metrics():
    fit = {"train/nfe_forward": torch.tensor(26.04), "train/loss": torch.tensor(0.5)}
    test = {"test/loss": torch.tensor(0.25), "test/fid": torch.tensor(12.5), "test/acc": torch.tensor(0.98615)}
    formats = {"test/acc": "test accuracy {:.4f}", "train/nfe_forward": "train NFE {:.1f}",
               "train/nfe_backward": "train backward NFE {:.1f}"}  # not logged: left out
    summary = RunSummary.from_metrics(fit, test, formats)
    assert list(summary.metrics) == ["test/acc", "train/nfe_forward", "test/loss", "test/fid"]
    assert summary.line() == ("pynodeta summary: test accuracy 0.9862 | train NFE 26.0 | test loss 0.2500 "
                              "| test fid 12.5000")
    assert math.isclose(summary.metrics["test/fid"], 12.5)


class _TwoGroupAdamW(OptimizerPreset):
    """The bias parameters at ten times the weights' learning rate."""

    def parameter_groups(self, module):
        biases = [p for name, p in module.named_parameters() if name.endswith("bias")]
        weights = [p for name, p in module.named_parameters() if not name.endswith("bias")]
        return [{"params": weights, "lr": 1e-3}, {"params": biases, "lr": 1e-2}]

    def build(self, module):
        return {"optimizer": torch.optim.AdamW(self.parameter_groups(module), weight_decay=0.0)}


def _fit(module, tmp_path, batches: int = 2) -> lightning.Trainer:
    options = {**ONE_BATCH, "limit_train_batches": batches, "limit_val_batches": 0}
    trainer = lightning.Trainer(**options, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    return trainer


def test_a_preset_gives_parameter_groups(tmp_path):
    module = TinySoftmaxRegression(optim=_TwoGroupAdamW())
    weight, bias = module.linear.weight.detach().clone(), module.linear.bias.detach().clone()
    (optimizer,) = _fit(module, tmp_path, batches=1).optimizers
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 1e-2]
    assert optimizer.param_groups[1]["params"] == [module.linear.bias]
    # Adam's first step moves every parameter with a gradient by its group's lr (m/√v = ±1)
    weight_step = (module.linear.weight.detach() - weight).abs().max()
    bias_step = (module.linear.bias.detach() - bias).abs().max()
    assert weight_step == pytest.approx(1e-3, rel=1e-3) and bias_step == pytest.approx(1e-2, rel=1e-3)


class _TwoOptimizers(OptimizerPreset):
    def build(self, module):
        return [torch.optim.SGD([module.linear.weight], lr=0.1), torch.optim.SGD([module.linear.bias], lr=0.1)]


class _ManualTwoOptimizers(TinySoftmaxRegression):
    """Several optimisers need manual optimisation in Lightning 2; each steps its own parameters."""

    def __init__(self):
        super().__init__(optim=_TwoOptimizers())
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx: int) -> None:
        loss = self._shared_step(batch, "train")
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()


def test_a_preset_gives_several_optimisers(tmp_path):
    module = _ManualTwoOptimizers()
    weight, bias = module.linear.weight.detach().clone(), module.linear.bias.detach().clone()
    trainer = _fit(module, tmp_path)
    assert len(trainer.optimizers) == 2
    assert not torch.equal(weight, module.linear.weight) and not torch.equal(bias, module.linear.bias)


def test_default_preset_is_plain_adamw_and_bad_presets_fail():
    module = TinySoftmaxRegression()
    assert isinstance(module.optim, AdamWPreset)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-3
    with pytest.raises(TypeError, match="optim must be an OptimizerPreset"):
        TinySoftmaxRegression(optim="adamw")
    with pytest.raises(ValueError, match="betas must be two numbers"):
        AdamWPreset(betas=(0.9, 1.0))


def test_checkpoint_hooks_restore_the_generators():
    module = TrainingModule()
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    expected = (torch.rand(3), torch.randint(0, 1000, (2,)))
    torch.manual_seed(1234)  # a different state, as in a fresh process
    module.on_load_checkpoint(checkpoint)
    drawn = (torch.rand(3), torch.randint(0, 1000, (2,)))
    assert torch.equal(drawn[0], expected[0]) and torch.equal(drawn[1], expected[1])
