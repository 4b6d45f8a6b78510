"""Image-classification data sets held in memory as uint8 tensors, with the paper's preprocessing.

    data = load_dataset("fashion-mnist", data_dir="data", val_fraction=0.05, split_seed=0)
    for x, y in batches(data.train, data.info, 128, generator=g, augment=False):
        ...   # x: (B, C, H, W) float32, normalized per data set; y: (B,) int64

``digits`` (scikit-learn's bundled 8x8 digits) needs no files. ``mnist``, ``fashion-mnist``
and ``cifar10`` are read from a data directory (``data_dir``, else the ``MOMOS_DATA``
environment variable, else ``~/.cache/momos/data``) and downloaded there through torchvision
when they are missing and ``download`` is true. CIFAR-10 is read from the original python
batches, from an ImageFolder tree of images (``train|test/<class>/*.jpg``) or from a tarball
of such a tree.

Nothing wrong is read silently: MNIST and Fashion-MNIST idx files are checked against the
SHA-256 of their original content (decompressed, since equal content may come in different
``.gz`` wrappers): the other data set's file is an error, content of unknown origin a warning.
A CIFAR-10 tree must hold exactly the ten class folders. A failed download leaves no empty
folders behind.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# digits has no official test split; this fixed share of it plays that role.
DIGITS_TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A data set that is unknown, missing or unreadable; the message says what was looked for where."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the preprocessing need to know about a data set."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]     # (C, H, W) of one image
    mean: tuple[float, ...]         # per channel, of pixel / pixel_max
    std: tuple[float, ...]
    pixel_max: float                # the largest raw pixel value (255, or 16 for digits)
    augment: bool                   # the paper trains this data set with crop + flip


INFOS = {
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.3053,), (0.3760,), 16.0, False),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), 255.0, False),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), 255.0, False),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), 255.0, True),
}


@dataclass
class ImageSplit:
    images: torch.Tensor   # (N, C, H, W) uint8
    labels: torch.Tensor   # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index])


@dataclass
class Dataset:
    info: DatasetInfo
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    source: str            # where the images were read from


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$MOMOS_DATA``, else ``~/.cache/momos/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("MOMOS_DATA"):
        return Path(os.environ["MOMOS_DATA"]).expanduser()
    return Path.home() / ".cache" / "momos" / "data"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.05,
                 split_seed: int = 0, download: bool = True) -> Dataset:
    """The training, validation and official test splits of a data set.

    The validation split is ``val_fraction`` of the official training split, drawn with a
    generator seeded by ``split_seed`` (independent of the training seed).

    Raises:
        DatasetError: unknown name, or the files are missing (and cannot be downloaded) or corrupt.
        ValueError: ``val_fraction`` outside (0, 1).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if name == "digits":
        train, test, source = _load_digits()
    elif name == "cifar10":
        train, test, source = _load_cifar10(resolve_data_dir(data_dir), download)
    else:
        train, test, source = _load_idx_dataset(name, resolve_data_dir(data_dir), download)
    train, val = split_validation(train, val_fraction, split_seed)
    return Dataset(INFOS[name], train, val, test, source)


