"""MLKD's strong view, made on the training device for a whole batch, with one random draw per image.

The source (Jin-Ying/Multi-Level-Logit-Distillation at 5ee473f, mdistiller/dataset/cifar100.py) makes
the strong view of an image with PIL: its own random crop of the zero-padded image and flip (drawn
independently of the weak view's), then RandAugment: 2 of FixMatch's 14 ops chosen with replacement,
each with a magnitude uniform in the op's range (the "10" of RandAugment(2, 10) is unused), then
Cutout of a square whose side is U(0, 0.5) of the image width, filled with (125, 123, 114). Here
every op runs on a uint8 batch [B, 3, H, W] with a magnitude per image and repeats PIL's arithmetic
(nearest-neighbour affine sampling in 16.16 fixed point, float32 blends, the rounded 3x3 smoothing),
so tests/test_strong.py compares each op with PIL pixel for pixel. Each family of ops (pixel maps,
blends, resamplings) runs once over the whole batch with per-image parameters and each image keeps
the result of the op it drew: no host synchronisation, no data-dependent shapes.
The draws come from the batch source's torch.Generator, so a resumed run makes the same views.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from rckd.data.augment import crop_flip, random_views

# FixMatch's RandAugment ops and magnitude ranges, in the order of the source's augment_list().
RANGES: dict[str, tuple[float, float]] = {
    "auto_contrast": (0, 1), "brightness": (0.05, 0.95), "color": (0.05, 0.95), "contrast": (0.05, 0.95),
    "equalize": (0, 1), "identity": (0, 1), "posterize": (4, 8), "rotate": (-30, 30),
    "sharpness": (0.05, 0.95), "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0, 256),
    "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3),
}
OPS = tuple(RANGES)
OPS_PER_IMAGE = 2
CUTOUT_MAX = 0.5  # the largest cutout side, as a fraction of the image width
CUTOUT_FILL = (125, 123, 114)  # RGB, before normalisation


class StrongDraws(NamedTuple):
    """Every random number of the strong views of a batch, one row per image."""

    offsets: Tensor  # int64 [B, 2]: the crop of the zero-padded image
    flips: Tensor  # bool [B]
    ops: Tensor  # int64 [B, OPS_PER_IMAGE]: indices into OPS, applied left to right
    levels: Tensor  # float64 [B, OPS_PER_IMAGE] in [0, 1): each magnitude's place in its op's range
    cutout: Tensor  # float64 [B, 3] in [0, 1): the side, and the centre's x and y


def draw(count: int, padding: int, generator: torch.Generator) -> StrongDraws:
    """The draws of `count` images, on the generator's device."""
    offsets, flips = random_views(count, padding, generator=generator)
    device = generator.device
    ops = torch.randint(0, len(OPS), (count, OPS_PER_IMAGE), generator=generator, device=device)
    levels = torch.rand((count, OPS_PER_IMAGE), generator=generator, device=device, dtype=torch.float64)
    cutout = torch.rand((count, 3), generator=generator, device=device, dtype=torch.float64)
    return StrongDraws(offsets, flips, ops, levels, cutout)


def strong_views(images: Tensor, count: int, part: slice, generator: torch.Generator, padding: int) -> Tensor:
    """The strong views of `images` (uint8 [b, 3, H, W]), the `part` of a global batch of `count`
    images whose draws are all made, so the generator advances alike in every process."""
    draws = draw(count, padding, generator)
    return strong_view(images, StrongDraws(*(values[part] for values in draws)), padding)


