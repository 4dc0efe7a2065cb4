"""The adaptive Runge-Kutta trial step replayed as a CUDA graph: ``backend_options={"cuda_graph": True}``.

On a GPU every op of an eager step is a kernel launch: a dopri5 step is six calls of func and about forty
small ops (the stage sums and the error norm), and on small states the launches, not the arithmetic, set
the time. A CUDA graph records the launches of one trial step once and replays them with one launch. The
step's changing inputs (y, f, the stage times and h) are copied into the graph's own buffers before each
replay, and its outputs are copied out after it, since the next replay overwrites them. What decides stays
on the host, as in the eager and the compiled step (``compiled_step.py``): the one ratio read per step, the
step-size rule, the stops, dense output, statistics and callbacks, so the NFE and the accepted and
rejected steps are the eager step's.

The graph is captured once per solve, at its third trial step. The first two run the same function eagerly
on a side stream, which is where CUDA wants lazy set-up (cuBLAS handles, cuDNN's algorithm choice, the
allocator's blocks) to happen before a capture. These are steps of the solve, and a capture records
without executing, so func runs no more often than in the eager loop. A replay builds no autograd graph,
so the option takes solves without gradient: inference under ``torch.no_grad()`` and the adjoint's
forward solve. func must be capturable: fixed shapes, no reads to the host (``.item()``, ``float(t)``,
printing a tensor), no tensors made from host values; parameters updated in place between solves (as
optimisers do) are read afresh by every replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from ..methods import Method
from .base import SolverConfig
from .compiled_step import StageTimes, tolerance_operand, trial_step_function
from .rk_parts import RHSCaller

__all__ = ["GraphedTrialStep", "GraphCapture", "CudaGraphCapture", "RerunCapture", "capturing", "cuda_graph_option",
           "graph_capture"]

OPTION = "backend_options={'cuda_graph': True}"
WARMUP_STEPS = 2  # eager trial steps on a side stream before the capture


def cuda_graph_option(extra: dict[str, Any]) -> bool:
    """Take ``cuda_graph`` out of the torch backend's ``backend_options`` (a dict it may modify): True or False."""
    value = extra.pop("cuda_graph", False)
    if not isinstance(value, bool):
        raise TypeError(f"backend_options['cuda_graph'] must be True or False, got {value!r}")
    return value


class GraphCapture(Protocol):
    """How a step is recorded and replayed: CUDA graphs on a GPU (``CudaGraphCapture``)."""

    def warmup(self) -> contextlib.AbstractContextManager: ...

    def capture(self, step: Callable[[], Any], device_tensors: Iterable[torch.Tensor] = ()
                ) -> tuple[Callable[[], None], Any]:
        """(replay, outputs): ``step()`` recorded; every ``replay()`` rewrites ``outputs`` in place.
        ``device_tensors``: what step reads from the device (its inputs, func's parameters)."""
        ...


