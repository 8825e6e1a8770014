"""Where commands that run models compute: `--device` (auto, cpu, cuda or cuda:N) and `--threads`."""

from __future__ import annotations

import argparse
import re

import torch

from rckd.errors import RckdError

CHOICES = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N"


def resolve_device(name: str) -> torch.device:
    """The torch device a `--device` value names; auto -> CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise RckdError(f"unknown device {name!r}; use one of: {CHOICES}")
    if name != "cpu" and not torch.cuda.is_available():
        raise RckdError(f"--device {name} asked for CUDA, but torch sees no GPU here; use --device cpu (or auto)")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RckdError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def add_threads_argument(parser: argparse.ArgumentParser, what: str = "torch") -> None:
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help=f"CPU threads for {what} (default 0: torch's default, one per core)")


def set_threads(threads: int) -> None:
    """torch's intra-op CPU threads; 0 keeps torch's default."""
    if threads < 0:
        raise RckdError(f"--threads must be 0 (torch's default) or positive, got {threads}")
    if threads > 0:
        torch.set_num_threads(threads)
