"""The one-line result of a run (its module's summary metrics), printed and saved as JSON beside the
logs. Metric-agnostic: it prints what the LightningModule logged, formatted as the module asks."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from .._atomic import atomic_write_text

__all__ = ["RunSummary"]

DEFAULT_TEST_FORMAT = "test {name} {{:.4f}}"  # for a test/<name> metric the module gives no format


def _summary_formats(fit_metrics: Mapping, test_metrics: Mapping, formats: Mapping[str, str]) -> dict[str, str]:
    """{logged key: format} in print order: the module's listed keys (those logged), then every other
    ``test/<name>`` metric with the default format."""
    logged = {**fit_metrics, **test_metrics}
    chosen = {key: fmt for key, fmt in formats.items() if key in logged}
    for key in test_metrics:
        if key.startswith("test/") and key not in chosen:
            chosen[key] = DEFAULT_TEST_FORMAT.format(name=key.removeprefix("test/"))
    return chosen


@dataclass(frozen=True)
class RunSummary:
    """Epoch means of the metrics a run logged, with the format each is printed in.

    metrics: {logged key (``test/acc``, ``train/nfe_backward``, ...): value}, in print order.
    formats: {logged key: format string with one ``{}`` for the value}.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_metrics(cls, fit_metrics: Mapping, test_metrics: Mapping,
                     formats: Mapping[str, str] | None = None) -> RunSummary:
        """Pick from ``fit_metrics`` (after fit) and ``test_metrics`` (after test; they win on a clash)
        the keys in ``formats`` (a TrainingModule's ``summary_formats``) and every test metric."""
        chosen = _summary_formats(fit_metrics, test_metrics, formats or {})
        logged = {**fit_metrics, **test_metrics}
        return cls(metrics={key: float(logged[key]) for key in chosen}, formats=chosen)

    def line(self) -> str:
        parts = [self.formats.get(key, key + " {:.4f}").format(value) for key, value in self.metrics.items()]
        return "pynodeta summary: " + " | ".join(parts)

    def report(self, trainer) -> None:
        """Print the summary line (rank 0) and write ``summary.json`` into the trainer's log_dir.

        Called on every rank: under DDP ``trainer.log_dir`` is a collective, read before the rank-0 branch."""
        log_dir = trainer.log_dir
        if not trainer.is_global_zero:
            return
        print(self.line(), flush=True)
        if log_dir is not None:
            atomic_write_text(os.path.join(log_dir, "summary.json"),
                              json.dumps(asdict(self)["metrics"], indent=2))
