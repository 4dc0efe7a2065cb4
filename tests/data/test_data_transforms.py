"""The batched augmentations: exact effects, per-sample randomness, determinism under a seed."""

import pytest
import torch

from pynodeta.data import Compose, RandomCrop, RandomErasing, RandomHorizontalFlip


def images(batch=16, channels=3, size=12):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(123))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_extremes_are_exact():
    x = images()
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x, gen()), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x, gen()), x)


def test_flip_chooses_per_sample():
    x = images(batch=64)
    y = RandomHorizontalFlip(p=0.5)(x, gen())
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(y, x, strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x, strict=True)])
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54


def test_crop_without_padding_is_identity():
    x = images()
    assert torch.equal(RandomCrop(padding=0)(x, gen()), x)


def find_shift(out, original, padding, fill):
    """The (dy, dx) for which out is original translated with uncovered pixels = fill, else None."""
    _, height, width = original.shape
    for dy in range(-padding, padding + 1):
        for dx in range(-padding, padding + 1):
            expected = fill.expand_as(original).clone()
            ys, yd = slice(max(0, dy), height + min(0, dy)), slice(max(0, -dy), height + min(0, -dy))
            xs, xd = slice(max(0, dx), width + min(0, dx)), slice(max(0, -dx), width + min(0, -dx))
            expected[:, yd, xd] = original[:, ys, xs]
            if torch.equal(out, expected):
                return dy, dx
    return None


def test_crop_is_a_translation_with_fill():
    x, fill = images(batch=32), torch.tensor([-1.0, 5.0, 7.0])
    out = RandomCrop(padding=2, fill=fill.tolist())(x, gen(3))
    shifts = [find_shift(o, xi, 2, fill.reshape(3, 1, 1)) for o, xi in zip(out, x, strict=True)]
    assert all(s is not None for s in shifts)
    assert len(set(shifts)) > 5  # offsets are drawn per sample
    assert {s[0] for s in shifts} <= set(range(-2, 3))


def test_erasing_blanks_one_rectangle_of_the_right_size():
    x = images(batch=64, size=32).abs() + 1.0  # strictly positive, so erased pixels (0) stand out
    out = RandomErasing(p=1.0, scale=(0.04, 0.2), ratio=(0.5, 2.0), value=0.0)(x, gen(1))
    for sample in out:
        erased = sample[0] == 0
        assert torch.equal(erased.expand_as(sample), sample == 0)  # same rectangle in every channel
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert int(erased.sum()) == h * w  # a full rectangle
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        # area is drawn from scale * 1024 and rounded per side, aspect from ratio
        assert 0.04 * 1024 * 0.7 <= h * w <= 0.2 * 1024 * 1.3
        assert 0.5 * 0.7 <= h / w <= 2.0 * 1.3


def test_erasing_probability_zero_and_value_per_channel():
    x = images()
    assert torch.equal(RandomErasing(p=0.0)(x, gen()), x)
    out = RandomErasing(p=1.0, value=[7.0, 8.0, 9.0])(x, gen())
    changed = out != x
    assert bool(changed.any())
    for c, v in enumerate([7.0, 8.0, 9.0]):
        assert bool((out[:, c][changed[:, c]] == v).all())


def test_compose_is_deterministic_under_a_seed_and_keeps_shape():
    augment = Compose([RandomHorizontalFlip(), RandomErasing(), RandomCrop(4)])
    x = images(batch=8, size=32)
    a, b, c = augment(x, gen(5)), augment(x, gen(5)), augment(x, gen(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: RandomHorizontalFlip(p=1.5), "p must be in"),
        (lambda: RandomCrop(padding=-1), "padding must be >= 0"),
        (lambda: RandomErasing(scale=(0.3, 0.1)), "scale must satisfy"),
        (lambda: RandomErasing(ratio=(0.0, 2.0)), "ratio must satisfy"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_wrong_input_rank_and_fill_size():
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        RandomHorizontalFlip()(torch.zeros(3, 8, 8), gen())
    with pytest.raises(ValueError, match="one value per channel"):
        RandomCrop(2, fill=[0.0, 1.0])(images(), gen())
