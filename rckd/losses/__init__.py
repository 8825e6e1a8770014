"""Distillation losses: `build(method, **params) -> DistillLoss`, `available()`, `defaults(method)`.

The pure tensor functions live in `rckd.losses.functional`; docs/method.md gives every formula
with its source.
"""

from rckd.losses.registry import DistillLoss, available, build, defaults

__all__ = ["DistillLoss", "available", "build", "defaults"]
