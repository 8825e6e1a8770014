"""`rckd import-teacher`: published teachers as rckd model files.

    python -m rckd import-teacher --source mdistiller --arch resnet32x4 \
        --archive data/cifar_teachers.tar --out results/cifar100/teachers/resnet32x4/model.pt
    python -m rckd import-teacher --source torchvision --arch tv_resnet34 --out teachers/tv_resnet34/model.pt

`SOURCES` (plain data, no torch: the workflow plans with it) lists, per source, the architectures
whose released checkpoints it imports and their member in the source's archive. The import itself
lives in one module per source (`rckd.teachers.mdistiller`, `rckd.teachers.torchvision`);
`SOURCE_DATASETS` names the data set each source's teachers were trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rckd.data.options import add_data_option_argument

# mdistiller's release `cifar_teachers.tar` (also RepDistiller's teachers): <name>_vanilla/ckpt_epoch_240.pth.
MDISTILLER_ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
SOURCES: dict[str, dict[str, str]] = {
    "mdistiller": {
        arch: f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"
        for arch, name in {"resnet56": "resnet56", "resnet110": "resnet110", "resnet32x4": "resnet32x4",
                           "resnet50": "ResNet50", "wrn_40_2": "wrn_40_2", "vgg13": "vgg13"}.items()
    },
    # torchvision's weight enums; their IMAGENET1K_V1 member is imported
    "torchvision": {"tv_resnet18": "ResNet18_Weights", "tv_resnet34": "ResNet34_Weights",
                    "tv_resnet50": "ResNet50_Weights"},
}
SOURCE_DATASETS = {"mdistiller": "cifar100", "torchvision": "imagenet"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=sorted(SOURCES), help="whose checkpoint layout")
    parser.add_argument("--arch", required=True, help="our architecture name, e.g. resnet32x4 or resnet50")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--archive", type=Path, help=f"mdistiller: its release archive ({MDISTILLER_ARCHIVE_URL}); "
                       f"torchvision: a folder holding the weight files under their published names")
    given.add_argument("--checkpoint", type=Path, help="one checkpoint file (.pth) in the source's key layout")
    parser.add_argument("--out", required=True, type=Path, help="model.pt to write")
    parser.add_argument("--metrics", type=Path, help="also write the run's metrics.json here (the workflow does)")
    add_data_option_argument(parser, "torchvision: an imagenet option the teacher will be used with "
                             "(image_size, resize_size); repeatable")


def run(args: argparse.Namespace) -> int:
    import importlib

    from rckd.errors import RckdError

    if args.source == "mdistiller" and args.archive is None and args.checkpoint is None:
        raise RckdError("mdistiller teachers come from --archive cifar_teachers.tar or --checkpoint FILE")
    source = importlib.import_module(f"rckd.teachers.{args.source}")
    extra = {"data_options": dict(args.data_option)} if args.source == "torchvision" else {}
    origin = source.import_teacher(args.arch, args.out, archive=args.archive, checkpoint=args.checkpoint,
                                   metrics_path=args.metrics, **extra)
    print(f"{args.out}: {args.arch} from {origin.source_file} ({origin.num_tensors} tensors)", flush=True)
    return 0
