"""Data sets: the bundled digits, idx files, CIFAR-10 trees and tarballs, batches and augmentation."""

import gzip
import os
import struct
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from momos.data import (CIFAR10_CLASSES, DatasetError, ImageSplit, batches, load_dataset, num_batches,
                        random_crop_flip, read_idx)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOMOS_DATA") or REPO.parent / "shared" / "data")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def shared(path):
    if not (SHARED / path).exists():
        pytest.skip(f"{SHARED / path} is absent (set MOMOS_DATA to the offline data folder)")
    return SHARED


def test_digits_splits():
    data = load_dataset("digits", val_fraction=0.1, split_seed=1)
    assert data.info.shape == (1, 8, 8) and data.info.num_classes == 10
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert len(data.val) == round(0.1 * (len(data.train) + len(data.val)))
    assert data.train.images.dtype == torch.uint8 and int(data.train.images.max()) == 16
    assert data.test.labels.bincount().tolist() == load_dataset("digits").test.labels.bincount().tolist()
    other = load_dataset("digits", val_fraction=0.1, split_seed=2)
    assert not torch.equal(other.val.labels, data.val.labels)
    again = load_dataset("digits", val_fraction=0.1, split_seed=1)
    assert torch.equal(again.val.images, data.val.images)


def test_batches_normalize_shuffle_and_drop_last():
    data = load_dataset("digits")
    x, y = next(batches(data.train, data.info, 4096))
    assert x.shape == (len(data.train), 1, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert torch.equal(y, data.train.labels)                         # no generator: in order
    first = [b[1] for b in batches(data.train, data.info, 100, generator=torch.Generator().manual_seed(0))]
    second = [b[1] for b in batches(data.train, data.info, 100, generator=torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert sorted(torch.cat(first).tolist()) == sorted(data.train.labels.tolist())
    sizes = [len(b[1]) for b in batches(data.train, data.info, 100, drop_last=True)]
    assert set(sizes) == {100} and len(sizes) == num_batches(data.train, 100, drop_last=True) == len(data.train) // 100
    tiny = ImageSplit(data.train.images[:5], data.train.labels[:5])
    assert [len(b[1]) for b in batches(tiny, data.info, 100, drop_last=True)] == [5]


def test_random_crop_flip_is_a_shifted_or_mirrored_crop():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    for image, result in zip(images, out):
        assert torch.equal(result, image) or torch.equal(result, image.flip(-1))
    generator = torch.Generator().manual_seed(1)
    out = random_crop_flip(images, generator, padding=2)
    padded = torch.nn.functional.pad(images, (2,) * 4)
    for image, result in zip(padded, out):
        crops = [image[:, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(result, c) or torch.equal(result, c.flip(-1)) for c in crops)


def idx_bytes(array):
    header = bytes([0, 0, 8, array.dim()]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.numpy().tobytes()


def test_read_idx_and_corrupt_files(tmp_path):
    array = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert torch.equal(torch.from_numpy(read_idx(idx_bytes(array)).copy()), array)
    with pytest.raises(ValueError, match="magic"):
        read_idx(b"\x00\x00\x09\x01" + bytes(8))
    with pytest.raises(ValueError, match="payload"):
        read_idx(idx_bytes(array)[:-1])
    folder = tmp_path / "mnist"
    folder.mkdir()
    stems = {"train-images-idx3-ubyte": array, "train-labels-idx1-ubyte": torch.zeros(3, dtype=torch.uint8),
             "t10k-images-idx3-ubyte": array, "t10k-labels-idx1-ubyte": torch.zeros(3, dtype=torch.uint8)}
    for stem, values in stems.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(values)))
    with pytest.warns(UserWarning, match=r"mnist/train-images-idx3-ubyte.gz: not the original mnist") as caught:
        data = load_dataset("mnist", tmp_path, val_fraction=0.34, download=False)
    assert len(caught) == 4                                           # one per file of unknown content
    assert data.train.images.shape == (2, 1, 4, 5) and len(data.val) == 1 and len(data.test) == 3
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path, download=False)


def test_missing_data_set_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MOMOS_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetError, match="env/fashion-mnist"):
        load_dataset("fashion-mnist", download=False)
    with pytest.raises(DatasetError, match="cifar10_jpg.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("svhn")


def write_tree(root, per_class=2):
    from PIL import Image

    for split in ("train", "test"):
        for label in CIFAR10_CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (40 * i + 10,) * 3).save(folder / f"{i:04d}.jpg", quality=95)


def test_cifar10_from_an_image_tree_and_its_tarball(tmp_path):
    write_tree(tmp_path / "tree")
    from_tree = load_dataset("cifar10", tmp_path / "tree", val_fraction=0.2, download=False)
    assert from_tree.train.images.shape[1:] == (3, 32, 32) and len(from_tree.test) == 20
    assert from_tree.test.labels.tolist() == [label for label in range(10) for _ in range(2)]
    assert abs(int(from_tree.test.images[1, 0, 5, 5]) - 50) <= 2      # JPEG round trip
    with tarfile.open(tmp_path / "cifar10_jpg.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "tree" / "train", arcname="train")
        archive.add(tmp_path / "tree" / "test", arcname="test")
    for source in (tmp_path, tmp_path / "cifar10_jpg.tar.gz"):
        from_tar = load_dataset("cifar10", source, val_fraction=0.2, download=False)
        assert torch.equal(from_tar.test.images, from_tree.test.images)
        assert torch.equal(from_tar.train.labels, from_tree.train.labels)
    (tmp_path / "tree" / "test" / "dragon").mkdir()
    (tmp_path / "tree" / "test" / "dragon" / "0000.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="dragon"):
        load_dataset("cifar10", tmp_path / "tree", download=False)
    (tmp_path / "tree" / "test" / "dragon" / "0000.jpg").unlink()
    (tmp_path / "tree" / "test" / "dragon").rmdir()
    (tmp_path / "tree" / "test" / "bird" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot decode test/bird/0000.jpg"):
        load_dataset("cifar10", tmp_path / "tree", download=False)


def test_a_cifar10_tree_needs_all_ten_classes(tmp_path):
    """Labels come from folder names: a tree lacking classes is not CIFAR-10 (nor trained as it)."""
    write_tree(tmp_path, per_class=1)
    for image in (tmp_path / "train" / "ship").iterdir():
        image.unlink()
    (tmp_path / "train" / "ship").rmdir()
    with pytest.raises(DatasetError, match="train/ has no images of the CIFAR-10 classes ship;"):
        load_dataset("cifar10", tmp_path, download=False)


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    import torchvision

    def offline(root, train, download):
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)   # as torchvision does first
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetError, match="downloading it failed .no network"):
        load_dataset("mnist", tmp_path / "new" / "data")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError):
        load_dataset("mnist", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "notes.txt"]   # what was there stays


def test_a_folder_of_the_other_idx_data_set_is_refused():
    """Fashion-MNIST's files have MNIST's names and shapes: only their content tells them apart."""
    fashion = shared("fashion-mnist") / "fashion-mnist"
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz is fashion-mnist's train-images-idx3-ubyte, "
                                           r"not mnist's"):
        load_dataset("mnist", fashion, download=False)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_offline_idx_data_sets(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # the originals: no unknown content
        data = load_dataset(name, shared(name), download=False)
    assert data.info.shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (57000, 3000, 10000)
    train_counts = (data.train.labels.bincount() + data.val.labels.bincount()).tolist()
    expected = (MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS) if name == "mnist" else ([6000] * 10, [1000] * 10)
    assert (train_counts, data.test.labels.bincount().tolist()) == expected
    assert int(data.train.images.min()) == 0 and int(data.train.images.max()) == 255


def test_offline_cifar10_tarball():
    data = load_dataset("cifar10", shared("cifar10-jpeg/cifar10_jpg.tar.gz"), download=False)
    assert data.info.shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (47500, 2500, 10000)
    assert (data.train.labels.bincount() + data.val.labels.bincount()).tolist() == [5000] * 10
    assert data.test.labels.bincount().tolist() == [1000] * 10
    assert data.train.images.dtype == torch.uint8 and int(data.train.images.max()) == 255
    x, _ = next(batches(data.train, data.info, 2048, generator=torch.Generator().manual_seed(0)))
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
