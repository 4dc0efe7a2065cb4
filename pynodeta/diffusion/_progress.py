"""The samplers' progress bar: k-diffusion's ``trange(n, disable=disable)``, quiet by default off a terminal.

``disable=None`` shows the bar only when stderr is a terminal: k-diffusion always shows it, which fills
test logs and the logs of a command-line run with redirected output. ``disable=False`` forces it (e.g.
in a notebook, whose stderr is no terminal), ``disable=True`` hides it. tqdm is optional: without it
a plain "name: i/n" counter is written to stderr instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator


def progress_shown(disable: bool | None) -> bool:
    """Whether to draw the bar: ``not disable``, and for None whether stderr is a terminal."""
    if disable is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    if not isinstance(disable, bool):
        raise TypeError(f"disable must be True, False or None (None: show the progress bar only when stderr is "
                        f"a terminal), got {disable!r}")
    return not disable


def progress_range(n: int, disable: bool | None, name: str) -> Iterable[int]:
    """range(n), drawn as a progress bar on stderr when :func:`progress_shown`."""
    if not progress_shown(disable):
        return range(n)
    try:
        from tqdm import trange
    except ImportError:  # tqdm is not a dependency of pynodeta
        return _counter(n, name)
    return trange(n, desc=name, file=sys.stderr)


class ProgressCounter:
    """A bar updated by hand, with or without a known ``total`` (the adaptive sampler's evaluations, the images
    ``pynodeta encode`` has encoded); does nothing when not shown."""

    def __init__(self, disable: bool | None, name: str, total: int | None = None):
        self.bar, self.name, self.count, self.total = None, name, 0, total
        self.shown = progress_shown(disable)
        if self.shown:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(desc=name, total=total, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.shown:
            sys.stderr.write(f"\r{self.name}: {self.count}" + ("" if self.total is None else f"/{self.total}"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.shown:
            sys.stderr.write("\n")


def _counter(n: int, name: str) -> Iterator[int]:
    for i in range(n):
        sys.stderr.write(f"\r{name}: {i + 1}/{n}")
        yield i
    sys.stderr.write("\n")
