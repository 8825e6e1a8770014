"""`rckd bank`: a teacher's logits of every training image under every augmentation view, computed once.

Crop-with-padding + flip has a finite set of views (162 for CIFAR's 4-pixel padding), so a teacher's
soft targets for any training batch can be looked up by (image, view) instead of computed: every
student distilled from that teacher then runs no teacher at all. Logits are computed in fp32 (eval
mode, no autocast, no TF32) and stored as float16 `[N, V, C]`, whose 11-bit mantissa keeps a logit to
within 2^-11 of its value; the file records the teacher file's SHA-256, the data set and its options,
and a checksum of the logits, so a stale or corrupt bank is refused with the command that rebuilds it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rckd import data
from rckd.checkpoint import load_model, load_torch, save_torch
from rckd.data.augment import TrainBatch, all_views, crop_flip, normalize
from rckd.data.options import add_data_option_argument, crop_padding, resolve_options, view_count
from rckd.device import add_threads_argument, set_threads
from rckd.errors import RckdError
from rckd.gpu import claim_device
from rckd.inference import check_fits

STORAGE = torch.float16
FORMAT = "rckd-teacher-bank-2"  # 2: CIFAR-100's normalisation changed (issue 20); rebuild older banks
FLOAT16_MAX = 65504.0


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _logits_sha256(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.contiguous().view(torch.uint8).numpy()).hexdigest()


def size_bytes(num_images: int, num_classes: int, padding: int) -> int:
    """Bytes of a bank's logits: what must fit in memory to use it."""
    return num_images * view_count(padding) * num_classes * STORAGE.itemsize


@torch.no_grad()
def compute(teacher: torch.nn.Module, split: data.Split, padding: int, batch_size: int,
            device: torch.device) -> torch.Tensor:
    """float16 [N, V, C] logits of `teacher` (eval mode, fp32) for every image of `split` under every view."""
    offsets, flips = all_views(padding, device)
    images = split.images.to(device)
    num_views = len(flips)
    out = torch.empty(len(images), num_views, teacher(normalize(images[:1], split.mean, split.std)).shape[-1],
                      dtype=STORAGE)
    channels_last = device.type == "cuda"
    previous_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 arithmetic
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            for view in range(num_views):
                views = crop_flip(chunk, offsets[view].expand(len(chunk), 2), flips[view].expand(len(chunk)), padding)
                logits = teacher(normalize(views, split.mean, split.std)).float()
                if logits.abs().max() > FLOAT16_MAX:
                    raise RckdError(f"teacher logits exceed float16's range ({FLOAT16_MAX}); this teacher cannot be "
                                    f"banked, train with train.teacher_bank: off")
                out[start:start + len(chunk), view] = logits.to(STORAGE).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return out


def identity(teacher_path: str | os.PathLike, dataset: str, data_options: dict[str, Any],
             padding: int) -> dict[str, Any]:
    """What a bank must match to serve a run: the teacher file's contents, the data and the views."""
    return {"format": FORMAT, "teacher_sha256": file_sha256(teacher_path), "dataset": dataset,
            "data_options": resolve_options(dataset, data_options), "padding": padding,
            "storage": str(STORAGE).removeprefix("torch.")}


def rebuild_command(path: str | os.PathLike, teacher_path: str | os.PathLike, dataset: str,
                    data_options: dict[str, Any]) -> str:
    options = " ".join(f"--data-option {key}={value}" for key, value in sorted(data_options.items()))
    return (f"python -m rckd bank --teacher {teacher_path} --dataset {dataset} --data-root DATA_ROOT "
            f"{options + ' ' if options else ''}--out {path}")


