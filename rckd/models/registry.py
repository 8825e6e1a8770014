"""Name -> constructor table for every architecture, in the style of timm.

A family module decorates a constructor `fn(num_classes, in_channels) -> nn.Module` with
`@register`; the function's name is the architecture name used in configs and checkpoints.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from rckd.errors import RckdError
from rckd.models.layers import init_weights

Constructor = Callable[[int, int], nn.Module]

_CONSTRUCTORS: dict[str, Constructor] = {}


def register(constructor: Constructor, name: str | None = None) -> Constructor:
    """Add a constructor under `name`, by default its function name (a clash is a programming error)."""
    name = name or constructor.__name__
    if name in _CONSTRUCTORS:
        raise ValueError(f"model {name!r} is registered twice")
    _CONSTRUCTORS[name] = constructor
    return constructor


def available() -> list[str]:
    """Every registered architecture name, sorted."""
    return sorted(_CONSTRUCTORS)


def build(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model that maps [B, in_channels, H, W] images to [B, num_classes] logits."""
    if name not in _CONSTRUCTORS:
        raise RckdError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RckdError(f"{label} must be a positive integer, got {value!r}")
    model = _CONSTRUCTORS[name](num_classes, in_channels)
    init_weights(model)
    return model
