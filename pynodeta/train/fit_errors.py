"""Settings a fit cannot run with that show only once the module meets its trainer and data."""

from __future__ import annotations

__all__ = ["FitSettingError"]


class FitSettingError(ValueError):
    """Raised from a module's ``on_fit_start`` before any training step: ``pynodeta fit`` reports it as a usage
    error (``pynodeta: error: ...``, exit 2) rather than as a traceback."""
