"""Data sets as uint8 tensors, their one-file cache, and on-device batches.

`load(name, root, split, *, download=False, **options) -> Split | FileSplit` and
`prepare_cache(name, root, *, download=False, **options) -> Path`; see `rckd.data.datasets` for the data
sets, `rckd.data.augment` for batching and augmentation on the training device. The names and
options (`rckd.data.options`) import no torch; the rest loads it on first use.
"""

from rckd.data.options import DATASETS

__all__ = ["DATASETS", "FileSplit", "Split", "load", "load_splits", "prepare_cache"]

_LAZY = {"Split": "rckd.data.split", "FileSplit": "rckd.data.imagefolder", "load": "rckd.data.datasets", "load_splits": "rckd.data.datasets",
         "prepare_cache": "rckd.data.prepare"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
