"""The one-file data cache `<root>/<name>.pt` that `rckd prepare` writes and `load` reads.

It holds both splits' tensors, the classes, mean/std, the options the data set was built with,
and a SHA-256 over all of it, so a truncated or altered file is refused rather than trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

import torch

from rckd.checkpoint import load_torch, save_torch
from rckd.data.split import Split
from rckd.errors import RckdError

FORMAT = 2  # 2: CIFAR-100's mean/std became the published code's (issue 20); older caches are rebuilt
_TENSORS = ("train_images", "train_labels", "test_images", "test_labels")
_METADATA = ("format", "dataset", "options", "classes", "mean", "std")


def cache_path(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / f"{name}.pt"


def prepare_command(name: str, root: str | os.PathLike, options: dict[str, Any], *, download: bool = False) -> str:
    """The `rckd prepare` call, ready to paste into a shell, that (re)builds this cache."""
    flags = "".join(f" --data-option {shlex.quote(f'{key}={value}')}" for key, value in options.items())
    return (f"rckd prepare --dataset {name} --data-root {shlex.quote(str(root))}{flags}"
            + (" --download" if download else ""))


def write(path: Path, name: str, options: dict[str, Any], splits: dict[str, Split]) -> None:
    train = splits["train"]
    payload: dict[str, Any] = {
        "format": FORMAT, "dataset": name, "options": dict(options), "classes": list(train.classes),
        "mean": list(train.mean), "std": list(train.std),
    }
    for split_name, split in splits.items():
        payload[f"{split_name}_images"] = split.images.contiguous()
        payload[f"{split_name}_labels"] = split.labels.contiguous()
    payload["sha256"] = checksum(payload)
    save_torch(path, payload)


def read(path: Path, name: str, root: str | os.PathLike, options: dict[str, Any], *,
         download: bool = False) -> dict[str, Split]:
    """Both splits from a cache, after checking its checksum and that it was built with `options`;
    errors suggest the `rckd prepare` call (with --download when `download`) that rebuilds it."""
    command = prepare_command(name, root, options, download=download)
    try:
        payload = load_torch(path, "data cache")
    except RckdError as err:
        raise RckdError(f"{err}: `{command}`") from None
    expected_keys = {*_METADATA, *_TENSORS, "sha256"}
    if (not isinstance(payload, dict) or set(payload) != expected_keys or payload["format"] != FORMAT
            or not all(isinstance(payload[key], torch.Tensor) for key in _TENSORS)):
        raise RckdError(f"data cache {path} is not an rckd data cache of format {FORMAT}; "
                        f"delete it and rerun `{command}`")
    if payload["sha256"] != checksum(payload):
        raise RckdError(f"data cache {path} is corrupt (SHA-256 mismatch); delete it and rerun `{command}`")
    if payload["dataset"] != name or payload["options"] != options:
        raise RckdError(
            f"data cache {path} holds {payload['dataset']} built with options {payload['options']}, but "
            f"{name} with {options} was requested; rebuild it with `{command}` (it replaces the old "
            f"cache), or request the options it was built with")
    meta = {"classes": payload["classes"], "mean": tuple(payload["mean"]), "std": tuple(payload["std"])}
    return {split: Split(payload[f"{split}_images"], payload[f"{split}_labels"], **meta)
            for split in ("train", "test")}


def checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of the metadata (as JSON) and of every tensor's dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps({key: payload[key] for key in _METADATA}, sort_keys=True).encode())
    for key in _TENSORS:
        tensor = payload[key]
        digest.update(f"{key} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy())
    return digest.hexdigest()
