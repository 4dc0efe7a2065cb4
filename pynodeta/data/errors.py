"""The data package's exceptions: data that is not on disk, and a file that is there but unusable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatasetNotFoundError", "DatasetFileError"]


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


class DatasetFileError(ValueError):
    """A dataset file that exists but cannot be used: corrupt, truncated, tampered with, or holding
    arrays of the wrong type, range or length. The message names the file and what was expected."""

    def __init__(self, path: Path | str, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")
