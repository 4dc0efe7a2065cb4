"""The offline default dataset, the seeded splits and the augmentation hook inside a Trainer."""

import lightning
import numpy as np
import pytest
import torch

from pynodeta.data import DigitsDataModule, EpochShuffleSampler, stratified_split


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup()
    return dm


def test_stratified_split_partitions_and_keeps_class_shares():
    labels = np.repeat(np.arange(5), [40, 30, 20, 6, 4])
    kept, held = stratified_split(labels, 25, seed=3)
    assert len(held) == 25 and len(kept) == 75
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    counts = np.bincount(labels[held], minlength=5)
    assert np.all(np.abs(counts - 25 * np.array([40, 30, 20, 6, 4]) / 100) <= 1)
    again = stratified_split(labels, 25, seed=3)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(stratified_split(labels, 25, seed=4)[1], held)
    with pytest.raises(ValueError, match="held-out size"):
        stratified_split(labels, 100, seed=0)


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_split_sizes_shapes_and_dtypes(digits):
    assert digits.split_sizes == {"train": 1257, "val": 180, "test": 360}
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(torch.bincount(digits.test_set.labels).tolist()) <= {35, 36, 37}
    assert torch.bincount(digits.val_set.labels).tolist() == [18] * 10


def test_normalised_with_train_statistics(digits):
    train = torch.stack([digits.train_set[i][0] for i in range(len(digits.train_set))])
    assert abs(train.mean().item()) < 1e-5 and abs(train.std().item() - 1) < 1e-3
    raw = digits.train_set.images.double() / 16
    assert torch.allclose(digits.mean.double(), raw.mean().reshape(1), atol=1e-6)


def test_splits_cover_every_image_once(digits):
    from sklearn.datasets import load_digits

    parts = [digits.train_set.images, digits.val_set.images, digits.test_set.images]
    ours = sorted(row.tobytes() for part in parts for row in part.reshape(len(part), -1).numpy())
    ref = torch.from_numpy(load_digits().images).to(torch.uint8)
    assert ours == sorted(row.tobytes() for row in ref.reshape(1797, -1).numpy())
    assert not torch.equal(parts[2], ref[:360, None])  # the test split is drawn, not the first rows


def test_seed_changes_order_but_not_the_split():
    a, b, c = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.test_set.images, c.test_set.images)  # split_seed fixed
    first = lambda dm: next(iter(dm.train_dataloader()))[1]  # noqa: E731
    assert torch.equal(first(a), first(b)) and not torch.equal(first(a), first(c))
    d = DigitsDataModule(split_seed=1)
    d.setup()
    assert not torch.equal(a.test_set.images, d.test_set.images)


def test_val_size_zero_validates_on_the_test_set():
    dm = DigitsDataModule(val_size=0)
    dm.setup()
    assert dm.split_sizes == {"train": 1437, "val": 360, "test": 360}
    assert dm.val_set is dm.test_set


def test_batches_do_not_depend_on_the_number_of_workers():
    batches = []
    for workers in (0, 2):
        dm = DigitsDataModule(batch_size=256, num_workers=workers, seed=5)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(3)
        batches.append([y for _, y in loader])
    assert all(torch.equal(a, b) for a, b in zip(*batches, strict=True))


def test_augmentation_shifts_by_at_most_one_pixel_with_background_fill():
    dm = DigitsDataModule(augment=True, seed=0)
    dm.setup()
    x = torch.stack([dm.train_set[i][0] for i in range(32)])
    out = dm.apply_augmentation(x)
    background = -dm.mean / dm.std  # a zero pixel after normalisation
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=float(background))
    windows = [padded[:, :, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
    assert all(any(torch.equal(o, w[k]) for w in windows) for k, o in enumerate(out))
    state = dm.state_dict()
    replay = DigitsDataModule(augment=True, seed=0)
    replay.setup()
    replay.load_state_dict(state)
    assert torch.equal(
        dm.apply_augmentation(x), replay.apply_augmentation(x)
    )  # generator state restored from a checkpoint


class Recorder(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return torch.nn.functional.cross_entropy(self.linear(batch[0].flatten(1)), batch[1])

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_augments_training_batches_only(tmp_path):
    dm = DigitsDataModule(batch_size=16, augment=True, seed=0)
    model = Recorder()
    trainer = lightning.Trainer(
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        val_check_interval=2,
    )
    trainer.fit(model, datamodule=dm)
    plain = next(iter(dm.train_dataloader()))[0]
    assert not torch.equal(model.seen["train"][0], plain)  # augmented
    assert torch.equal(model.seen["val"][0], next(iter(dm.val_dataloader()))[0])  # untouched
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["DigitsDataModule"]
    assert torch.equal(saved["augment_generator"], dm._generator.get_state())  # resumable augmentation


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="test_size \\+ val_size must be < 1797"):
        DigitsDataModule(val_size=1000, test_size=900).setup()
    with pytest.raises(RuntimeError, match="setup\\(\\) must run"):
        DigitsDataModule().train_dataloader()