def strong_view(images: Tensor, draws: StrongDraws, padding: int) -> Tensor:
    """Crop and flip, RandAugment and Cutout of uint8 [B, 3, H, W] images as `draws` say."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(CUTOUT_FILL):
        raise ValueError(f"the strong view takes uint8 RGB images [B, 3, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    view = crop_flip(images, draws.offsets, draws.flips, padding)
    low, span = _on_device(images.device, "low"), _on_device(images.device, "span")
    for turn in range(OPS_PER_IMAGE):
        op = draws.ops[:, turn]
        view = apply_ops(view, op, low[op] + span[op] * draws.levels[:, turn])
    return cutout(view, draws.cutout)


def apply_ops(images: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """Image b through OPS[ops[b]] with magnitudes[b] (float64 [B]). The ops come in three families,
    each applied to the whole batch in one pass with per-image parameters: a pixel map (a lookup
    table per image and channel), a blend with a degenerate image (PIL's ImageEnhance), a resampling
    (an affine matrix per image). An image of another family gets the identity table, a blend factor
    of 1 or the identity matrix, each an exact no-op."""

    def drawn(family: str) -> Tensor:
        return torch.isin(ops, _on_device(ops.device, family))

    def pick(family: dict, default: Tensor, *args) -> Tensor:
        for name, make in family.items():
            chosen = (ops == OPS.index(name)).view(-1, *[1] * (default.dim() - 1))
            default = torch.where(chosen, make(*args), default)
        return default

    identity_table = _values(images, torch.long).expand(*images.shape[:2], 256)
    mapped = _lookup(images, pick(TABLES, identity_table, images, magnitudes))
    factors = torch.where(drawn("degenerates"), magnitudes, torch.ones_like(magnitudes))
    blended = _blend(pick(DEGENERATES, images, images), images, factors)
    moved = affine(images, pick(MATRICES, _matrix(magnitudes), images.shape, magnitudes))
    out = torch.where(_per_image(drawn("matrices")), moved, images)
    out = torch.where(_per_image(drawn("degenerates")), blended, out)
    return torch.where(_per_image(drawn("tables")), mapped, out)


def _per_image(values: Tensor) -> Tensor:
    return values[:, None, None, None]


# ------------------------------------------------------------------ pixel maps (ImageOps)

def _lookup(images: Tensor, table: Tensor) -> Tensor:
    """images[b, c] mapped through table[b, c] (int64 [B, C, 256], values in 0..255)."""
    return table.gather(2, images.flatten(2).long()).to(torch.uint8).view_as(images)


def _values(images: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.arange(256, dtype=dtype, device=images.device)


def auto_contrast(images: Tensor, magnitudes: Tensor) -> Tensor:
    """ImageOps.autocontrast's table: each channel stretched linearly from its [min, max] to [0, 255]."""
    flat = images.flatten(2)
    low, high = flat.amin(2).double()[..., None], flat.amax(2).double()[..., None]
    scale = torch.full_like(low, 255.0) / (high - low)  # not 255.0 / tensor: torch takes a reciprocal there
    offset = -low * scale
    values = _values(images, torch.float64)
    table = (values * scale + offset).trunc().clamp(0, 255)
    return torch.where(high > low, table, values).long()


def equalize(images: Tensor, magnitudes: Tensor) -> Tensor:
    """ImageOps.equalize's table: each channel's histogram equalised with PIL's integer steps."""
    flat = images.flatten(2).long()
    histogram = torch.zeros(*flat.shape[:2], 256, dtype=torch.long, device=images.device)
    histogram.scatter_add_(2, flat, torch.ones_like(flat))
    top_count = histogram.gather(2, flat.amax(2, keepdim=True))  # the last non-empty bin
    step = (flat.shape[2] - top_count) // 255
    below = histogram.cumsum(2) - histogram
    table = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    return torch.where(step > 0, table, _values(images, torch.long))


def posterize(images: Tensor, magnitudes: Tensor) -> Tensor:
    """ImageOps.posterize's table: values kept to their max(1, int(v)) high bits."""
    bits = magnitudes.long().clamp(1, 8)
    mask = 256 - (1 << (8 - bits))
    return (_values(images, torch.long) & mask[:, None, None]).expand(*images.shape[:2], 256)


def solarize(images: Tensor, magnitudes: Tensor) -> Tensor:
    """ImageOps.solarize's table: values at or above the threshold inverted."""
    values = _values(images, torch.long)
    table = torch.where(values < magnitudes[:, None, None], values, 255 - values)
    return table.expand(*images.shape[:2], 256)


TABLES = {"auto_contrast": auto_contrast, "equalize": equalize, "posterize": posterize, "solarize": solarize}


# ------------------------------------------------------------------ blends (ImageEnhance)

def _blend(degenerate: Tensor, images: Tensor, factors: Tensor) -> Tensor:
    """Image.blend(degenerate, images, factor) as PIL computes it: float32, truncated to uint8."""
    low = degenerate.float()
    mixed = low + _per_image(factors.float()) * (images.float() - low)
    return mixed.clamp(0, 255).to(torch.uint8)


def _gray(images: Tensor) -> Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point), [B, 1, H, W] int64."""
    red, green, blue = images.long().unbind(1)
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16)[:, None]


def brightness(images: Tensor) -> Tensor:
    """The degenerate image of ImageEnhance.Brightness: black."""
    return torch.zeros_like(images)


def color(images: Tensor) -> Tensor:
    """... of ImageEnhance.Color: the image in grey."""
    return _gray(images).to(torch.uint8).expand_as(images)


def contrast(images: Tensor) -> Tensor:
    """... of ImageEnhance.Contrast: the luma's mean, rounded half up, everywhere."""
    gray = _gray(images)
    total = gray.sum((1, 2, 3)).double()
    mean = total / torch.full_like(total, gray[0].numel())  # a true division, like PIL's
    return _per_image((mean + 0.5).trunc().to(torch.uint8)).expand_as(images)


