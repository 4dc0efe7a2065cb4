"""The audit's result: one Finding per time entry and per normalisation after one, and a verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["Finding", "TimeAwarenessReport", "Verdict"]

Verdict = Literal["entry", "cancelled", "partial", "preserved", "no signal"]


@dataclass(frozen=True)
class Finding:
    """What the audit found at one layer (one call of it).

    Time entries carry ``verdict="entry"`` and no survival. Normalisations carry the measured
    survival ratio (see ``pynodeta.diagnose.estimators.survival_ratio``) and its verdict:
    "cancelled" (survival < threshold), "partial" (< 0.5), "preserved", or "no signal" (no time
    reached the layer: it was cancelled upstream).
    """

    layer: str                          # qualified module name; "<model>" for the model itself
    kind: str                           # class name
    role: Literal["time entry", "normalisation"]
    verdict: Verdict
    message: str
    survival: float | None = None       # normalisations: with batch statistics for BatchNorm-type layers
    survival_running_stats: float | None = None  # eval-mode BatchNorm: as run, on running statistics
    structural: str | None = None       # normalisations: how much of the incoming time signal is a
                                        # per-unit offset, which mean subtraction removes exactly
    offset_fraction: float | None = None  # that fraction, in [0, 1]
    time_share_in: float | None = None  # fraction of the input's variance due to t
    time_share_out: float | None = None  # fraction of the output's variance due to t
    entry: str | None = None            # normalisations: the nearest time entry before it
    detected_by: Literal["type", "measured"] | None = None  # time entries: how they were found
    injects: bool | None = None         # time entries: whether the output varies with t at a fixed input


@dataclass(frozen=True)
class TimeAwarenessReport:
    """Where time enters a model and whether it survives each normalisation after that.

    ``vanishing`` is True when some normalisation cancels time (survival < ``threshold``) or the
    model's output does not change with t at all. ``output_sensitivity`` is the relative RMS change
    of the output across ``times`` at the fixed input (see ``estimators.output_sensitivity``).
    """

    findings: list[Finding]
    output_sensitivity: float
    vanishing: bool
    times: tuple[float, ...]
    mode: Literal["eval", "train"]
    threshold: float
    subject: str = "<model>"            # what was audited (e.g. the ODE right-hand side's name)

    @property
    def cancelled(self) -> list[Finding]:
        """The normalisations that cancel time."""
        return [f for f in self.findings if f.verdict == "cancelled"]

    @property
    def entries(self) -> list[Finding]:
        return [f for f in self.findings if f.role == "time entry"]

    def to_dict(self) -> dict:
        """JSON-ready: plain types only, NaN as None."""
        return {
            "subject": self.subject,
            "vanishing": self.vanishing,
            "output_sensitivity": _finite(self.output_sensitivity),
            "times": list(self.times),
            "mode": self.mode,
            "threshold": self.threshold,
            "findings": [{k: _finite(v) for k, v in asdict(f).items()} for f in self.findings],
        }

    def __str__(self) -> str:
        header = ("layer", "kind", "role", "time share in → out", "survival", "verdict", "note")
        rows = [(f.layer, f.kind, f.role, _shares(f), _number(f.survival), f.verdict, f.message)
                for f in self.findings]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        lines = [f"time awareness of {self.subject} ({self.mode} mode, t = "
                 f"{', '.join(f'{t:g}' for t in self.times)})"]
        for row in [header, *rows]:
            cells = [c.ljust(w) if i != 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        if not rows:
            lines.append("(no time entry and no normalisation after one)")
        lines.append(f"output sensitivity to t: {self.output_sensitivity:.3g} "
                     f"(relative RMS change of the output across the times)")
        if self.vanishing:
            where = ", ".join(f.layer for f in self.cancelled) or "the output"
            lines.append(f"VANISHING: time is cancelled at {where} (threshold: survival < {self.threshold:g})")
        else:
            partial = [f.layer for f in self.findings if f.verdict == "partial"]
            detail = f"; only partially at {', '.join(partial)}" if partial else ""
            lines.append(f"no normalisation cancels time (threshold: survival < {self.threshold:g}){detail}")
        return "\n".join(lines)


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _shares(f: Finding) -> str:
    return f"{_number(f.time_share_in)} → {_number(f.time_share_out)}"
