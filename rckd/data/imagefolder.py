"""ImageNet-style data sets in ImageFolder layout, streamed from their files.

    <data root>/imagenet/train/<wnid>/*.JPEG    <data root>/imagenet/val/<wnid>/*.JPEG

`rckd prepare --dataset imagenet` scans the folders once into the index `<data root>/imagenet.pt`
(relative file names, labels, classes, SHA-256). Images are decoded (Pillow) and augmented
(torchvision's tensor transforms) in DataLoader worker processes, uint8 throughout, then normalised
on the training device:
train RandomResizedCrop(image_size, scale (min_scale, 1), ratio (3/4, 4/3)) + horizontal flip, test
Resize(resize_size) + CenterCrop(image_size), with the ImageNet mean and std.

Every sample's crop and flip come from its own seed, a hash of (run seed, epoch, image index), so the
batches do not depend on the number of workers or processes, and a resumed run sees the same ones.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from rckd.checkpoint import load_torch, save_torch
from rckd.data.augment import TrainBatch, channel_tensor, to_model_input
from rckd.data.options import ImageFolderOptions, make_options
from rckd.errors import RckdError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FOLDERS = {"train": "train", "test": "val"}
EXTENSIONS = (".jpeg", ".jpg", ".png")
FORMAT = 1
NO_VIEW = -1  # a random-resized crop has no view number: no teacher bank for these data sets


@dataclass(frozen=True)
class FileSplit:
    """A split streamed from image files: they are decoded batch by batch (the loaders below)."""

    folder: Path  # the split's directory: folder / files[i] is image i
    files: list[str]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    options: ImageFolderOptions  # crop and resize sizes

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_size(self) -> list[int]:
        return [3, self.options.image_size, self.options.image_size]

    def eval_images(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([eval_view(self.folder / self.files[i], self.options) for i in indices.tolist()])


def folder_of(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / name


def index_path(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / f"{name}.pt"


def scan(folder: Path) -> dict[str, Any]:
    """The index of an ImageFolder tree: classes from train/, every image file of train/ and val/."""
    missing = [FOLDERS[split] for split in FOLDERS if not (folder / FOLDERS[split]).is_dir()]
    if missing:
        raise RckdError(_missing_message(folder, f"no {' or '.join(f'{folder}/{name}' for name in missing)}"))
    classes = sorted(entry.name for entry in os.scandir(folder / "train") if entry.is_dir())
    index: dict[str, Any] = {"format": FORMAT, "classes": classes}
    for split, name in FOLDERS.items():
        found = sorted(entry.name for entry in os.scandir(folder / name) if entry.is_dir())
        if found != classes:
            extra, absent = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
            raise RckdError(_missing_message(folder, f"{folder / name} has other class folders than train/ "
                                             f"(extra {extra[:5]}, missing {absent[:5]})"))
        files, labels = [], []
        for label, wnid in enumerate(classes):
            names = sorted(entry.name for entry in os.scandir(folder / name / wnid)
                           if entry.name.lower().endswith(EXTENSIONS))
            if not names:
                raise RckdError(_missing_message(folder, f"{folder / name / wnid} holds no image"))
            files += [f"{wnid}/{image}" for image in names]
            labels += [label] * len(names)
        index[f"{split}_files"], index[f"{split}_labels"] = files, labels
    index["sha256"] = _checksum(index)
    return index


def _missing_message(folder: Path, what: str) -> str:
    return (f"ImageNet not usable at {folder.resolve()}: {what}. Put (or symlink) the ILSVRC-2012 images "
            f"there in ImageFolder layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the 50000 validation "
            f"images sorted into their 1000 class folders, e.g. with the widely used valprep.sh); "
            f"then `rckd prepare --dataset imagenet --data-root {folder.parent}`")


def _checksum(index: dict[str, Any]) -> str:
    body = {key: value for key, value in index.items() if key != "sha256"}
    return hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest()


def write_index(root: str | os.PathLike, name: str) -> Path:
    """Scan `<root>/<name>` and write its index `<root>/<name>.pt`; returns the path."""
    path = index_path(root, name)
    save_torch(path, scan(folder_of(root, name)))
    return path


def load_splits(root: str | os.PathLike, name: str, options: dict[str, Any]) -> dict[str, FileSplit]:
    """Both splits from the index (scanning the folders when there is none)."""
    path = index_path(root, name)
    index = load_torch(path, "image index") if path.exists() else scan(folder_of(root, name))
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("sha256") != _checksum(index):
        raise RckdError(f"{path} is not a valid image index; delete it and rerun "
                        f"`rckd prepare --dataset {name} --data-root {root}`")
    settings = make_options(options, name)
    return {split: FileSplit(folder_of(root, name) / FOLDERS[split], index[f"{split}_files"],
                             torch.tensor(index[f"{split}_labels"], dtype=torch.int64), index["classes"],
                             MEAN, STD, settings)
            for split in FOLDERS}


def decode(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB pixels of an image file (Pillow: libjpeg-turbo for JPEGs)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise RckdError(f"cannot decode {path} ({err}); replace or delete the file and rerun rckd prepare") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def eval_view(path: Path, options: ImageFolderOptions) -> torch.Tensor:
    """Resize(resize_size) of the shorter side, then the centre image_size x image_size crop."""
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(decode(path), [options.resize_size], antialias=True)
    return TF.center_crop(image, [options.image_size, options.image_size])


def random_box(height: int, width: int, min_scale: float, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering [min_scale, 1] of the area with aspect ratio in
    [3/4, 4/3] (log-uniform); after 10 failed draws, the largest centred crop of a ratio in range."""
    area = height * width
    low, high = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(low, high))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = min(max(width / height, 3 / 4), 4 / 3)
    w, h = (width, round(width / ratio)) if width / height <= ratio else (round(height * ratio), height)
    return (height - h) // 2, (width - w) // 2, h, w


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 64-bit seed per (run seed, epoch, image): the same in every process."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest(), "little")