def smooth(images: Tensor) -> Tensor:
    """ImageFilter.SMOOTH: the 3x3 kernel (1 1 1, 1 5 1, 1 1 1) / 13 on the interior pixels, summed in
    float32 in PIL's order (from the row below to the row above, +0.5 to round); borders unchanged."""
    side, centre = torch.tensor(1 / 13, dtype=torch.float32), torch.tensor(5 / 13, dtype=torch.float32)
    pixels = images.float()

    def row(rows: Tensor, middle: Tensor) -> Tensor:
        return rows[..., :-2] * side + rows[..., 1:-1] * middle + rows[..., 2:] * side

    total = 0.5 + row(pixels[:, :, 2:], side)
    total = total + row(pixels[:, :, 1:-1], centre)
    total = total + row(pixels[:, :, :-2], side)
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = total.clamp(0, 255).to(torch.uint8)
    return out


DEGENERATES = {"brightness": brightness, "color": color, "contrast": contrast, "sharpness": smooth}


# ------------------------------------------------------------------ geometry (Image.transform)

def affine(images: Tensor, matrix: Tensor) -> Tensor:
    """Image.transform(size, AFFINE, matrix[b]) with nearest-neighbour sampling and black fill: output
    pixel (x, y) takes input (a x + b y + c, d x + e y + f) for matrix rows (a, b, c, d, e, f), float64
    [B, 6]. PIL samples a pure scale or shift (b = d = 0) in double precision and anything else in 16.16
    fixed point, with pixel centres at +1/2; both are repeated here."""
    batch, channels, height, width = images.shape
    a, b, c, d, e, f = (column[:, None, None] for column in matrix.unbind(1))
    ys = torch.arange(height, device=images.device)[None, :, None]
    xs = torch.arange(width, device=images.device)[None, None, :]
    x_float = torch.floor(c + a * 0.5 + xs * a).expand(batch, height, width)
    y_float = torch.floor(f + e * 0.5 + ys * e).expand(batch, height, width)
    fixed = [torch.floor(value * 65536.0 + 0.5).long() for value in (a, b, d, e, c + a * 0.5 + b * 0.5,
                                                                      f + d * 0.5 + e * 0.5)]
    a_fix, b_fix, d_fix, e_fix, c_fix, f_fix = fixed
    x_fixed = (c_fix + ys * b_fix + xs * a_fix) >> 16
    y_fixed = (f_fix + ys * e_fix + xs * d_fix) >> 16
    scaling = (b == 0) & (d == 0)
    x_in = torch.where(scaling, x_float.long(), x_fixed)
    y_in = torch.where(scaling, y_float.long(), y_fixed)
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    index = (y_in.clamp(0, height - 1) * width + x_in.clamp(0, width - 1)).flatten(1)
    gathered = images.flatten(2).gather(2, index[:, None, :].expand(batch, channels, -1)).view_as(images)
    return torch.where(inside[:, None], gathered, torch.zeros_like(gathered))


