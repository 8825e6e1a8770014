"""Seeded hierarchical toy data: K superclasses of M classes, 32x32 RGB uint8.

Every image is built from smooth (low-frequency) fields:

    image = window(superclass prototype + class perturbation, random shift)
            + difficulty * (smooth nuisance + pixel noise)

so sibling classes share most of their appearance and are confused with each other (the teacher's
non-target probabilities carry structure: "dark knowledge"), while classes of different superclasses
are easy to tell apart. Prototypes are left-right symmetric and smooth, so a horizontal flip keeps
an image's class exactly and a 4-pixel crop shift keeps it approximately, like natural images under
the standard CIFAR augmentation. `difficulty` scales the per-sample nuisance and pixel noise
relative to the fixed class perturbation: 0 gives noise-free class prototypes (only shifted),
larger values make sibling classes overlap more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rckd.data.options import SyntheticOptions

CHANNELS = 3
SUPERCLASS_GRID = 4  # coarse grid of a superclass prototype (control points ~13 px apart)
CLASS_GRID = 6  # class perturbations and nuisances vary on a slightly finer scale
CLASS_SPREAD = 0.25  # class perturbation amplitude relative to the superclass prototype
NUISANCE = 0.6  # per-sample smooth nuisance at difficulty 1
PIXEL_NOISE = 0.3  # per-pixel noise at difficulty 1
GREY_LEVEL, GREY_SCALE = 128.0, 45.0  # field value v maps to the pixel 128 + 45 v

# Independent random streams, so e.g. the test set does not change when train_per_class does.
_PROTOTYPES, _TRAIN, _TEST = range(3)


def class_names(options: SyntheticOptions) -> list[str]:
    """'s03_c07' is class 7 of superclass 3; label = superclass * classes_per_superclass + class."""
    return [
        f"s{superclass:02d}_c{member:02d}"
        for superclass in range(options.num_superclasses)
        for member in range(options.classes_per_superclass)
    ]


def generate(options: SyntheticOptions) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images uint8 [N,3,S,S], labels int64 [N]), "test": ...}, samples in shuffled order."""
    prototypes = _class_prototypes(options, _generator(options.seed, _PROTOTYPES))
    return {
        "train": _samples(prototypes, options, options.train_per_class, _generator(options.seed, _TRAIN)),
        "test": _samples(prototypes, options, options.test_per_class, _generator(options.seed, _TEST)),
    }


def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _upsampling_matrix(grid: int, size: int) -> torch.Tensor:
    """[size, grid]: bicubic interpolation along one axis, so a 2-D upsample is two matmuls."""
    identity = torch.eye(grid)[None, None]
    return F.interpolate(identity, size=(size, grid), mode="bicubic", align_corners=True)[0, 0]


def _smooth_fields(count: int, grid: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 3, size, size] upsampled Gaussian noise (std about 0.8: interpolation smooths)."""
    coarse = torch.randn(count, CHANNELS, grid, grid, generator=generator)
    upsample = _upsampling_matrix(grid, size)
    return upsample @ coarse @ upsample.T


def _prototype_fields(count: int, grid: int, canvas: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 3, canvas, canvas] left-right symmetric smooth fields with unit std each."""
    fields = _smooth_fields(count, grid, canvas, generator)
    fields = (fields + fields.flip(-1)) / 2
    return fields / fields.std(dim=(1, 2, 3), keepdim=True)


def _class_prototypes(options: SyntheticOptions, generator: torch.Generator) -> torch.Tensor:
    """[K*M, 3, canvas, canvas]: each superclass prototype plus a smaller per-class perturbation."""
    superclasses = _prototype_fields(options.num_superclasses, SUPERCLASS_GRID, options.canvas, generator)
    num_classes = options.num_superclasses * options.classes_per_superclass
    perturbations = _prototype_fields(num_classes, CLASS_GRID, options.canvas, generator)
    return superclasses.repeat_interleave(options.classes_per_superclass, dim=0) + CLASS_SPREAD * perturbations


def _samples(prototypes: torch.Tensor, options: SyntheticOptions, per_class: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    num_classes = prototypes.shape[0]
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=generator)]
    count = labels.numel()
    # Each sample sees its class prototype through a randomly placed window of the canvas.
    size = options.image_size
    shifts = torch.randint(0, 2 * options.max_shift + 1, (count, 2), generator=generator)
    rows = (shifts[:, 0, None] + torch.arange(size))[:, :, None]  # [N, S, 1]
    cols = (shifts[:, 1, None] + torch.arange(size))[:, None, :]  # [N, 1, S]
    windows = prototypes.permute(0, 2, 3, 1)[labels[:, None, None], rows, cols].permute(0, 3, 1, 2)
    nuisance = NUISANCE * _smooth_fields(count, CLASS_GRID, size, generator)
    noise = PIXEL_NOISE * torch.randn(windows.shape, generator=generator)
    images = windows + options.difficulty * (nuisance + noise)
    pixels = (GREY_LEVEL + GREY_SCALE * images).round().clamp(0, 255).to(torch.uint8)
    return pixels.contiguous(), labels


def write_image_folder(folder: Path, options: SyntheticOptions, quality: int = 95) -> dict[str, int]:
    """The synthetic data set as JPEG files in ImageNet's layout (folder/train/<class>/*.jpeg and
    folder/val/<class>/*.jpeg): a small stand-in for ImageNet in tests and benchmarks. Returns the
    number of files per split."""
    from PIL import Image

    names = class_names(options)
    counts = {}
    for split, (images, labels) in generate(options).items():
        target = folder / ("train" if split == "train" else "val")
        for number, (image, label) in enumerate(zip(images, labels.tolist())):
            path = target / names[label] / f"{number:06d}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=quality)
        counts[split] = len(labels)
    return counts
