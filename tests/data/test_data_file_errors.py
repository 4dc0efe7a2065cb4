"""Tampered, corrupt and inconsistent dataset files are refused with an error naming the file.

The files are written in each dataset's real format (see test_data_image_files), then altered.
"""

import builtins
import gzip
import pickle

import numpy as np
import pytest
from scipy.io import savemat

from pynodeta.data import DatasetFileError
from pynodeta.data.readers import read_cifar10, read_cifar100, read_mnist, read_svhn, read_tiny_imagenet

from .test_data_image_files import (
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_mnist,
    write_svhn,
    write_tiny_imagenet,
)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _rewrite_cifar(tmp_path, edit, name="test_batch"):
    path = tmp_path / "cifar-10-batches-py" / name
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="bytes")  # our own freshly written test file
    edit(entry)
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)
    return path


def test_a_tampered_cifar_batch_runs_no_code(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    path = _rewrite_cifar(tmp_path, lambda entry: entry.update({b"batch_label": _RunsCode(marker)}))
    with pytest.raises(DatasetFileError, match="the pickle names (__builtin__|builtins).exec") as info:
        read_cifar10(tmp_path, train=False)
    assert not marker.exists() and info.value.path == path


def test_real_format_cifar_batches_still_load(tmp_path):
    written = write_cifar10(tmp_path)
    images, labels = read_cifar10(tmp_path, train=False)
    assert np.array_equal(images.numpy(), written["test_batch"][0])
    assert labels.tolist() == written["test_batch"][1]
    written = write_cifar100(tmp_path)
    assert read_cifar100(tmp_path, train=True)[1].tolist() == written["train"][1]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update({b"labels": e[b"labels"][:-1]}), "holds 6 images but 5 labels"),
        (lambda e: e.pop(b"labels"), "has no 'labels' entry"),
        (lambda e: e.update({b"data": e[b"data"].astype(np.int32) + 200}), "pixels must lie in 0..255"),
        (lambda e: e.update({b"data": e[b"data"].astype(np.float32)}), "8-bit integer pixels"),
        (lambda e: e.update({b"data": e[b"data"][:, :3000]}), "shape \\(n, 3072\\)"),
        (lambda e: e.update({b"labels": [10] * 6}), "'labels' must lie in 0..9"),
    ],
)
def test_inconsistent_cifar_batches_are_refused(tmp_path, edit, message):
    write_cifar10(tmp_path)
    path = _rewrite_cifar(tmp_path, edit, "data_batch_3")
    with pytest.raises(DatasetFileError, match=message) as info:
        read_cifar10(tmp_path, train=True)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_truncated_or_garbage_cifar_pickles_name_the_file(tmp_path, cut):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = path.read_bytes()
    path.write_bytes(b"garbage" * 3 if cut == 0 else raw[: int(cut * len(raw)) if cut < 1 else cut])
    with pytest.raises(DatasetFileError, match="truncated or not a CIFAR python batch") as info:
        read_cifar10(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_a_cifar_batch_that_is_not_a_dict_is_refused(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DatasetFileError, match="holds a list; expected a CIFAR python batch"):
        read_cifar10(tmp_path, train=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00", "shorter than the 4-byte IDX header"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
    ],
)
def test_short_idx_headers_name_the_file(tmp_path, content, message):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(content)
    with pytest.raises(DatasetFileError, match=message) as info:
        read_mnist(tmp_path, train=False)
    assert "t10k-labels-idx1-ubyte" in str(info.value)


def test_bad_gzip_names_the_file(tmp_path):
    write_mnist(tmp_path, compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])  # a truncated gzip stream
    with pytest.raises(DatasetFileError, match="gzip-compressed IDX") as info:
        read_mnist(tmp_path, train=False)
    assert str(path) in str(info.value)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFileError, match="gzip-compressed IDX"):
        read_mnist(tmp_path, train=False)


def test_mnist_label_count_must_match_the_images(tmp_path):
    write_mnist(tmp_path, compress=False, n=20)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, dtype=np.uint8)))
    with pytest.raises(DatasetFileError, match="holds 19 labels but .*t10k-images-idx3-ubyte holds 20 images"):
        read_mnist(tmp_path, train=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(20, 12, dtype=np.uint8)))
    with pytest.raises(DatasetFileError, match="'labels' must lie in 0..9"):
        read_mnist(tmp_path, train=False)


@pytest.mark.parametrize(
    ("mat", "message"),
    [
        (lambda x, y: {"X": x.astype(np.float64) / 255, "y": y}, "'X' must be 8-bit integer pixels"),
        (lambda x, y: {"X": x, "y": y[:-1]}, "holds 20 images but 19 labels"),
        (lambda x, y: {"X": x}, "has no y variable"),
        (lambda x, y: {"X": x, "y": y - 1}, "'y' must lie in 1..10"),
        (lambda x, y: {"X": x.astype(np.int16) * 2, "y": y}, "pixels must lie in 0..255"),
    ],
)
def test_svhn_wrong_dtype_range_or_length_is_refused(tmp_path, mat, message):
    written = write_svhn(tmp_path)
    images, labels = written["test"]
    path = tmp_path / "test_32x32.mat"
    savemat(path, mat(images.transpose(2, 3, 1, 0), labels[:, None].astype(np.uint8)))
    with pytest.raises(DatasetFileError, match=message) as info:
        read_svhn(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_a_broken_mat_file_names_the_file(tmp_path):
    write_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetFileError, match="cannot be read as a MATLAB file") as info:
        read_svhn(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_a_broken_jpeg_names_the_file(tmp_path):
    write_tiny_imagenet(tmp_path)
    path = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetFileError, match="is not a readable JPEG image") as info:
        read_tiny_imagenet(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_tiny_imagenet_annotations_must_cover_every_image(tmp_path):
    write_tiny_imagenet(tmp_path)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    annotations.write_text("\n".join(lines[:-1]) + "\n")  # the last image loses its label
    with pytest.raises(DatasetFileError, match="labels 5 images .* holds 6 JPEGs; unlabelled: \\['val_5.JPEG'\\]"):
        read_tiny_imagenet(tmp_path, train=False)
    annotations.write_text("val_0.JPEG n02\n")
    with pytest.raises(DatasetFileError, match="line 1 is"):
        read_tiny_imagenet(tmp_path, train=False)


def test_gzip_idx_round_trip_still_loads(tmp_path):
    written = write_mnist(tmp_path, compress=True)
    images, labels = read_mnist(tmp_path, train=True)
    assert np.array_equal(images[:, 0].numpy(), written["train"][0])
    assert np.array_equal(labels.numpy(), written["train"][1])
    assert gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"
