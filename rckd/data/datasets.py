"""The data sets, read from their sources or from the cache that `rckd prepare` writes.

| name | images | classes | train / test | mean, std (per channel, [0, 1] units) |
|---|---|---|---|---|
| `cifar100` | 3x32x32 | 100 | 50000 / 10000 | the sources' (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761) |
| `fashion_mnist` | 1x28x28 | 10 | 60000 / 10000 | (0.2860,), (0.3530,), measured on the training set |
| `synthetic` | 3x32x32 | K*M (100) | 100 / 20 per class | measured on its training set; with the default |
| | | | | options (0.5025, 0.4821, 0.4761), (0.2432, 0.2000, 0.2024) |
| `imagenet` | 3x224x224 crops | 1000 | 1281167 / 50000 | the customary (0.485, 0.456, 0.406), (0.229, 0.224, 0.225) |

`synthetic` takes the options of `rckd.data.options.SyntheticOptions`, `imagenet` those of
`ImageFolderOptions`; the others take none. `imagenet` (any ImageFolder tree in fact) is streamed
from its files: its splits are `FileSplit`s (`rckd.data.imagefolder`).
CIFAR-100 comes through torchvision (`<root>/cifar-100-python`); Fashion-MNIST from the Debian
package dataset-fashion-mnist when installed, else from torchvision's download in `<root>`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rckd.data import cache, imagefolder, synthetic
from rckd.data.imagefolder import FileSplit
from rckd.data.options import STREAMED, resolve_options
from rckd.data.split import Split
from rckd.errors import RckdError

SPLITS = ("train", "test")

# As in mdistiller, RepDistiller, logit-standardization-KD, TTM and RCKD (mdistiller/dataset/cifar100.py,
# dataset/cifar100.py), so imported teachers see the inputs they were trained on (tests/test_sources.py).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
# The fine label names of cifar-100-python/meta, in label order (alphabetical): imported teachers carry them.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)
# Debian/Ubuntu package dataset-fashion-mnist; torchvision's own download goes to <root>/FashionMNIST/raw.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def load(name: str, root: str | os.PathLike, split: str, *, download: bool = False,
         **options: Any) -> Split | FileSplit:
    """One split of a data set: from `<root>/<name>.pt` when `rckd prepare` wrote it, else from the source."""
    if split not in SPLITS:
        raise RckdError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return load_splits(name, root, download=download, **options)[split]


def load_splits(name: str, root: str | os.PathLike, *, download: bool = False,
                **options: Any) -> dict[str, Split] | dict[str, FileSplit]:
    """Both splits from one read of the cache (or one build from the source): {"train": ..., "test": ...}."""
    resolved = resolve_options(name, options)
    if name in STREAMED:
        return imagefolder.load_splits(root, name, resolved)
    path = cache.cache_path(root, name)
    if path.exists():
        return cache.read(path, name, root, resolved, download=download)
    return build(name, root, download=download, options=resolved)


def build(name: str, root: str | os.PathLike, *, download: bool, options: dict[str, Any]) -> dict[str, Split]:
    """Both splits of a data set read from its source (options already resolved)."""
    return _BUILDERS[name](Path(root), download, options)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images in [0, 1] units, from histograms
    so that no float copy of the data set is made."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].flatten(), minlength=256).double()
        mean = float((counts * levels).sum() / counts.sum())
        means.append(mean)
        stds.append(math.sqrt(float((counts * (levels - mean) ** 2).sum() / counts.sum())))
    return tuple(means), tuple(stds)


def _cifar100(root: Path, download: bool, options: dict[str, Any]) -> dict[str, Split]:
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import check_integrity, extract_archive

    archive = root / CIFAR100.filename
    if not download and archive.is_file() and not (root / CIFAR100.base_folder).is_dir():
        if not check_integrity(archive, CIFAR100.tgz_md5):
            raise RckdError(f"{archive} is incomplete or corrupt (its md5 is not {CIFAR100.tgz_md5}); "
                            f"delete it and fetch it again from {CIFAR100.url}")
        extract_archive(archive, root)
    try:
        # Checks the md5 of the extracted files of both splits before reading anything.
        sources = {split: CIFAR100(root, train=split == "train", download=download) for split in SPLITS}
    except Exception as err:  # missing files (RuntimeError) or any network failure while downloading
        raise RckdError(_cifar100_missing(root, download, err)) from None
    return {
        split: Split(
            images=torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous(),  # NHWC -> NCHW
            labels=torch.tensor(dataset.targets, dtype=torch.int64),
            classes=list(dataset.classes), mean=CIFAR100_MEAN, std=CIFAR100_STD,
        )
        for split, dataset in sources.items()
    }


def _cifar100_missing(root: Path, download: bool, err: Exception) -> str:
    from torchvision.datasets import CIFAR100

    where = (f"put {CIFAR100.filename} (md5 {CIFAR100.tgz_md5}, from {CIFAR100.url}) into the directory "
             f"{root.resolve()}")
    if download:
        return (f"downloading CIFAR-100 into {root.resolve()} failed ({type(err).__name__}: {err}); "
                f"check the network, or {where}")
    return (f"CIFAR-100 not found in {root.resolve()} (or its folder {CIFAR100.base_folder} is damaged: "
            f"delete it); {where}, or let "
            f"torchvision download it: "
            f"`{cache.prepare_command('cifar100', root, {}, download=True)}` (config key data.download: true)")


def _fashion_mnist(root: Path, download: bool, options: dict[str, Any]) -> dict[str, Split]:
    from torchvision.datasets import FashionMNIST

    torchvision_dir = root / "FashionMNIST" / "raw"
    candidates = [DEBIAN_FASHION_MNIST, torchvision_dir]
    directory = next((folder for folder in candidates if _has_fashion_mnist(folder)), None)
    if directory is None and download:
        try:
            FashionMNIST(root, download=True)
        except Exception as err:  # any network failure while downloading
            raise RckdError(f"downloading Fashion-MNIST into {torchvision_dir.resolve()} failed "
                            f"({type(err).__name__}: {err}); check the network") from None
        directory = torchvision_dir
    if directory is None:
        names = ", ".join(name for pair in FASHION_MNIST_FILES.values() for name in pair)
        raise RckdError(
            f"Fashion-MNIST not found: expected {names} in {DEBIAN_FASHION_MNIST} (Debian/Ubuntu: "
            f"`apt-get install dataset-fashion-mnist`) or in {torchvision_dir.resolve()}; or let torchvision "
            f"download them: `{cache.prepare_command('fashion_mnist', root, {}, download=True)}` "
            f"(config key data.download: true)")
    arrays = {split: (_read_idx(directory / images), _read_idx(directory / labels))
              for split, (images, labels) in FASHION_MNIST_FILES.items()}
    train_images = torch.from_numpy(arrays["train"][0].copy())[:, None]
    mean, std = channel_stats(train_images)
    return {
        split: Split(
            images=train_images if split == "train" else torch.from_numpy(images.copy())[:, None],
            labels=torch.from_numpy(labels.astype(np.int64)),
            classes=list(FashionMNIST.classes), mean=mean, std=std,
        )
        for split, (images, labels) in arrays.items()
    }


def _has_fashion_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair)


def _read_idx(path: Path) -> np.ndarray:
    """A gzipped idx file (big-endian dims after a 0x0000 08 <ndim> magic; uint8 payload)."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise RckdError(f"{path} is not a readable gzip file ({err}); delete it and fetch it again") from None
    ndim = data[3] if len(data) >= 4 else 0
    header = 4 + 4 * ndim
    if data[:3] != b"\x00\x00\x08" or ndim == 0 or len(data) < header:
        raise RckdError(f"{path} is not a uint8 idx file; delete it and fetch it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise RckdError(f"{path} holds {len(data) - header} bytes of data, its header says {shape}; "
                        f"delete it and fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _synthetic(root: Path, download: bool, options: dict[str, Any]) -> dict[str, Split]:
    settings = synthetic.SyntheticOptions(**options)
    tensors = synthetic.generate(settings)
    mean, std = channel_stats(tensors["train"][0])
    classes = synthetic.class_names(settings)
    return {split: Split(images, labels, classes, mean, std) for split, (images, labels) in tensors.items()}


_BUILDERS: dict[str, Callable[[Path, bool, dict[str, Any]], dict[str, Split]]] = {
    "cifar100": _cifar100,
    "fashion_mnist": _fashion_mnist,
    "synthetic": _synthetic,
}
