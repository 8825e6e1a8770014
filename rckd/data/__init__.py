"""Data sets as uint8 tensors, their one-file cache, and on-device batches.

`load(name, root, split, *, download=False, **options) -> Split` and
`prepare(name, root, *, download=False, **options) -> Path`; see `rckd.data.datasets` for the data
sets, `rckd.data.augment` for batching and augmentation on the training device.
"""

from rckd.data.datasets import DATASETS, load, load_splits
# Importing the function binds `rckd.data.prepare` to it rather than to the CLI module of that name.
from rckd.data.prepare import prepare
from rckd.data.split import Split

__all__ = ["DATASETS", "Split", "load", "load_splits", "prepare"]