class CudaGraphCapture:
    """``torch.cuda.CUDAGraph`` capture, with warm-up on a side stream as CUDA requires."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            yield
        current.wait_stream(self.side)

    def capture(self, step: Callable[[], Any], device_tensors: Iterable[torch.Tensor] = ()
                ) -> tuple[Callable[[], None], Any]:
        # capture_begin/end rather than the torch.cuda.graph context, which empties the allocator's cache
        # before every capture: once per solve here, which would make a training loop allocate afresh
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)  # as torch.cuda.graph does: nothing in flight when recording starts
        with torch.cuda.stream(self.side):  # a capture cannot record on the default stream
            graph.capture_begin()
            try:
                outputs = step()
            except BaseException:
                with contextlib.suppress(RuntimeError):  # the capture is invalid already; report step's error
                    graph.capture_end()
                raise
            graph.capture_end()
        return graph.replay, outputs


def capturing() -> bool:
    """Whether a step is being recorded now, by a CUDA graph capture on the current stream or by the stand-in.
    Nothing is computed while recording, so a check that reads a value to the host (a denoiser's σ > 0, say)
    cannot run then and is skipped; the solver's own error control still sees what the replays compute."""
    if _STAND_IN[0]:
        return True
    if torch.compiler.is_compiling():  # traced by torch.compile, not recorded: checks are the compiler's matter
        return False
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


_STAND_IN = [False]  # whether RerunCapture is recording (one capture at a time: a solve's step is not reentrant)


class DeviceValueReads(TorchDispatchMode):
    """Finds the ops that read a value of a device tensor back to the host (``.item()``, ``float(t)``, ``if
    tensor``, and the ops whose output shape depends on values) on a machine without one: which tensors
    would live on the device is tracked from ``device_tensors`` (a step's inputs and func's parameters,
    say) through every op, so reading a host tensor (a schedule's table) is not one. Each such op calls
    ``read``; ``track`` adds a tensor that would live on the device. Blind spot: on the CPU ``.tolist()``
    and ``.numpy()`` read without an op that a dispatch mode sees."""

    SYNCING = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.masked_select.default)

    def __init__(self, device_tensors: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.on_device = WeakIdKeyDictionary({tensor: True for tensor in device_tensors})

    def track(self, tensor: torch.Tensor) -> None:
        self.on_device[tensor] = True

    def read(self, func) -> None:
        """Called for each read of a device value, before the op runs."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        from_device = any(isinstance(leaf, torch.Tensor) and leaf in self.on_device
                          for leaf in tree_leaves((args, kwargs)))
        if from_device and func in self.SYNCING:
            self.read(func)
        out = func(*args, **kwargs)
        if from_device:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self.on_device[leaf] = True
        return out


class _NoHostReads(DeviceValueReads):
    """Refuses every read of a device value, as a CUDA graph capture does."""

    def read(self, func) -> None:
        raise RuntimeError(f"{func} reads a value back to the host, which a CUDA graph capture does not permit")


class RerunCapture:
    """A stand-in for ``CudaGraphCapture`` that runs anywhere, with a graph's semantics: a capture refuses
    reads of device values back to the host and leaves its output buffers invalid (NaN), and every
    ``replay()`` reruns the recorded step from the same input buffers into the same output buffers, in
    place; both run with ``capturing()`` true, so a replay takes the code paths that the capture recorded.
    It checks code around a graph (buffers copied in before a replay and out before the next) and whether a
    func can be captured, on a machine without a GPU; it saves no time."""

    def __init__(self):
        self.warmups = self.captures = self.replays = 0

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        self.warmups += 1
        yield

    def capture(self, step: Callable[[], Any], device_tensors: Iterable[torch.Tensor] = ()
                ) -> tuple[Callable[[], None], Any]:
        self.captures += 1
        with _NoHostReads(device_tensors):
            outputs = _recording(step)
        buffers = _tensors(outputs)
        for buffer in buffers:
            buffer.fill_(float("nan"))  # a capture records kernels without running them

        def replay() -> None:
            self.replays += 1
            # a replay runs what was recorded: the code paths that capturing() chose then
            for buffer, value in zip(buffers, _tensors(_recording(step)), strict=True):
                buffer.copy_(value)

        return replay, outputs


def _recording(step: Callable[[], Any]) -> Any:
    """step() with ``capturing()`` true."""
    _STAND_IN[0] = True
    try:
        return step()
    finally:
        _STAND_IN[0] = False


def _tensors(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a nest of tuples and lists, in order."""
    return [leaf for leaf in tree_leaves(outputs) if isinstance(leaf, torch.Tensor)]


def graph_capture(device: torch.device) -> GraphCapture:
    """The capture for a state on ``device``; a state off the GPU is refused with the fix."""
    if device.type != "cuda":
        raise ValueError(f"{OPTION} replays the step as a CUDA graph, but the state y0 is on {device}: move y0 "
                         f"and func to a CUDA device, or drop the option (backend_options={{'compile': True}} "
                         f"fuses the step on a CPU)")
    return CudaGraphCapture(device)


class GraphedTrialStep:
    """``(y1, ks, ratio)`` of one trial step of an explicit adaptive method, replayed from a captured graph."""

    def __init__(self, method: Method, call: RHSCaller, config: SolverConfig, y0: torch.Tensor):
        if torch.is_grad_enabled():
            raise ValueError(f"{OPTION} replays a recorded step, which autograd cannot differentiate: solve "
                             f"under torch.no_grad() (inference), or with adjoint=True (its forward solve runs "
                             f"without gradient), or drop the option")
        self.graphs = graph_capture(y0.device)
        self.call, self.fsal = call, method.tableau.fsal
        self.stage_times = StageTimes(method, call, y0)
        self.rtol, self.atol = (tolerance_operand(tol, y0) for tol in (config.rtol, config.atol))
        self.norm = config.norm
        self.function = trial_step_function(method)
        # the stage times after the first, then h: one buffer the graph reads, filled by one copy per step
        # from a host buffer (pinned on a GPU, so the copy does not wait on the host)
        n_times = method.tableau.stages
        self.times = torch.empty(n_times, dtype=y0.dtype, device=y0.device)
        self.host_times = torch.empty(n_times, dtype=y0.dtype, pin_memory=y0.device.type == "cuda")
        self.warmup_left = WARMUP_STEPS
        self.replay: Callable[[], None] | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # the graph's y and f buffers
        self.outputs: Any = None  # the graph's (y1, ks, ratio) buffers

    def __call__(self, s: float, y: torch.Tensor, f: torch.Tensor, dt: float, h: float):
        # rewriting the host buffer is safe: the previous step's copy ended before its ratio was read
        self.host_times.copy_(torch.tensor([*self.stage_times.recorded(s, dt), h], dtype=torch.float64))
        self.times.copy_(self.host_times, non_blocking=True)
        if self.replay is None and self.warmup_left > 0:
            self.warmup_left -= 1
            with self.graphs.warmup():
                y1, ks, ratio = self._step(y, f)
            return y1, [f, *ks], float(ratio)
        if self.replay is None:
            self._capture(y, f)
        y_in, f_in = self.inputs
        y_in.copy_(y)
        f_in.copy_(f)
        self.replay()
        y1, ks, ratio = self.outputs
        # copies: the loop keeps y1 and the stages (the next step's start, dense output) past the next replay
        return y1.clone(), [f, *(k.clone() for k in ks)], float(ratio)

    def derivative_at_end(self, ks: list[torch.Tensor], s1: float, y1: torch.Tensor) -> torch.Tensor:
        """f(s1, y1): the last stage of a first-same-as-last tableau, else one more (eager) evaluation."""
        return ks[-1] if self.fsal else self.call(s1, y1)

    def _step(self, y: torch.Tensor, f: torch.Tensor):
        return self.function(self.call.func, self.norm, y, f, self.times[:-1], self.times[-1], self.rtol, self.atol)

    def _capture(self, y: torch.Tensor, f: torch.Tensor) -> None:
        self.inputs = (y.clone(), f.clone())
        device_tensors = [*self.inputs, self.times, self.rtol, self.atol]
        for func in (self.call.user_func, self.call.func):
            if isinstance(func, torch.nn.Module):
                device_tensors += [*func.parameters(), *func.buffers()]
        try:
            self.replay, self.outputs = self.graphs.capture(lambda: self._step(*self.inputs), device_tensors)
        except RuntimeError as error:
            raise RuntimeError(
                f"{OPTION}: the trial step could not be captured as a CUDA graph ({type(error).__name__}: "
                f"{error}). A captured func keeps its shapes fixed, reads nothing back to the host (.item(), "
                f"float(t), printing a tensor) and makes no tensors from host values; drop the option to solve "
                f"with the eager step") from error
