"""`rckd prepare`: build a data set once into its checksummed cache file `<data root>/<name>.pt`.

    rckd prepare --dataset synthetic --data-root data --data-option train_per_class=50 --data-option difficulty=1.5
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rckd.data import cache, imagefolder
from rckd.data.datasets import build
from rckd.data.options import DATASETS, STREAMED, add_data_option_argument, resolve_options
from rckd.errors import RckdError


def prepare_cache(name: str, root: str | os.PathLike, *, download: bool = False, **options: Any) -> Path:
    """Write `<root>/<name>.pt` unless a valid cache built with the same options is already there
    (a corrupt or differently built one is replaced); returns its path. A streamed data set's file is
    the index of its image files, rescanned every time (its options only change the transforms)."""
    resolved = resolve_options(name, options)
    if name in STREAMED:
        return imagefolder.write_index(root, name)
    path = cache.cache_path(root, name)
    if path.exists():
        try:
            cache.read(path, name, root, resolved, download=download)
            return path
        except RckdError:
            pass  # corrupt or built with other options: rebuild below
    cache.write(path, name, resolved, build(name, root, download=download, options=resolved))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", required=True, type=Path,
                        help="directory for the source files and the cache")
    parser.add_argument("--download", action="store_true", help="let torchvision download a missing source")
    add_data_option_argument(parser, "a data set option (synthetic: num_superclasses, classes_per_superclass, "
                             "train_per_class, test_per_class, seed, difficulty, image_size; imagenet: "
                             "image_size, resize_size, min_scale); repeatable")


def run(args: argparse.Namespace) -> int:
    path = prepare_cache(args.dataset, args.data_root, download=args.download, **dict(args.data_option))
    print(f"{args.dataset}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
