"""`Split` and `FileSplit`: one split of a data set, as every consumer of `rckd.data` sees it.

A `Split` holds its images in memory as one uint8 tensor; a `FileSplit` (ImageNet) names image files
that are decoded batch by batch (`rckd.data.imagefolder`). Both answer `len`, `input_size` and
`eval_images` (the unaugmented test view of some images, as uint8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] units (ToTensor scale)
    std: tuple[float, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def input_size(self) -> list[int]:
        return list(self.images.shape[1:])

    def eval_images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices.cpu()]


@dataclass(frozen=True)
class FileSplit:
    folder: Path  # the split's directory: folder / files[i] is image i
    files: list[str]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    options: Any  # rckd.data.options.ImageFolderOptions: crop and resize sizes

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_size(self) -> list[int]:
        return [3, self.options.image_size, self.options.image_size]

    def eval_images(self, indices: torch.Tensor) -> torch.Tensor:
        from rckd.data.imagefolder import eval_view

        return torch.stack([eval_view(self.folder / self.files[i], self.options) for i in indices.tolist()])