def split_validation(split: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """(rest, held out): ``round(fraction * N)`` samples (at least 1) drawn at random with ``seed``."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    count = min(max(1, round(fraction * len(split))), len(split) - 1)
    return split.subset(order[count:].sort().values), split.subset(order[:count].sort().values)


def random_subset(split: ImageSplit, count: int, *, seed: int) -> ImageSplit:
    """``count`` samples of ``split`` drawn at random with ``seed``, in their original order.

    Raises:
        ValueError: ``count`` is not in ``[1, len(split)]``.
    """
    if not 1 <= count <= len(split):
        raise ValueError(f"a subset of {count} images needs 1 to {len(split)} (the training split's size)")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[:count].sort().values)


def batches(split: ImageSplit, info: DatasetInfo, batch_size: int, *,
            generator: torch.Generator | None = None, augment: bool = False, randaugment: bool = False,
            drop_last: bool = False):
    """Yield normalized ``(x, y)`` batches; shuffled and augmented with ``generator`` when given.

    ``drop_last``: skip a final incomplete batch when there is at least one complete one (a
    batch of one sample breaks BatchNorm; with shuffling, other samples fall off every epoch).

    ``augment``: random crop to the image size from a copy padded by 4 + horizontal flip.
    ``randaugment``: RandAugment(2, 9) per image (torchvision; draws from the global torch RNG).
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    for start in range(0, _usable(n, batch_size, drop_last), batch_size):
        index = order[start:start + batch_size]
        images = split.images[index]
        if randaugment:
            images = _randaugment(images)
        if augment:
            images = random_crop_flip(images, generator, padding=4)
        x = (images.float() / info.pixel_max - mean) / std
        yield x, split.labels[index]


def num_batches(split: ImageSplit, batch_size: int, *, drop_last: bool = False) -> int:
    return math.ceil(_usable(len(split), batch_size, drop_last) / batch_size)


def _usable(n: int, batch_size: int, drop_last: bool) -> int:
    return n - n % batch_size if drop_last and n >= batch_size else n


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None, *, padding: int) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the zero-padded image, flipped left-right with probability 1/2.

    images: (B, C, H, W) -> (B, C, H, W).
    """
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(0), cols) + left[:, None]           # (B, W)
    rows = torch.arange(h) + top[:, None]                                             # (B, H)
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _randaugment(images: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms import v2

    transform = v2.RandAugment(num_ops=2, magnitude=9)
    return torch.stack([transform(image) for image in images])


# --- digits -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[ImageSplit, ImageSplit, str]:
    # Cached: scikit-learn parses its bundled file on every call, and the tensors are never modified.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    full = ImageSplit(images, torch.from_numpy(bunch.target.astype(np.int64)))
    train, test = split_validation(full, DIGITS_TEST_FRACTION, seed=0)
    return train, test, "sklearn.datasets.load_digits"


# --- MNIST and Fashion-MNIST (idx files) --------------------------------------------------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# SHA-256 of the decompressed original idx files. The two data sets share file names and shapes,
# so only the content tells an MNIST folder from a Fashion-MNIST one.
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


def _load_idx_dataset(name: str, data_dir: Path, download: bool) -> tuple[ImageSplit, ImageSplit, str]:
    candidates = [data_dir / name, data_dir / _TORCHVISION_FOLDERS[name] / "raw", data_dir]
    folder = next((f for f in candidates if _idx_path(f, _IDX_FILES["train"][0])), None)
    if folder is None and download:
        _download(name, data_dir)
        folder = next((f for f in candidates if _idx_path(f, _IDX_FILES["train"][0])), None)
    if folder is None:
        raise DatasetError(
            f"{name} not found: looked for train-images-idx3-ubyte[.gz] and the other idx files in "
            f"{', '.join(str(f) for f in candidates)}; put the four idx files in {data_dir / name} "
            f"(or point --data-dir / MOMOS_DATA at their parent folder) or allow a download")
    return _read_idx_split(folder, "train", name), _read_idx_split(folder, "test", name), str(folder)


def _read_idx_split(folder: Path, split: str, name: str) -> ImageSplit:
    images_stem, labels_stem = _IDX_FILES[split]
    images, labels = _read_idx_file(folder, images_stem, name), _read_idx_file(folder, labels_stem, name)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: {split} images of shape {tuple(images.shape)} do not match "
                           f"labels of shape {tuple(labels.shape)}")
    return ImageSplit(images.unsqueeze(1), labels.long())


def _idx_path(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(data: bytes) -> np.ndarray:
    """Parse an idx file (uint8 payload): magic ``0 0 8 ndim``, ``ndim`` big-endian sizes, the values."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError("not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    if len(data) - header != math.prod(shape):
        raise ValueError(f"idx payload has {len(data) - header} bytes, shape {shape} needs {math.prod(shape)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_idx_file(folder: Path, stem: str, name: str) -> torch.Tensor:
    """The idx file ``stem`` of data set ``name``, its content checked (:func:`check_idx_content`)."""
    path = _idx_path(folder, stem)
    if path is None:
        raise DatasetError(f"missing {stem}[.gz] in {folder}")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        array = read_idx(raw)
    except (OSError, EOFError, ValueError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    check_idx_content(raw, path, stem, name)
    return torch.from_numpy(array.copy())


def check_idx_content(raw: bytes, path: Path, stem: str, name: str) -> None:
    """Is ``raw`` (decompressed) the original ``stem`` of data set ``name``?

    Raises:
        DatasetError: it is a file of another data set (an MNIST folder given for Fashion-MNIST).
    Warns:
        UserWarning: it is no known original file (a modified or foreign copy); it is used as is.
    """
    digest = hashlib.sha256(raw).hexdigest()
    if digest == IDX_SHA256[name][stem]:
        return
    for other, files in IDX_SHA256.items():
        for other_stem, known in files.items():
            if digest == known:
                raise DatasetError(f"{path} is {other}'s {other_stem}, not {name}'s {stem}: point --data-dir / "
                                   f"MOMOS_DATA at the folder that holds the {name} files")
    warnings.warn(f"{path}: not the original {name} {stem} (unknown SHA-256 {digest[:16]}...); "
                  f"using it as is", stacklevel=2)


# --- CIFAR-10 ------------------------------------------------------------------------------------

def _load_cifar10(data_dir: Path, download: bool) -> tuple[ImageSplit, ImageSplit, str]:
    roots = [data_dir, data_dir / "cifar10", data_dir / "cifar10-jpeg"]
    for root in roots:
        if (root / "cifar-10-batches-py").is_dir():
            return (*_read_cifar10_batches(root), str(root / "cifar-10-batches-py"))
    for root in roots:
        if (root / "train").is_dir() and (root / "test").is_dir():
            return (*_read_image_tree(_files_in_tree(root), root), str(root))
    tarballs = [data_dir] if data_dir.is_file() else [r / "cifar10_jpg.tar.gz" for r in roots]
    for tarball in tarballs:
        if tarball.is_file():
            return (*_read_image_tree(_files_in_tarball(tarball), tarball), str(tarball))
    if download and not data_dir.is_file():
        _download("cifar10", data_dir)
        return (*_read_cifar10_batches(data_dir), str(data_dir / "cifar-10-batches-py"))
    raise DatasetError(
        f"cifar10 not found: looked for cifar-10-batches-py/, an image tree train|test/<class>/*.jpg "
        f"and cifar10_jpg.tar.gz in {', '.join(str(r) for r in roots)}; put one of them there "
        f"(or point --data-dir / MOMOS_DATA at it) or allow a download")


def _read_cifar10_batches(root: Path) -> tuple[ImageSplit, ImageSplit]:
    # torchvision checks every batch file against the official MD5 before reading it.
    from torchvision.datasets import CIFAR10

    splits = []
    for train in (True, False):
        try:
            data = CIFAR10(str(root), train=train, download=False)
        except RuntimeError as error:
            raise DatasetError(f"cannot read CIFAR-10 batches in {root / 'cifar-10-batches-py'}: {error}") from None
        splits.append(ImageSplit(torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous(),
                                 torch.tensor(data.targets, dtype=torch.int64)))
    return splits[0], splits[1]


def _files_in_tree(root: Path):
    """``(relative path, bytes)`` of every image file under ``root``."""
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield path.relative_to(root).as_posix(), path.read_bytes()


def _files_in_tarball(path: Path):
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield member.name, archive.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None


def _read_image_tree(files, source: Path) -> tuple[ImageSplit, ImageSplit]:
    """Decode ``<prefix>/train|test/<class>/<name>`` images; ordered by split, class, file name.

    Both splits must hold images of exactly the ten CIFAR-10 classes: the labels come from the
    folder names, so another tree (CIFAR-100, a subset) would otherwise train as CIFAR-10.
    """
    items = {"train": [], "test": []}
    for name, data in files:
        parts = Path(name).parts
        if len(parts) < 3 or parts[-3] not in items:
            continue
        split, label = parts[-3], parts[-2]
        if label not in CIFAR10_CLASSES:
            raise DatasetError(f"{source}: unknown CIFAR-10 class folder {label!r} ({name}); CIFAR-10's "
                               f"classes are {', '.join(CIFAR10_CLASSES)}")
        items[split].append((CIFAR10_CLASSES.index(label), parts[-1], data))
    result = []
    for split, entries in items.items():
        if not entries:
            raise DatasetError(f"{source}: no images in {split}/<class>/")
        present = {label for label, _, _ in entries}
        missing = [c for label, c in enumerate(CIFAR10_CLASSES) if label not in present]
        if missing:
            raise DatasetError(f"{source}: {split}/ has no images of the CIFAR-10 classes {', '.join(missing)}; "
                               f"a CIFAR-10 tree holds {split}/<class>/ for all ten")
        entries.sort(key=lambda e: (e[0], e[1]))
        images = [_decode_rgb(data, f"{split}/{CIFAR10_CLASSES[label]}/{name}", source)
                  for label, name, data in entries]
        shapes = {i.shape for i in images}
        if shapes != {(32, 32, 3)}:
            raise DatasetError(f"{source}: CIFAR-10 images must be 32x32 RGB, found shapes {sorted(shapes)}")
        result.append(ImageSplit(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                                 torch.tensor([e[0] for e in entries])))
    return result[0], result[1]


def _decode_rgb(data: bytes, name: str, source: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"{source}: cannot decode {name}: {error}") from None


def _download(name: str, data_dir: Path) -> None:
    """Fetch the originals through torchvision into ``data_dir``; a failure becomes a DatasetError
    and removes the empty folders the attempt created."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    new_parents = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
    existing = set(data_dir.iterdir()) if data_dir.is_dir() else set()
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    except Exception as error:  # noqa: BLE001 - any network or disk failure means "not available"
        _remove_empty_folders([p for p in data_dir.iterdir() if p not in existing] if data_dir.is_dir() else [])
        _remove_empty_folders(new_parents)
        raise DatasetError(f"{name} is not in {data_dir} and downloading it failed ({error}); "
                           f"copy the files there or point --data-dir / MOMOS_DATA at them") from None


def _remove_empty_folders(paths: list[Path]) -> None:
    """Remove every empty folder among ``paths`` and beneath them, deepest first; files, and the
    folders that hold them, stay."""
    folders = [f for p in paths if p.is_dir() for f in (*p.rglob("*"), p) if f.is_dir()]
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:   # not empty
            pass
