"""Trajectory datasets: seeded simulations of a PhysicalSystem, for fitting neural ODEs."""

from __future__ import annotations

from typing import Literal

import lightning
import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch.utils.data import DataLoader, Dataset

from .sampling import EpochShuffleSampler
from .systems import SYSTEMS, PhysicalSystem

__all__ = ["simulate", "TrajectoryDataset", "TrajectoryDataModule", "TrajectoryCollate"]


def simulate(
    system: PhysicalSystem, y0: np.ndarray, t: np.ndarray, rtol: float = 1e-10, atol: float = 1e-12
) -> np.ndarray:
    """Integrate n initial states with scipy's DOP853 (order 8) and return (n, len(t), state_dim).

    All n states are integrated as one vectorised system (one step size for all), which is much
    faster than n solves. scipy's error norm is an RMS over all n * state_dim components, so one
    trajectory's local error may reach sqrt(n) times the tolerance; at the default rtol/atol that
    is still far below any observation noise (the tests check conserved quantities to 1e-8).
    """
    y0 = np.atleast_2d(np.asarray(y0, dtype=np.float64))
    t = np.asarray(t, dtype=np.float64)
    if y0.shape[1] != system.state_dim:
        raise ValueError(f"y0 must be (n, {system.state_dim}) for {type(system).__name__}, got {y0.shape}")
    if t.ndim != 1 or len(t) < 2 or not np.all(np.diff(t) > 0):
        raise ValueError(f"t must be a 1-D strictly increasing array of >= 2 times, got shape {t.shape}")
    n, dim = y0.shape

    def flat_field(s, flat):  # state laid out as (state_dim, n), flattened
        return system.vector_field(s, flat.reshape(dim, n)).reshape(-1)

    solution = solve_ivp(
        flat_field, (t[0], t[-1]), y0.T.reshape(-1), method="DOP853", t_eval=t, rtol=rtol, atol=atol
    )
    if not solution.success:
        raise RuntimeError(f"simulation of {type(system).__name__} failed: {solution.message}")
    return solution.y.reshape(dim, n, len(t)).transpose(1, 2, 0)


class TrajectoryDataset(Dataset):
    """Observed trajectories y: (n, n_times, state_dim); item i is y[i]."""

    def __init__(self, observed: torch.Tensor):
        self.observed = observed

    def __len__(self) -> int:
        return len(self.observed)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.observed[index]


class TrajectoryCollate:
    """collate_fn producing (t, y0, y_traj): t (n_times,), y0 (batch, d), y_traj (n_times, batch, d).

    A class rather than a closure so that worker processes can pickle it.
    """

    def __init__(self, t: torch.Tensor):
        self.t = t

    def __call__(self, items: list[torch.Tensor]):
        y_traj = torch.stack(items, dim=1)  # time-major, like pynodeta.odeint's output
        return self.t, y_traj[0], y_traj


class TrajectoryDataModule(lightning.LightningDataModule):
    """Train / val / test trajectories of one physical system, simulated once at ``setup``.

    Batches are ``(t, y0, y_traj)``: t (n_times,) evenly spaced over ``t_span``; y_traj
    (n_times, batch, state_dim), time-major so it compares directly with ``odeint(f, y0, t)``;
    y0 = y_traj[0] (observed, so noisy when ``noise > 0``). The noise-free trajectories are kept in
    ``clean`` ({"train": ..., "val": ..., "test": ...}, each (n, n_times, state_dim)).
    """

    def __init__(
        self,
        system: str | PhysicalSystem = "pendulum",
        n_trajectories: int = 256,
        t_span: tuple[float, float] = (0.0, 10.0),
        n_times: int = 64,
        noise: float = 0.0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        super().__init__()
        if isinstance(system, str):
            if system not in SYSTEMS:
                raise ValueError(f"unknown system {system!r}; choose one of {sorted(SYSTEMS)}")
            system = SYSTEMS[system]()
        if not t_span[1] > t_span[0]:
            raise ValueError(f"t_span must be (t0, t1) with t1 > t0, got {t_span}")
        for arg, value, low in [
            ("n_times", n_times, 2),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ]:
            if value < low:
                raise ValueError(f"{arg} must be >= {low}, got {value}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction and test_fraction must be >= 0 with sum < 1, got "
                f"{val_fraction} and {test_fraction}"
            )
        self.sizes = _split_sizes(n_trajectories, val_fraction, test_fraction)
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.system = system  # the simulated system (a name from SYSTEMS or an instance)
        self.t_span, self.n_times = t_span, n_times  # observation times: linspace(*t_span, n_times)
        self.noise = noise  # standard deviation of Gaussian observation noise, in state units
        self.seed = seed  # initial conditions, noise and shuffling
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dtype = getattr(torch, dtype)
        self.state_dim = system.state_dim
        self.t = torch.linspace(t_span[0], t_span[1], n_times, dtype=torch.float64).to(self.dtype)
        self.datasets: dict[str, TrajectoryDataset] = {}
        self.clean: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rng = np.random.default_rng(self.seed)
        n_total = sum(self.sizes.values())
        y0 = self.system.sample_initial_conditions(n_total, rng)
        clean = simulate(self.system, y0, self.t.double().numpy())
        observed = clean + self.noise * rng.standard_normal(clean.shape)
        start = 0
        for split, size in self.sizes.items():
            part = slice(start, start + size)
            self.clean[split] = torch.from_numpy(clean[part]).to(self.dtype)
            self.datasets[split] = TrajectoryDataset(torch.from_numpy(observed[part]).to(self.dtype))
            start += size

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", EpochShuffleSampler(self.sizes["train"], self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", None)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", None)

    def _loader(self, split: str, sampler) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("TrajectoryDataModule.setup() must run before its loaders are used")
        if self.sizes[split] == 0:
            raise ValueError(f"the {split} split is empty; raise n_trajectories or its fraction")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=TrajectoryCollate(self.t),
        )


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(f"n_trajectories={n} leaves no training trajectory after the val/test fractions")
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}
