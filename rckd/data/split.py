"""`Split`: one split of an in-memory data set, as every consumer of `rckd.data` sees it.

A `Split` holds its images in memory as one uint8 tensor; its streamed twin, `FileSplit` (ImageNet),
lives with its decoder in `rckd.data.imagefolder`. Both answer `len`, `input_size` and `eval_images`
(the unaugmented test view of some images, as uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

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
