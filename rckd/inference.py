"""Inference shared by training, evaluation, export and the teacher bank: logits of whole image sets,
and the one check that a model file fits a data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rckd.data.augment import eval_inputs
from rckd.data.options import resolve_options
from rckd.data.split import Split
from rckd.errors import RckdError


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   batch_size: int, channels_last: bool = False) -> torch.Tensor:
    """float32 logits of unaugmented uint8 images, in order; meant for an eager model in eval mode."""
    return torch.cat([model(x).float() for x in eval_inputs(images, batch_size, mean, std,
                                                             channels_last=channels_last)])


def check_fits(path: str | Path, meta: dict[str, Any], dataset: str, data_options: dict[str, Any],
               split: Split) -> None:
    """Refuse a model file trained on other data: data set, its options, classes and image shape."""
    expected = {"dataset": dataset, "data_options": resolve_options(dataset, data_options),
                "num_classes": len(split.classes), "in_channels": split.images.shape[1],
                "input_size": list(split.images.shape[1:])}
    wrong = {key: meta.get(key) for key, value in expected.items() if meta.get(key) != value}
    if wrong:
        raise RckdError(f"{path} does not fit this data set: it has {wrong}, the data has "
                        f"{ {key: expected[key] for key in wrong} }; use a model trained on {dataset} with these "
                        f"options (or pass the --data-option values it was trained with)")
