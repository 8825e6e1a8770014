"""torchvision's ImageNet ResNets (IMAGENET1K_V1, the weights the published ImageNet numbers used) ->
rckd model files.

The weight file is taken from `--archive DIR` when it holds the file under its published name (e.g.
resnet34-b627a593.pth), else from torch.hub's cache, else downloaded there. A file found by its
published name must match the SHA-256 prefix in that name; an explicit `--checkpoint FILE` is taken
as the user's choice (its SHA-256 is recorded). Read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rckd import models
from rckd.checkpoint import load_torch
from rckd.data.imagefolder import MEAN, STD
from rckd.data.options import resolve_options
from rckd.errors import RckdError
from rckd.records import Origin
from rckd.teachers import SOURCES
from rckd.teachers.output import save_teacher

PUBLISHED_EPOCHS = 90  # torchvision's recipe for the V1 ResNet weights


def weights_of(arch: str) -> Any:
    import torchvision.models

    return getattr(torchvision.models, SOURCES["torchvision"][arch]).IMAGENET1K_V1


def locate(arch: str, folder: Path | None) -> Path:
    """The published weight file of `arch`: in `folder`, in torch.hub's cache, or downloaded there."""
    import torch

    weights = weights_of(arch)
    name = weights.url.rsplit("/", 1)[1]
    candidates = ([folder / name] if folder else []) + [Path(torch.hub.get_dir()) / "checkpoints" / name]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        found = candidates[-1]
        found.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(found), progress=False)
        except Exception as err:  # any network failure
            raise RckdError(f"downloading {weights.url} failed ({type(err).__name__}: {err}); fetch it on a "
                            f"machine with internet and put it into {folder or found.parent} (config "
                            f"teachers.archive), or pass --checkpoint FILE") from None
    expected = name.rsplit("-", 1)[1].split(".")[0]
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise RckdError(f"{found} is not torchvision's {name}: its SHA-256 starts {digest[:8]}, the name says "
                        f"{expected}; delete it and fetch {weights.url} again")
    return found


def import_teacher(arch: str, out: Path, *, archive: Path | None = None, checkpoint: Path | None = None,
                   metrics_path: Path | None = None, data_options: dict[str, Any] | None = None) -> Origin:
    """Write `out` (an rckd model.pt for ImageNet) from torchvision's IMAGENET1K_V1 weights of `arch`."""
    if arch not in SOURCES["torchvision"]:
        raise RckdError(f"torchvision teachers are {', '.join(SOURCES['torchvision'])}, not {arch!r}")
    if checkpoint is not None and not checkpoint.is_file():
        raise RckdError(f"{checkpoint} does not exist")
    path = checkpoint or locate(arch, archive)
    state = load_torch(path, "torchvision checkpoint")
    weights = weights_of(arch)
    classes = weights.meta["categories"]
    model = models.build(arch, num_classes=len(classes), in_channels=3)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise RckdError(f"{path} is not a torchvision {arch.removeprefix('tv_')} state dict: {err}") from None
    options = resolve_options("imagenet", data_options or {})
    origin = Origin(source="torchvision", source_file=str(path),
                    source_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), num_tensors=len(state),
                    published_top1=weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])
    data = {"dataset": "imagenet", "data_options": options, "input_size": [3, options["image_size"], options["image_size"]], "mean": MEAN, "std": STD, "classes": classes}
    save_teacher(out, model, arch, data, origin, metrics_path, epochs=PUBLISHED_EPOCHS)
    return origin
