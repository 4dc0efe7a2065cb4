"""The one exception the data package raises for data that is not on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where its loader looks for them.

    The message lists every missing path, the layout the loader expects and where to download it.
    It subclasses ``FileNotFoundError`` so ``except FileNotFoundError`` keeps working.
    """

    def __init__(self, dataset: str, missing: Sequence[Path], layout: str, download: str):
        self.dataset, self.missing = dataset, [Path(p) for p in missing]
        listed = "\n".join(f"  - {p}" for p in self.missing)
        super().__init__(
            f"{dataset} not found; missing:\n{listed}\nExpected layout: {layout}\n"
            f"Download: {download}\nThen pass data_dir=<the folder described above>."
        )