def train_view(path: Path, options: ImageFolderOptions, seed: int) -> torch.Tensor:
    """RandomResizedCrop(image_size) + horizontal flip with probability 1/2, drawn from `seed`."""
    from torchvision.transforms.v2 import functional as TF

    rng = random.Random(seed)
    image = decode(path)
    top, left, h, w = random_box(image.shape[1], image.shape[2], options.min_scale, rng)
    crop = TF.resized_crop(image, top, left, h, w, [options.image_size, options.image_size], antialias=True)
    return crop.flip(-1) if rng.random() < 0.5 else crop


class _Views(Dataset):
    """Items for a DataLoader: a training view per (index, epoch) key, or the test view per index."""

    def __init__(self, split: FileSplit, seed: int | None) -> None:
        self.split, self.seed = split, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        split = self.split
        if self.seed is None:
            index = key
            image = eval_view(split.folder / split.files[index], split.options)
        else:
            index, epoch = key
            image = train_view(split.folder / split.files[index], split.options, sample_seed(self.seed, epoch, index))
        return image, split.labels[index], index


def _loader(dataset: _Views, batches: list[list[Any]], workers: int, pin: bool) -> DataLoader:
    if workers:  # imported here, before the fork: each worker would otherwise import them again (seconds)
        import PIL.Image  # noqa: F401
        import torchvision.transforms.v2.functional  # noqa: F401
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                      prefetch_factor=4 if workers else None)


@torch.no_grad()
def stream_logits(model: torch.nn.Module, split: FileSplit, batch_size: int, indices: torch.Tensor | None = None,
                  workers: int = 0, channels_last: bool = False) -> torch.Tensor:
    """float32 logits of the test views of `indices` (default: all images), in order."""
    device = next(model.parameters()).device
    order = list(range(len(split))) if indices is None else indices.tolist()
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    mean, std = channel_tensor(split.mean, device), channel_tensor(split.std, device)
    outputs = []
    for images, _, _ in _loader(_Views(split, None), batches, workers, device.type == "cuda"):
        x = to_model_input(images.to(device, non_blocking=True), mean, std, channels_last)
        outputs.append(model(x).float())
    return torch.cat(outputs) if outputs else torch.empty(0, len(split.classes), device=device)


class StreamBatches:
    """Shuffled, augmented training batches decoded from files, the streamed twin of `TrainBatches`.

    Epoch e draws a permutation from (seed, e); global batch g is its g-th slice of
    batch_size * world images and process `rank` takes its rank-th part, so any number of processes
    sees together exactly what one process with the total batch sees. The short last batch is
    dropped. `state_dict()` (epoch and position) restores the stream between any two batches.
    """

    def __init__(self, split: FileSplit, batch_size: int, *, seed: int, device: torch.device, rank: int = 0,
                 world: int = 1, workers: int = 0, channels_last: bool = False) -> None:
        self.split, self.batch_size, self.seed, self.device = split, batch_size, seed, device
        self.rank, self.world, self.workers, self.channels_last = rank, world, workers, channels_last
        self.mean = channel_tensor(split.mean, device)
        self.std = channel_tensor(split.std, device)
        self.epoch_number = 0
        self.position = 0
        self.padding = None  # no finite set of views (see rckd.data.options.crop_padding)

    def __len__(self) -> int:
        return len(self.split) // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[TrainBatch]:
        return self.epoch()

    def _keys(self) -> list[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch_number, -1) % 2**63)
        order = torch.randperm(len(self.split), generator=generator).tolist()
        total, first = self.batch_size * self.world, self.rank * self.batch_size
        return [[(index, self.epoch_number) for index in order[g * total + first:g * total + first + self.batch_size]]
                for g in range(self.position, len(self))]

    def epoch(self) -> Iterator[TrainBatch]:
        on_cuda = self.device.type == "cuda"
        for images, labels, index in _loader(_Views(self.split, self.seed), self._keys(), self.workers, on_cuda):
            self.position += 1
            index = index.to(self.device, non_blocking=True)
            yield TrainBatch(to_model_input(images.to(self.device, non_blocking=True), self.mean, self.std,
                                             self.channels_last),
                             labels.to(self.device, non_blocking=True), index, torch.full_like(index, NO_VIEW))
        self.epoch_number += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch_number, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch_number, self.position = state["epoch"], state["position"]
