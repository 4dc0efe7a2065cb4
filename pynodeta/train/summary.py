"""The one-line result of a run (test metrics and NFE), printed and saved as JSON beside the logs."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

__all__ = ["RunSummary"]

_NAMES = {"acc": "accuracy"}  # how a logged metric is spelled in the summary line


def _value(metrics: dict, key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


@dataclass(frozen=True)
class RunSummary:
    """Epoch means of the logged metrics: NaN where a metric was not logged (e.g. no ODE block)."""

    test: dict[str, float] = field(default_factory=dict)  # test/<name> metrics: acc, loss, mse, mae, ...
    test_nfe_forward: float = math.nan    # mean right-hand-side evaluations per test batch
    train_nfe_forward: float = math.nan   # mean per training batch, last training epoch
    train_nfe_backward: float = math.nan  # mean adjoint-solve evaluations per training batch, last epoch

    @classmethod
    def from_metrics(cls, fit_metrics: dict, test_metrics: dict) -> RunSummary:
        test = {key.removeprefix("test/"): float(value) for key, value in test_metrics.items()
                if key.startswith("test/") and not key.startswith("test/nfe")}
        return cls(
            test=dict(sorted(test.items(), key=lambda item: item[0] != "acc")),  # accuracy first
            test_nfe_forward=_value(test_metrics, "test/nfe_forward"),
            train_nfe_forward=_value(fit_metrics, "train/nfe_forward"),
            train_nfe_backward=_value(fit_metrics, "train/nfe_backward"),
        )

    def line(self) -> str:
        parts = [f"test {_NAMES.get(name, name)} {value:.4f}" for name, value in self.test.items()]
        nfe = f"mean NFE per batch: test forward {self.test_nfe_forward:.1f}"
        if not math.isnan(self.train_nfe_forward):
            nfe += f", train forward {self.train_nfe_forward:.1f}, train backward {self.train_nfe_backward:.1f}"
        return "pynodeta summary: " + " | ".join([*parts, nfe])

    def report(self, trainer) -> None:
        """Print the summary line (rank 0) and write ``summary.json`` into the trainer's log_dir."""
        if not trainer.is_global_zero:
            return
        print(self.line(), flush=True)
        if trainer.log_dir is not None:
            os.makedirs(trainer.log_dir, exist_ok=True)
            with open(os.path.join(trainer.log_dir, "summary.json"), "w") as f:
                json.dump(asdict(self), f, indent=2)
