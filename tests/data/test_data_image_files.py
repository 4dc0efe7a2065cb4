"""Each loader reads tiny files written in its dataset's exact on-disk format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from scipy.io import savemat

from pynodeta.data import DATASETS, DatasetNotFoundError, get_datamodule


def random_images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar10(root, n_per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = random_images(n_per_batch, (3, 32, 32), seed=i)
        labels = [int(v) for v in np.random.default_rng(100 + i).integers(0, 10, n_per_batch)]
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images.reshape(n_per_batch, 3072),
            b"filenames": [f"{j}.png".encode() for j in range(n_per_batch)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f, protocol=2)  # the real files are Python 2 pickles with bytes keys
        written[name] = (images, labels)
    return written


def write_cifar100(root, n=20):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(["train", "test"]):
        images = random_images(n, (3, 32, 32), seed=10 + i)
        fine = [int(v) for v in np.random.default_rng(i).integers(0, 100, n)]
        entry = {
            b"filenames": [],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": images.reshape(n, 3072),
        }
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (images, fine)
    return written


def idx_bytes(array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, compress, n=20):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        images = random_images(n, (28, 28), seed=len(prefix))
        labels = np.random.default_rng(len(prefix)).integers(0, 10, n).astype(np.uint8)
        for kind, array in [("images-idx3", images), ("labels-idx1", labels)]:
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, labels)
    return written


def write_svhn(root, n=20):
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in ["train", "test"]:
        images = random_images(n, (3, 32, 32), seed=len(split))
        labels = np.random.default_rng(len(split)).integers(1, 11, n)  # 1..10, 10 meaning digit 0
        labels[:2] = 10
        mat = {"X": images.transpose(2, 3, 1, 0), "y": labels[:, None].astype(np.uint8)}  # X: (H, W, C, N)
        savemat(root / f"{split}_32x32.mat", mat)
        written[split] = (images, labels)
    return written


def write_tiny_imagenet(root, wnids=("n02", "n01", "n03"), per_class=5):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colors = {w: (40 * k + 20, 200 - 50 * k, 90) for k, w in enumerate(sorted(wnids))}
    for w in wnids:
        (folder / "train" / w / "images").mkdir(parents=True)
        for j in range(per_class):
            mode = "L" if j == 0 else "RGB"  # a few real images are greyscale
            Image.new(mode, (64, 64), colors[w] if mode == "RGB" else 128).save(
                folder / "train" / w / "images" / f"{w}_{j}.JPEG"
            )
    lines = []
    for j, w in enumerate(list(wnids) * 2):
        Image.new("RGB", (64, 64), colors[w]).save(folder / "val" / "images" / f"val_{j}.JPEG")
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return colors


def unnormalise(dm, x):
    return x * dm.std.reshape(-1, 1, 1) + dm.mean.reshape(-1, 1, 1)


def check_batches(dm, n_classes, shape):
    assert dm.num_classes == n_classes and dm.input_shape == shape
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape[1:] == shape and x.dtype == torch.float32 and y.dtype == torch.int64
    x, _ = next(iter(dm.train_dataloader()))
    out = dm.apply_augmentation(x)
    assert out.shape == x.shape


def test_cifar10_pickles(tmp_path):
    written = write_cifar10(tmp_path)
    dm = get_datamodule("cifar10", data_dir=tmp_path, batch_size=4, val_size=5)
    dm.setup()
    check_batches(dm, 10, (3, 32, 32))
    assert dm.split_sizes == {"train": 25, "val": 5, "test": 6}
    images, labels = written["test_batch"]
    assert torch.equal(dm.test_set.images, torch.from_numpy(images))  # channel planes in R, G, B order
    assert dm.test_set.labels.tolist() == labels
    x, y = dm.test_set[2]
    assert torch.allclose(unnormalise(dm, x) * 255, torch.from_numpy(images[2]).float(), atol=1e-3)
    pool = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    ours = torch.cat([dm.train_set.images, dm.val_set.images]).reshape(30, -1).numpy()
    assert sorted(map(bytes, ours)) == sorted(map(bytes, pool.reshape(30, -1)))


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    dm = get_datamodule("cifar100", data_dir=str(tmp_path), batch_size=8, val_size=4, normalization="dataset")
    dm.setup()
    check_batches(dm, 100, (3, 32, 32))
    assert dm.test_set.labels.tolist() == written["test"][1]
    assert torch.allclose(dm.mean, torch.tensor([0.5071, 0.4865, 0.4409]))


@pytest.mark.parametrize("layout, compress", [("raw", False), ("raw", True), ("flat", False), ("flat", True)])
def test_mnist_idx_files_in_both_layouts(tmp_path, layout, compress):
    written = write_mnist(tmp_path / "MNIST" / "raw" if layout == "raw" else tmp_path, compress)
    dm = get_datamodule("mnist", data_dir=tmp_path, batch_size=8, val_size=4)
    dm.setup()
    check_batches(dm, 10, (1, 28, 28))
    images, labels = written["test"]
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(images))
    assert dm.test_set.labels.tolist() == labels.tolist()


def test_mnist_rejects_a_file_that_is_not_idx(tmp_path):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(10))
    dm = get_datamodule("mnist", data_dir=tmp_path, val_size=4)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        dm.setup()


def test_svhn_mat_files_map_label_10_to_0(tmp_path):
    written = write_svhn(tmp_path)
    dm = get_datamodule("svhn", data_dir=tmp_path, batch_size=8, val_size=4)
    dm.setup()
    check_batches(dm, 10, (3, 32, 32))
    images, labels = written["test"]
    assert torch.equal(dm.test_set.images, torch.from_numpy(images))  # (H, W, C, N) -> (N, C, H, W)
    assert dm.test_set.labels.tolist() == [0 if v == 10 else int(v) for v in labels]
    assert dm.test_set.labels[:2].tolist() == [0, 0]


def test_tiny_imagenet_jpeg_tree(tmp_path):
    colors = write_tiny_imagenet(tmp_path)
    dm = get_datamodule("tiny-imagenet", data_dir=tmp_path, batch_size=4, val_size=3)
    dm.setup()
    check_batches(dm, 200, (3, 64, 64))
    assert dm.split_sizes == {"train": 12, "val": 3, "test": 6}
    # labels index the sorted wnids; val labels come from val_annotations.txt
    assert dm.test_set.labels.tolist() == [1, 0, 2, 1, 0, 2]
    for image, label in zip(dm.test_set.images, dm.test_set.labels, strict=True):
        mean_rgb = image.float().mean(dim=(1, 2))
        expected = torch.tensor(colors[sorted(colors)[label]], dtype=torch.float32)
        assert torch.allclose(mean_rgb, expected, atol=3)  # JPEG is lossy


def test_augmentation_is_deterministic_under_a_seed(tmp_path):
    write_cifar10(tmp_path)
    outs = []
    for seed in (0, 0, 1):
        dm = get_datamodule("cifar10", data_dir=tmp_path, val_size=5, seed=seed)
        dm.setup()
        outs.append(dm.apply_augmentation(dm.val_set.images.float() / 255))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", ["cifar-10-batches-py/data_batch_1", "cifar-10-python.tar.gz"]),
        ("cifar100", ["cifar-100-python/train", "cifar-100-python.tar.gz"]),
        ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "mnist"]),
        ("svhn", ["train_32x32.mat", "test_32x32.mat", "ufldl.stanford.edu/housenumbers"]),
        ("tiny-imagenet", ["tiny-imagenet-200/wnids.txt", "val_annotations.txt", "tiny-imagenet-200.zip"]),
    ],
)
def test_missing_data_says_what_to_put_where(tmp_path, name, expected):
    dm = get_datamodule(name, data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    for fragment in expected:
        assert fragment in message


def test_partial_cifar_lists_only_the_missing_batch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as info:
        get_datamodule("cifar10", data_dir=tmp_path).setup()
    assert "data_batch_2\n" not in str(info.value)


def test_registry_names_and_errors(tmp_path):
    assert list(DATASETS) == ["digits", "cifar10", "cifar100", "mnist", "svhn", "tiny-imagenet"]
    valid = "digits, cifar10, cifar100, mnist, svhn, tiny-imagenet"
    with pytest.raises(ValueError, match=f"unknown dataset 'cifar'; valid names: {valid}"):
        get_datamodule("cifar")
    with pytest.raises(ValueError, match="normalization must be one of"):
        get_datamodule("svhn", normalization="imagenet")
    write_svhn(tmp_path)
    with pytest.raises(ValueError, match="val_size must be smaller than the training pool \\(20 images\\)"):
        get_datamodule("svhn", data_dir=tmp_path).setup()
