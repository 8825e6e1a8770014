"""Batches and augmentation computed on the training device, from uint8 images already there.

The standard CIFAR recipe (random 32x32 crop of the image zero-padded by 4, then a horizontal flip
with probability 1/2, then ToTensor + Normalize) as a few vectorised tensor operations per batch.
Random numbers come from one device `torch.Generator`, and nothing reads a value back to the host,
so batches are queued asynchronously on a GPU and a run resumed from `TrainBatches.state_dict()`
continues with exactly the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rckd.data.options import PADDING, view_count

Batch = tuple[torch.Tensor, torch.Tensor]
# (uint8 images of this process's part, images in the global batch, the part, generator, padding) -> uint8
# second views of the part, e.g. MLKD's strong view (rckd.data.strong.strong_views).
SecondView = Callable[[torch.Tensor, int, slice, torch.Generator, int], torch.Tensor]


class TrainBatch(NamedTuple):
    x: torch.Tensor  # float32 [B, C, H, W], augmented and normalised
    y: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B]: which training images
    view: torch.Tensor  # int64 [B]: which crop and flip of each (view_id), the key of a teacher bank
    strong: torch.Tensor | None = None  # float32 [B, C, H, W]: a second view of each, where asked for


def view_id(offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """The view number in 0..view_count - 1 of offsets (dy, dx) [B, 2] and flips [B]."""
    side = 2 * padding + 1
    return (offsets[:, 0] * side + offsets[:, 1]) * 2 + flips.long()


def all_views(padding: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets [V, 2], flips [V]) of every view, in view_id order."""
    ids = torch.arange(view_count(padding), device=device)
    side = 2 * padding + 1
    flips, cell = (ids % 2).bool(), ids // 2
    return torch.stack((cell // side, cell % side), 1), flips


def crop_flip(images_u8: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
              padding: int = 4) -> torch.Tensor:
    """Crop each image of [B,C,H,W] at (dy, dx) = offsets[b] from its zero-padded version, then
    mirror it left-right where flips[b]; offsets lie in 0..2*padding (padding means no shift)."""
    batch, channels, height, width = images_u8.shape
    padded_width = width + 2 * padding
    padded = F.pad(images_u8, (padding, padding, padding, padding)).flatten(2)  # [B, C, (H+2p)(W+2p)]
    device = images_u8.device
    rows = offsets[:, 0, None] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device).expand(batch, width)
    columns = torch.where(flips[:, None], columns.flip(1), columns) + offsets[:, 1, None]  # [B, W]
    flat_index = (rows[:, :, None] * padded_width + columns[:, None, :]).flatten(1)  # [B, H*W]
    gathered = padded.gather(2, flat_index[:, None, :].expand(batch, channels, height * width))
    return gathered.view(batch, channels, height, width)


def normalize(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """float32 (x - mean) / std per channel; uint8 input is first scaled to [0, 1] like ToTensor,
    floating input is taken to be in [0, 1] already. Keeps the input's memory format."""
    scaled = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return scaled.sub(channel_tensor(mean, images)).div(channel_tensor(std, images))


def random_views(batch_size: int, padding: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform crop offsets int64 [B, 2] in 0..2*padding and fair coin flips bool [B], drawn on
    the generator's device (or `device` with the default generator)."""
    device = generator.device if generator is not None else device
    offsets = torch.randint(0, 2 * padding + 1, (batch_size, 2), generator=generator, device=device)
    flips = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
    return offsets, flips


class TrainBatches:
    """Shuffled, augmented, normalised training batches from uint8 images on their device.

    `iter(batches)` (or `batches.epoch()`) runs one epoch: a fresh device permutation, then
    `len(batches)` `TrainBatch`es. `state_dict()` saved between epochs, or between two batches of
    one, and loaded into a new instance reproduces every later batch bit for bit. With `world`
    processes (data-parallel training) every one draws the same permutation and views for global
    batches of batch_size * world images and keeps its `rank`-th part: together they see what one
    process with the total batch sees. With `second_view`, each batch also carries a second view of
    its images (`TrainBatch.strong`), drawn from the same generator after the first.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], *, augment: bool = True, padding: int = PADDING,
                 drop_last: bool = False, generator: torch.Generator | None = None,
                 channels_last: bool = False, rank: int = 0, world: int = 1,
                 second_view: SecondView | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1] or labels.device != images.device:
            raise ValueError("labels must be [N] on the images' device")
        self.images, self.labels = images, labels
        self.batch_size, self.augment, self.padding = batch_size, augment, padding
        self.drop_last, self.channels_last = drop_last, channels_last
        if world > 1 and not drop_last:
            raise ValueError("data-parallel batches need drop_last (every process takes equal parts)")
        self.rank, self.world = rank, world
        if second_view is not None and not augment:
            raise ValueError("a second view is a second augmentation: it needs augment=True")
        self.second_view = second_view
        self.generator = generator if generator is not None else torch.Generator(images.device).manual_seed(0)
        if self.generator.device.type != images.device.type:  # torch itself only checks the type
            raise ValueError(f"generator is on {self.generator.device}, images on {images.device}")
        self.mean = channel_tensor(mean, images)
        self.std = channel_tensor(std, images)
        self.order: torch.Tensor | None = None  # this epoch's permutation while one is under way
        self.position = 0  # batches of it already drawn

    def __len__(self) -> int:
        count, total = self.images.shape[0], self.batch_size * self.world
        return count // total if self.drop_last else math.ceil(count / total)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch()

    def epoch(self) -> Iterator[TrainBatch]:
        if self.order is None:
            self.order = torch.randperm(self.images.shape[0], generator=self.generator, device=self.images.device)
            self.position = 0
        identity = view_count(self.padding) // 2 - 1  # no shift, no flip
        total, part = self.batch_size * self.world, slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        while self.position < len(self):
            start = self.position * total
            index = self.order[start:start + total]
            count = index.shape[0]
            if self.augment:  # the views of the whole global batch, so the generator advances alike everywhere
                offsets, flips = random_views(index.shape[0], self.padding, generator=self.generator)
                offsets, flips = offsets[part], flips[part]
            index = index[part]
            images = self.images.index_select(0, index)
            strong = None
            if self.second_view is not None:
                strong = to_model_input(self.second_view(images, count, part, self.generator, self.padding),
                                        self.mean, self.std, self.channels_last)
            if self.augment:
                images = crop_flip(images, offsets, flips, self.padding)
                view = view_id(offsets, flips, self.padding)
            else:
                view = torch.full_like(index, identity)
            self.position += 1
            yield TrainBatch(to_model_input(images, self.mean, self.std, self.channels_last),
                             self.labels.index_select(0, index), index, view, strong)
        self.order = None

    def state_dict(self) -> dict[str, torch.Tensor | int | None]:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict[str, torch.Tensor | int | None]) -> None:
        self.generator.set_state(state["generator"])
        order = state.get("order")
        self.order = None if order is None else order.to(self.images.device)
        self.position = state.get("position", 0)


def eval_inputs(images: torch.Tensor, batch_size: int, mean: Sequence[float], std: Sequence[float], *,
                channels_last: bool = False) -> Iterator[torch.Tensor]:
    """Normalised batches of `images` in their stored order, without augmentation."""
    mean_tensor, std_tensor = channel_tensor(mean, images), channel_tensor(std, images)
    for start in range(0, images.shape[0], batch_size):
        yield to_model_input(images[start:start + batch_size], mean_tensor, std_tensor, channels_last)


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], *, channels_last: bool = False) -> Iterator[Batch]:
    """The test set in its stored order, normalised, without augmentation, with its labels."""
    inputs = eval_inputs(images, batch_size, mean, std, channels_last=channels_last)
    for start, x in zip(range(0, images.shape[0], batch_size), inputs):
        yield x, labels[start:start + batch_size]


def to_model_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    channels_last: bool) -> torch.Tensor:
    if channels_last:  # converting the uint8 batch is 4x cheaper than the float one
        images = images.contiguous(memory_format=torch.channels_last)
    return normalize(images, mean, std)


def channel_tensor(values: Sequence[float] | torch.Tensor, like: torch.Tensor | torch.device) -> torch.Tensor:
    """[1, C, 1, 1] float32 on `like`'s device (a no-op for a tensor already made this way)."""
    device = like if isinstance(like, torch.device) else like.device
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)
