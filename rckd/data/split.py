"""`Split`: one split of a data set, as every consumer of `rckd.data` sees it."""

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
