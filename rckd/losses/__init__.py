"""Distillation losses: `build(method, **params) -> DistillLoss`, `available()`, `defaults(method)`.

`rckd.losses.catalog` holds the methods as plain data (defaults, parameter checks) and imports no
torch, so the workflow plans runs without it; `build` and `DistillLoss` load torch on first use.
The pure tensor functions live in `rckd.losses.functional`; docs/method.md gives every formula
with its source.
"""

from rckd.losses.catalog import available, defaults

__all__ = ["DistillLoss", "available", "build", "defaults"]


def __getattr__(name: str):
    if name in ("DistillLoss", "build"):
        from rckd.losses import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
