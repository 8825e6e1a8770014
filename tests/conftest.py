"""Shared test setup: one torch thread for the whole session, and tiny models exported to ONNX.

Import the helpers with `from conftest import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rckd import models
from rckd.data.augment import normalize
from rckd.export import export

SIZE = 16  # every architecture maps any image size to logits; 16x16 keeps tracing and checking fast
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Test batches are tiny and gain nothing from threads; on a busy 2-core runner thread barriers
    made model tests several times slower. onnxruntime sessions set their own thread counts."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def random_images(count: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 images [count, channels, SIZE, SIZE] of uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def normalized(images: torch.Tensor) -> torch.Tensor:
    """`images` normalised with MEAN and STD (their first C entries), as the trainer feeds them."""
    channels = images.shape[1]
    return normalize(images, MEAN[:channels], STD[:channels])


def settle_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Running BN statistics of `images`, as training leaves them: without this, deep random
    networks (resnet110) produce logits of 1e6 and no absolute tolerance means anything."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches seen
    with torch.no_grad():
        model.train()(images)
    return model.eval()


def toy_meta(arch: str, classes: list[str], channels: int = 3, method: str = "rckd",
             params: dict | None = None, teacher: str | None = "runs/t/model.pt",
             teacher_arch: str | None = "resnet32x4") -> dict:
    """The checkpoint metadata `rckd.export.export` needs, for SIZE x SIZE images."""
    return {
        "arch": arch, "num_classes": len(classes), "in_channels": channels, "input_size": [channels, SIZE, SIZE],
        "dataset": "synthetic", "mean": MEAN[:channels], "std": STD[:channels], "classes": list(classes),
        "method": method, "params": {"beta": 2.0} if params is None else params, "teacher": teacher,
        "teacher_arch": teacher_arch,
    }


def tiny_model(arch: str, num_classes: int, channels: int = 3) -> nn.Module:
    """A random `arch` (seed 0) with BatchNorm statistics settled on 32 random images."""
    torch.manual_seed(0)
    model = models.build(arch, num_classes=num_classes, in_channels=channels)
    return settle_batchnorm(model, normalized(random_images(32, channels, seed=1)))


def export_tiny(out: Path, meta: dict, *, int8: bool = False) -> tuple[nn.Module, Path]:
    """tiny_model(meta's arch) exported to `out` (and `out`'s X.int8.onnx sibling with int8), gated on
    16 random test images; returns the PyTorch model and `out`."""
    channels, classes = meta["input_size"][0], meta["num_classes"]
    model = tiny_model(meta["arch"], classes, channels)
    images = normalized(random_images(16, channels))
    int8_out = out.with_name(out.name.removesuffix(".onnx") + ".int8.onnx") if int8 else None
    calibration = normalized(random_images(16, channels, seed=2)) if int8 else None
    export(model, meta, images, torch.arange(16) % classes, out, int8_out=int8_out, calibration_images=calibration)
    return model, out
