"""Inference shared by training, evaluation, export and the teacher bank: logits of whole image sets,
and the one check that a model file fits a data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rckd.data.augment import eval_inputs
from rckd.data.imagefolder import FileSplit
from rckd.data.options import resolve_options
from rckd.data.split import Split
from rckd.errors import RckdError
from rckd.records import ModelMeta


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   batch_size: int, channels_last: bool = False) -> torch.Tensor:
    """float32 logits of unaugmented uint8 images, in order; meant for an eager model in eval mode."""
    return torch.cat([model(x).float() for x in eval_inputs(images, batch_size, mean, std,
                                                             channels_last=channels_last)])


def split_logits(model: nn.Module, split: Split | FileSplit, batch_size: int, indices: torch.Tensor | None = None,
                 *, workers: int = 0, channels_last: bool = False) -> torch.Tensor:
    """float32 logits of the test view of `indices` (default: every image) of a split, in order, on the
    model's device: from memory, or decoded from files by `workers` loader processes."""
    if isinstance(split, FileSplit):
        from rckd.data.imagefolder import stream_logits

        return stream_logits(model, split, batch_size, indices, workers, channels_last)
    device = next(model.parameters()).device
    images = split.images if indices is None else split.images[indices.cpu()]
    return predict_logits(model, images.to(device), split.mean, split.std, batch_size, channels_last)


def check_fits(path: str | Path, meta: ModelMeta, dataset: str, data_options: dict[str, Any],
               split: Split | FileSplit) -> None:
    """Refuse a model file trained on other data: data set, its options, classes and image shape."""
    expected = {"dataset": dataset, "data_options": resolve_options(dataset, data_options),
                "num_classes": len(split.classes), "in_channels": split.input_size[0],
                "input_size": split.input_size}
    wrong = {key: getattr(meta, key) for key, value in expected.items() if getattr(meta, key) != value}
    if wrong:
        raise RckdError(f"{path} does not fit this data set: it has {wrong}, the data has "
                        f"{ {key: expected[key] for key in wrong} }; use a model trained on {dataset} with these "
                        f"options (or pass the --data-option values it was trained with)")
