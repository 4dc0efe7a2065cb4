"""Class-labelled image folders and EDM2's ImageNet centre crop (NVlabs/edm2 dataset_tool.py, center_crop_imagenet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pynodeta.data import DatasetFileError, DatasetNotFoundError, ImageFolder, ImageFolderDataModule
from pynodeta.data.image_folder import ImageFolderDataset, center_crop_imagenet, flipped_index

from .latent_fixtures import write_jpeg_folders


def _column_blocks(width: int, height: int, block: int) -> Image.Image:
    """Column c holds the value c // block in every row and channel."""
    row = (np.arange(width) // block).astype(np.uint8)
    return Image.fromarray(np.repeat(np.broadcast_to(row, (height, width))[:, :, None], 3, axis=2).copy())


def test_the_crop_halves_with_a_box_filter_then_cuts_the_centre():
    # 256 x 128 at resolution 32: the short side 128 >= 64 and 64 >= 64 give two box halvings (64 x 32, each
    # output column the mean of one 4-column block, so the block's value); 32 < 64 stops; the bicubic resize to a
    # short side of 32 keeps 64 x 32; the centre cut keeps columns (64 - 32) // 2 = 16 .. 47.
    out = center_crop_imagenet(_column_blocks(256, 128, 4), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], np.broadcast_to(np.arange(16, 48, dtype=np.uint8), (32, 32)))
    # a tall image is cut in the vertical centre the same way
    tall = center_crop_imagenet(_column_blocks(256, 128, 4).transpose(Image.Transpose.TRANSPOSE), 32)
    np.testing.assert_array_equal(tall[:, :, 0], out[:, :, 0].T)


def test_the_crop_resizes_the_short_side_to_the_resolution():
    # 37 x 90: 37 >= 32 halves once to 18 x 45; bicubic to round(18·16/18) x round(45·16/18) = 16 x 40; rows 12..27
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 37, 3), dtype=np.uint8))
    resized = image.resize((18, 45), Image.Resampling.BOX).resize((16, 40), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(center_crop_imagenet(image, 16), np.asarray(resized)[12:28])
    with pytest.raises(ValueError, match="resolution must be an integer >= 1"):
        center_crop_imagenet(image, 0)


def test_labels_follow_the_sorted_folder_names(tmp_path):
    root = write_jpeg_folders(tmp_path / "train", classes=("n02", "n01", "b03"), per_class=2)
    (root / "n01" / "notes.txt").write_text("not an image")
    (root / "n02" / "sub").mkdir()
    Image.new("RGB", (20, 20)).save(root / "n02" / "sub" / "deep.png")
    folder = ImageFolder.scan(root)
    assert folder.classes == ("b03", "n01", "n02")
    relative = [p.relative_to(root).as_posix() for p in folder.paths]
    assert relative == ["b03/img0.JPEG", "b03/img1.JPEG", "n01/img0.JPEG", "n01/img1.JPEG", "n02/img0.JPEG",
                        "n02/img1.JPEG", "n02/sub/deep.png"]
    assert folder.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("content", ["nothing", "a text file", "a folder without images"])
def test_a_folder_without_images_is_no_class_as_in_edm2(tmp_path, content):
    # edm2's dataset_tool numbers the sorted top-level folders of the images it found
    for name, count in (("a", 2), ("b_empty", 0), ("c", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    if content == "a text file":
        (tmp_path / "b_empty" / "notes.txt").write_text("not an image")
    elif content == "a folder without images":
        (tmp_path / "b_empty" / "sub").mkdir()
    folder = ImageFolder.scan(tmp_path)
    assert folder.classes == ("a", "c")
    assert folder.labels.tolist() == [0, 0, 1, 1, 1]


def test_missing_or_loose_images_are_refused(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        ImageFolder.scan(tmp_path / "nowhere")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError):
        ImageFolder.scan(tmp_path / "empty")
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "loose.png")
    with pytest.raises(DatasetFileError, match="outside class folders"):
        ImageFolder.scan(tmp_path / "empty")


def test_flipped_index_doubles_the_data_as_edm2():
    assert [flipped_index(i, 3, True) for i in range(6)] == [(0, False), (1, False), (2, False), (0, True),
                                                               (1, True), (2, True)]
    with pytest.raises(IndexError):
        flipped_index(3, 3, False)


def test_the_image_folder_datamodule_yields_cropped_images_in_minus_one_one_with_labels(tmp_path):
    root = write_jpeg_folders(tmp_path / "train", per_class=3)
    data = ImageFolderDataModule(root, resolution=16, batch_size=4, val_size=3, xflip=True)
    data.setup("fit")
    assert data.num_classes == 3 and len(data.train_set) == 2 * 6 and len(data.val_set) == 3
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert sorted(data.val_set.labels.tolist()) == [0, 1, 2]  # one held-out image per class
    dataset = ImageFolderDataset(ImageFolder.scan(root), 16, xflip=True)
    image, label = dataset[1]
    mirrored, mirrored_label = dataset[1 + 9]
    torch.testing.assert_close(mirrored, image.flip(-1))
    assert label == mirrored_label == 0