def load(path: str | os.PathLike, teacher_path: str | os.PathLike, split: data.Split, padding: int,
         device: torch.device, dataset: str, data_options: dict[str, Any]) -> Callable[[TrainBatch], torch.Tensor]:
    """The bank at `path`, checked against the teacher and data, as a batch -> fp32 teacher logits lookup."""
    rebuild = rebuild_command(path, teacher_path, dataset, data_options)
    payload = load_torch(path, "teacher bank")
    if not isinstance(payload, dict) or payload.get("identity", {}).get("format") != FORMAT:
        raise RckdError(f"{path} is not an rckd teacher bank; rebuild it:\n  {rebuild}")
    expected = identity(teacher_path, dataset, data_options, padding)
    stale = sorted(key for key in expected if payload["identity"].get(key) != expected[key])
    if stale:
        raise RckdError(f"teacher bank {path} was built for another {' and '.join(stale)} than this run's; "
                        f"rebuild it:\n  {rebuild}")
    logits = payload["logits"]
    shape = (len(split.images), view_count(padding), len(split.classes))
    if tuple(logits.shape) != shape or logits.dtype != STORAGE or _logits_sha256(logits) != payload["sha256"]:
        raise RckdError(f"teacher bank {path} is corrupt (its logits do not match their checksum or shape); "
                        f"rebuild it:\n  {rebuild}")
    logits = logits.to(device)

    def lookup(batch: TrainBatch) -> torch.Tensor:
        return logits[batch.index, batch.view].float()

    return lookup


def fits_in_memory(num_bytes: int, device: torch.device) -> tuple[bool, str]:
    """(whether a bank of num_bytes fits in half the free memory where it would live, a log line)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"free GPU memory on {device}"
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        where = "available host memory"
    fits = num_bytes <= free // 2
    verdict = "fits in" if fits else "does not fit in"
    return fits, f"teacher bank of {num_bytes / 2**20:.1f} MiB {verdict} half the {where} ({free / 2**20:.0f} MiB)"


def build(teacher_path: Path, dataset: str, data_root: Path, data_options: dict[str, Any], out: Path,
          device: str = "auto", batch_size: int = 500, gpu_slots: int = 0) -> dict[str, Any]:
    """Write the bank of `teacher_path` on the training split of `dataset` to `out`; returns its summary."""
    if crop_padding(dataset, data_options) is None:
        raise RckdError(f"{dataset} is cropped at random sizes, not from a finite set of views: a teacher bank "
                        f"cannot hold them all; its students run their teacher live")
    target, _slot = claim_device(device, gpu_slots)  # the slot is held while `_slot` lives
    teacher, meta = load_model(teacher_path, target)
    split = data.load(dataset, data_root, "train", **data_options)
    check_fits(teacher_path, meta, dataset, data_options, split)
    if target.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    began = time.perf_counter()
    padding = crop_padding(dataset, data_options)
    logits = compute(teacher, split, padding, batch_size, target)
    seconds = time.perf_counter() - began
    save_torch(out, {"identity": identity(teacher_path, dataset, data_options, padding), "logits": logits,
                     "sha256": _logits_sha256(logits)})
    return {"bank": str(out), "shape": list(logits.shape), "bytes": logits.numel() * logits.element_size(),
            "seconds": round(seconds, 2), "device": str(target)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, type=Path, help="the teacher's model.pt")
    parser.add_argument("--dataset", required=True, choices=data.DATASETS)
    parser.add_argument("--data-root", required=True, type=Path, help="directory of the prepared data cache")
    add_data_option_argument(parser, "data set option the teacher was trained with; repeatable")
    parser.add_argument("--out", required=True, type=Path, help="bank file to write (e.g. RUN_DIR/bank.pt)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=500, help="training images per teacher pass")
    parser.add_argument("--gpu-slots", type=int, default=0,
                        help="on CUDA, claim one of this many job slots per GPU first, as training does")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    summary = build(args.teacher, args.dataset, args.data_root, dict(args.data_option), args.out, args.device,
                    args.batch_size, args.gpu_slots)
    print(f"{summary['bank']}: {summary['shape']} float16, {summary['bytes'] / 2**20:.1f} MiB in "
          f"{summary['seconds']:.1f}s on {summary['device']}", flush=True)
    return 0
