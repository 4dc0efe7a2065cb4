"""Simulated systems against closed forms and conserved quantities; the trajectory DataModule."""

import numpy as np
import pytest
import torch

from pynodeta.data import (
    SYSTEMS,
    DampedMassSpring,
    DrivenOscillator,
    LotkaVolterra,
    Pendulum,
    TrajectoryDataModule,
    simulate,
)


def underdamped_closed_form(t, y0, mass, stiffness, damping):
    """x(t) = exp(-g t) (A cos(w t) + B sin(w t)), g = c / 2m, w = sqrt(k/m - g^2)."""
    g = damping / (2 * mass)
    w = np.sqrt(stiffness / mass - g**2)
    a, b = y0[0], (y0[1] + g * y0[0]) / w
    decay, cos, sin = np.exp(-g * t), np.cos(w * t), np.sin(w * t)
    x = decay * (a * cos + b * sin)
    v = decay * ((w * b - g * a) * cos - (w * a + g * b) * sin)
    return np.stack([x, v], axis=-1)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_mass_spring_matches_its_closed_form(damping):
    system = DampedMassSpring(mass=2.0, stiffness=3.0, damping=damping)
    y0 = system.sample_initial_conditions(4, np.random.default_rng(0))
    t = np.linspace(0.0, 20.0, 101)
    expected = np.stack([underdamped_closed_form(t, y, 2.0, 3.0, damping) for y in y0])
    assert np.max(np.abs(simulate(system, y0, t) - expected)) < 1e-8
    assert np.max(np.abs(system.exact_solution(t, y0) - expected)) < 1e-10


def test_undamped_oscillator_conserves_energy_and_damped_one_loses_it():
    t = np.linspace(0.0, 30.0, 200)
    y0 = np.array([[1.0, 0.5]])
    free = DampedMassSpring(damping=0.0)
    energy = free.first_integral(simulate(free, y0, t))
    assert np.max(np.abs(energy - energy[0, 0])) < 1e-9
    damped = DampedMassSpring(damping=0.2)
    lost = DampedMassSpring(damping=0.0).first_integral(simulate(damped, y0, t))
    assert np.all(np.diff(lost[0]) < 0)
    with pytest.raises(NotImplementedError, match="set damping=0"):
        damped.first_integral(y0)


def test_pendulum_conserves_energy_and_small_swings_are_harmonic():
    system = Pendulum(length=2.0, gravity=9.81)
    y0 = system.sample_initial_conditions(8, np.random.default_rng(1))
    t = np.linspace(0.0, 10.0, 300)
    energy = system.first_integral(simulate(system, y0, t))
    assert np.max(np.abs(energy - energy[:, :1])) < 1e-8
    small = simulate(system, np.array([[1e-4, 0.0]]), t)[0, :, 0]
    assert np.max(np.abs(small - 1e-4 * np.cos(np.sqrt(9.81 / 2.0) * t))) < 1e-11  # sin(x) ~ x


def test_lotka_volterra_conserves_its_first_integral():
    system = LotkaVolterra(alpha=1.5, beta=1.0, gamma=3.0, delta=1.0)
    y0 = system.sample_initial_conditions(8, np.random.default_rng(2))
    t = np.linspace(0.0, 15.0, 300)
    traj = simulate(system, y0, t)
    invariant = system.first_integral(traj)
    assert np.max(np.abs(invariant - invariant[:, :1])) < 1e-8
    assert np.all(traj > 0) and np.ptp(traj[:, :, 0], axis=1).min() > 1e-3  # populations oscillate
    equilibrium = simulate(system, np.array([[3.0, 1.5]]), t)
    assert np.max(np.abs(equilibrium - [3.0, 1.5])) < 1e-12


def test_driven_oscillator_superposes_free_and_forced_responses():
    forced = DrivenOscillator(damping=0.2, drive_amplitude=0.7, drive_frequency=1.3)
    free = DrivenOscillator(damping=0.2, drive_amplitude=0.0, drive_frequency=1.3)
    y0, t = np.array([[0.4, -0.2]]), np.linspace(0.5, 12.0, 80)  # t0 != 0: the drive sees absolute time
    total = simulate(forced, y0, t)
    parts = simulate(free, y0, t) + simulate(forced, np.zeros_like(y0), t)
    assert np.max(np.abs(total - parts)) < 1e-9
    shifted = simulate(forced, y0, t - 0.5)  # same start state, drive phase differs
    assert np.max(np.abs(total - shifted)) > 1e-2


def test_simulate_and_systems_reject_bad_input():
    with pytest.raises(ValueError, match="y0 must be \\(n, 2\\)"):
        simulate(Pendulum(), np.zeros((3, 3)), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="strictly increasing"):
        simulate(Pendulum(), np.zeros((3, 2)), np.array([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="stiffness must be > 0"):
        DampedMassSpring(stiffness=0.0)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        Pendulum(damping=-1.0)


def test_datamodule_batches_and_determinism():
    make = lambda **kw: TrajectoryDataModule(  # noqa: E731
        system="lotka-volterra", n_trajectories=40, t_span=(0.0, 5.0), n_times=11, batch_size=8, **kw
    )
    dm = make(seed=3)
    dm.setup()
    assert dm.sizes == {"train": 32, "val": 4, "test": 4}
    t, y0, y = next(iter(dm.train_dataloader()))
    assert t.shape == (11,) and y0.shape == (8, 2) and y.shape == (11, 8, 2)
    assert t.dtype == y.dtype == torch.float32 and torch.equal(y0, y[0])
    assert torch.allclose(t, torch.linspace(0.0, 5.0, 11))
    same, other = make(seed=3), make(seed=4)
    same.setup()
    other.setup()
    assert torch.equal(same.datasets["train"].observed, dm.datasets["train"].observed)
    assert not torch.equal(other.datasets["train"].observed, dm.datasets["train"].observed)
    invariant = dm.system.first_integral(dm.clean["test"].double().numpy())
    assert np.max(np.abs(invariant - invariant[:, :1])) < 1e-5  # float32 storage


def test_observation_noise_has_the_requested_scale():
    dm = TrajectoryDataModule(
        system=Pendulum(),
        n_trajectories=50,
        n_times=40,
        noise=0.05,
        seed=0,
        dtype="float64",
        val_fraction=0.0,
        test_fraction=0.0,
    )
    dm.setup()
    residual = dm.datasets["train"].observed - dm.clean["train"]
    assert abs(residual.std().item() - 0.05) < 0.003 and abs(residual.mean().item()) < 0.003
    with pytest.raises(ValueError, match="the val split is empty"):
        dm.val_dataloader()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"system": "spring"}, "unknown system 'spring'; choose one of"),
        ({"t_span": (1.0, 1.0)}, "t_span must be"),
        ({"noise": -0.1}, "noise must be >= 0"),
        ({"n_times": 1}, "n_times must be >= 2"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "sum < 1"),
        ({"n_trajectories": 2, "val_fraction": 0.5, "test_fraction": 0.49}, "leaves no training trajectory"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryDataModule(**kwargs)


def test_every_registered_system_simulates():
    for name, cls in SYSTEMS.items():
        dm = TrajectoryDataModule(system=name, n_trajectories=10, n_times=5, t_span=(0.0, 1.0))
        dm.setup()
        assert isinstance(dm.system, cls)
        assert torch.isfinite(dm.datasets["train"].observed).all()