def _matrix(magnitudes: Tensor, **entries: Tensor) -> Tensor:
    """Affine rows (a, b, c, d, e, f): the identity with `entries` replaced."""
    ones, zeros = torch.ones_like(magnitudes), torch.zeros_like(magnitudes)
    values = dict(a=ones, b=zeros, c=zeros, d=zeros, e=ones, f=zeros) | entries
    return torch.stack([values[name] for name in "abcdef"], 1)


def rotate(shape: torch.Size, magnitudes: Tensor) -> Tensor:
    """Image.rotate(v): v degrees counter-clockwise about the image centre, the matrix as PIL builds it."""
    height, width = shape[2:]
    degrees = torch.where(magnitudes < 0, magnitudes + 360.0, magnitudes)  # Python's v % 360 for |v| < 360
    radians = -(degrees * (math.pi / 180.0))
    cos, sin = radians.cos(), radians.sin()
    centre_x, centre_y = width / 2, height / 2
    shift_x = cos * -centre_x + sin * -centre_y + 0.0 + centre_x
    shift_y = -sin * -centre_x + cos * -centre_y + 0.0 + centre_y
    return _matrix(magnitudes, a=cos, b=sin, c=shift_x, d=-sin, e=cos, f=shift_y)


MATRICES: dict[str, Callable[[torch.Size, Tensor], Tensor]] = {
    "rotate": rotate,
    "shear_x": lambda shape, v: _matrix(v, b=v),
    "shear_y": lambda shape, v: _matrix(v, d=v),
    "translate_x": lambda shape, v: _matrix(v, c=v * shape[3]),  # v times the width, the source's TranslateX
    "translate_y": lambda shape, v: _matrix(v, f=v * shape[2]),
}


# ------------------------------------------------------------------ cutout

def cutout(images: Tensor, draws: Tensor) -> Tensor:
    """The source's Cutout(v) with v = 0.5 u0 for draws rows (u0, u1, u2): a square of side v * width
    filled with CUTOUT_FILL. Its centre is np.random.uniform(w), which is uniform(low=w, high=1): in
    (1, w], never near the left or top edge; ImageDraw.rectangle truncates the corners to integers and
    includes both, so the square covers int(side) + 1 pixels a side where the image does not clip it."""
    batch, _, height, width = images.shape
    side = draws[:, 0] * CUTOUT_MAX * width
    centre_x = width + (1.0 - width) * draws[:, 1]
    centre_y = height + (1.0 - height) * draws[:, 2]
    left = (centre_x - side / 2.0).clamp(min=0).trunc()
    top = (centre_y - side / 2.0).clamp(min=0).trunc()
    right = torch.minimum(left + side, torch.full_like(side, width)).trunc()
    bottom = torch.minimum(top + side, torch.full_like(side, height)).trunc()
    xs = torch.arange(width, device=images.device)[None, None, :]
    ys = torch.arange(height, device=images.device)[None, :, None]
    covered = ((xs >= left[:, None, None]) & (xs <= right[:, None, None]) & (ys >= top[:, None, None])
               & (ys <= bottom[:, None, None]) & (side > 0)[:, None, None])
    fill = _on_device(images.device, "fill")[None, :, None, None]
    return torch.where(covered[:, None], fill, images)


@functools.cache
def _constants(device: torch.device) -> dict[str, Tensor]:
    """The fixed tensors of the strong view on `device`, made once: a tensor built from a Python list
    is a host-to-device copy, which every batch would otherwise pay (and wait for) again. Each family's
    op indices are under its name (tables, degenerates, matrices)."""
    families = {"tables": TABLES, "degenerates": DEGENERATES, "matrices": MATRICES}
    return {
        "low": torch.tensor([low for low, _ in RANGES.values()], dtype=torch.float64, device=device),
        "span": torch.tensor([float(high - low) for low, high in RANGES.values()], dtype=torch.float64,
                             device=device),
        "fill": torch.tensor(CUTOUT_FILL, dtype=torch.uint8, device=device),
        **{name: torch.tensor([OPS.index(op) for op in family], device=device) for name, family in families.items()},
    }


def _on_device(device: torch.device, name: str) -> Tensor:
    return _constants(device)[name]
