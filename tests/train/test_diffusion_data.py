"""normalization="diffusion" of the image DataModules: pixels to [-1, 1], flips as the only augmentation."""

import pytest
import torch

from pynodeta.data import DigitsDataModule, RandomHorizontalFlip


def test_digits_pixels_map_to_minus_one_one():
    data = DigitsDataModule(normalization="diffusion", augment=True)
    data.setup()
    x, _ = data.train_set[0]
    torch.testing.assert_close(x, data.train_set.images[0].float() / 8 - 1)  # 2·p/16 − 1
    assert data.augmentation is None  # digits are not mirror-symmetric: no flips unless asked


def test_flips_only_where_asked():
    data = DigitsDataModule(normalization="diffusion", augment=True, hflip=True)
    data.setup()
    assert isinstance(data.augmentation, RandomHorizontalFlip)


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="normalization must be 'dataset' or 'diffusion'"):
        DigitsDataModule(normalization="minus_one_one")
