"""NaN/Inf checks on a sampling run's or an ODE solve's network outputs that do not stall a GPU once per call."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from .. import _host_copies
from ..ode.backends.graphed_step import capturing
from ..ode.errors import ODESolveError
from ._checks import NonFiniteDenoiserError, all_finite


class OutputChecks:
    """Refuses NaN/Inf in every network output of one sampling run, naming the first noise level (or
    timestep) that gave one.

    On the CPU each output is checked as it arrives: one sum, read at no cost. On a GPU a read waits for all
    queued kernels, so a check per call would stop the host from queueing the next call while the device
    runs this one (NVlabs' and k-diffusion's samplers check nothing for that reason). There each output
    leaves a flag on the device instead, and ``raise_if_any`` reads them all at once: when the run ends
    (a sampler's ``finish``, the end of an ODE solve), or earlier when a read the run makes anyway (an
    adaptive step's error) comes back non-finite.
    """

    def __init__(self, message: Callable[[float | int], str]):
        self.message = message  # the error's text, given where (σ or t) the output went wrong
        self.flags: list[torch.Tensor] = []  # one 0-dim bool per output still unread, on its device
        self.where: list[float | int | torch.Tensor] = []  # a tensor (an ODE solve's σ) is read only for the error
        self.defer: bool | None = None  # flags instead of reads: the outputs live where reads wait

    def check(self, out: torch.Tensor, where: float | int | torch.Tensor) -> None:
        if capturing():  # a step recorded as a CUDA graph reads nothing back; the solver's control sees its NaN
            return
        if self.defer is None:  # decided once: a run stays on its device, and each call here costs in situ
            self.defer = _host_copies.reads_wait_for(out)
        if not self.defer:
            if not all_finite(out):
                raise NonFiniteDenoiserError(self.message(_host(where)))
            return
        self.flags.append(torch.isfinite(out.detach()).all())
        self.where.append(where)

    def raise_if_any(self) -> None:
        """Read the flags left so far (one synchronisation) and raise for the first output that was not finite."""
        if not self.flags:
            return
        finite = torch.stack(self.flags).cpu()
        where, self.flags, self.where = self.where, [], []
        if not bool(finite.all()):
            raise NonFiniteDenoiserError(self.message(_host(where[int((~finite).nonzero()[0, 0])])))

    @contextlib.contextmanager
    def around_solve(self) -> Iterator[None]:
        """Around an ODE solve whose right-hand side checks its outputs here: a solver failure that a NaN/Inf
        output explains (its error estimate turned NaN, the steps shrank to nothing) is raised as that
        output's error instead, and every flag is read when the solve ends."""
        try:
            yield
        except ODESolveError:
            self.raise_if_any()
            raise
        self.raise_if_any()


def _host(where: float | int | torch.Tensor) -> float | int:
    """σ or t for the error's text; a solver's 0-dim σ tensor is read here, on the error's path only."""
    return float(where) if isinstance(where, torch.Tensor) else where
