"""Trained-model files (`model.pt`): a state_dict plus the metadata every later step needs.

Always loaded with `torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rckd.errors import RckdError
from rckd.io import atomic_path
from rckd.records import ModelMeta


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load(weights_only=True) with messages that say what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise RckdError(f"{what} not found: {path} (train it first, or check the path)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RckdError(
            f"{what} {path} is corrupt or not an rckd checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); delete it and rerun the step that writes it"
        ) from None


def save_model(path: str | os.PathLike, weights: Mapping[str, torch.Tensor], meta: ModelMeta) -> None:
    """A model file of `weights` (a state_dict) and its metadata."""
    state = {name: tensor.detach().cpu() for name, tensor in weights.items()}
    save_torch(path, {"state_dict": state, "meta": meta.to_dict()})


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Rebuild the architecture named in the metadata and load its weights, in eval mode."""
    from rckd import models

    payload = load_torch(path, "model")
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise RckdError(f"{path} is not an rckd model file (no state_dict/meta); rerun its training rule")
    meta = ModelMeta.from_dict(payload["meta"], path)
    model = models.build(meta.arch, num_classes=meta.num_classes, in_channels=meta.in_channels)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise RckdError(f"{path}: weights do not fit arch {meta.arch!r}: {str(err)[:300]}") from None
    return model.to(device).eval(), meta
