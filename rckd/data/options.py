"""Data set names and options, checked without torch: the workflow validates them while it plans.

`synthetic` takes the options of `SyntheticOptions`, `imagenet` those of `ImageFolderOptions`; the
other data sets take none. `imagenet` is streamed from its files (`STREAMED`); the others live in
memory as uint8 tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from rckd.errors import RckdError

DATASETS = ("cifar100", "fashion_mnist", "imagenet", "synthetic")
STREAMED = ("imagenet",)  # decoded from image files batch by batch: too large to hold in memory
PADDING = 4  # the training crop's zero padding in the standard CIFAR recipe


def crop_padding(name: str, options: dict[str, Any]) -> int | None:
    """The training crop's zero padding of a data set: CIFAR's 4 pixels, and for the synthetic images
    the shift range they are generated with (1/8 of their size: 4 pixels at 32x32, 2 at 16x16).
    None for a streamed data set, whose random-resized crops are not a finite set of views."""
    if name == "synthetic":
        return make_options(options).max_shift
    if name in STREAMED:
        return None
    return PADDING


def view_count(padding: int) -> int:
    """Distinct views of crop-with-padding + flip: (2p + 1)^2 offsets x 2 flips (162 for p = 4)."""
    return 2 * (2 * padding + 1) ** 2


@dataclass(frozen=True)
class SyntheticOptions:
    num_superclasses: int = 10
    classes_per_superclass: int = 10
    train_per_class: int = 100
    test_per_class: int = 20
    seed: int = 0
    difficulty: float = 1.0
    image_size: int = 32  # smaller images make the CPU demo fast (16: 4x fewer pixels)

    @property
    def max_shift(self) -> int:
        """Samples are cropped from a canvas this much larger on every side (4 px at 32x32)."""
        return max(1, self.image_size // 8)

    @property
    def canvas(self) -> int:
        return self.image_size + 2 * self.max_shift


@dataclass(frozen=True)
class ImageFolderOptions:
    """The ImageNet recipe's sizes: train on RandomResizedCrop(image_size) of at least `min_scale` of
    the image, test on the centre image_size crop of the image resized to `resize_size` (shorter side)."""

    image_size: int = 224
    resize_size: int = 256
    min_scale: float = 0.08


_OPTIONS = {"synthetic": SyntheticOptions, "imagenet": ImageFolderOptions}
_LOWEST = {"seed": 0, "difficulty": 0, "image_size": 8, "resize_size": 8, "min_scale": 0.01}


def make_options(values: dict[str, Any], name: str = "synthetic") -> Any:
    """Checked options of data set `name` from user values (e.g. `--data-option difficulty=2`);
    defaults fill the rest."""
    kind = _OPTIONS[name]
    defaults = dataclasses.asdict(kind())
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise RckdError(f"unknown {name} option(s) {unknown}; choose from: {', '.join(defaults)}")
    checked = {}
    for key, default in defaults.items():
        value = values.get(key, default)
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        lowest = _LOWEST.get(key, 1)
        if type(value) is not type(default) or value < lowest:
            raise RckdError(f"{name} option {key} must be {type(default).__name__} >= {lowest}, got {value!r}")
        checked[key] = value
    made = kind(**checked)
    if name == "imagenet" and not (made.resize_size >= made.image_size and made.min_scale <= 1):
        raise RckdError(f"imagenet options need resize_size >= image_size and min_scale <= 1, got {checked}")
    return made


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of data set `name` with defaults filled in, checked; a cache records these."""
    if name not in DATASETS:
        raise RckdError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    if name not in _OPTIONS:
        if options:
            raise RckdError(f"data set {name} takes no options, got {sorted(options)}")
        return {}
    return dataclasses.asdict(make_options(options, name))


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value) with value an int or float where it reads as one."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            continue
    return key, value


def add_data_option_argument(parser: argparse.ArgumentParser,
                             help: str = "data set option the model was trained with (synthetic sizes, seed); "
                                         "repeatable") -> None:
    """`--data-option KEY=VALUE` (repeatable), the same for every command that loads a data set."""
    parser.add_argument("--data-option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                        help=help)
