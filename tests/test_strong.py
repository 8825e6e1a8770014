"""MLKD's strong view (rckd.data.strong): every op equals PIL's on the source's calls, pixel for pixel,
and the batched views are per image, deterministic from the generator, and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from rckd.data import strong
from rckd.data.augment import TrainBatches, crop_flip

SIZE = 32


def make_images(count: int = 12, seed: int = 0) -> torch.Tensor:
    """uint8 [count, 3, SIZE, SIZE]: noise in a random sub-range per image and channel (so autocontrast
    and equalize have work to do), smooth gradients plus noise, and a flat image."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 120, (count, 3, 1, 1), generator=generator)
    width = torch.randint(1, 136, (count, 3, 1, 1), generator=generator)
    noise = low + (torch.rand(count, 3, SIZE, SIZE, generator=generator) * width).long()
    ramp = torch.linspace(0, 1, SIZE)
    gradient = (ramp[None, None, :, None] * 90 + ramp[None, None, None, :] * 60 + noise[:, :, :1, :1] * 0.4)
    images = torch.where(torch.arange(count)[:, None, None, None] % 2 == 0, noise, gradient.long())
    images[-1] = 77  # flat: autocontrast and equalize leave it alone
    return images.clamp(0, 255).to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


# The source's ops (mdistiller/dataset/cifar100.py at 5ee473f) as PIL calls.
PIL_OPS = {
    "auto_contrast": lambda img, v: ImageOps.autocontrast(img),
    "brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "equalize": lambda img, v: ImageOps.equalize(img),
    "identity": lambda img, v: img,
    "posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "rotate": lambda img, v: img.rotate(v),
    "sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "shear_x": lambda img, v: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda img, v: ImageOps.solarize(img, v),
    "translate_x": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0)),
    "translate_y": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1])),
}


def pil_cutout(img: Image.Image, u: tuple[float, float, float]) -> Image.Image:
    """The source's Cutout(img, 0.5 u0) with np.random.uniform(w) and (h) returning w + (1 - w) u1 etc."""
    v = 0.5 * u[0]
    if v <= 0:
        return img
    v = v * img.size[0]
    w, h = img.size
    x0, y0 = w + (1.0 - w) * u[1], h + (1.0 - h) * u[2]
    x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return img


def test_the_ops_are_fixmatchs_fourteen_with_the_sources_ranges():
    assert len(strong.OPS) == 14 and set(strong.OPS) == set(PIL_OPS)
    assert strong.RANGES["rotate"] == (-30, 30) and strong.RANGES["solarize"] == (0, 256)
    assert strong.RANGES["posterize"] == (4, 8) and strong.RANGES["brightness"] == (0.05, 0.95)


@pytest.mark.parametrize("name", [name for name in strong.OPS if name != "identity"])
def test_each_op_equals_pil_pixel_for_pixel(name):
    images = make_images()
    low, high = strong.RANGES[name]
    generator = torch.Generator().manual_seed(len(name))
    magnitudes = low + (high - low) * torch.rand(len(images), generator=generator, dtype=torch.float64)
    ours = strong.apply_ops(images, torch.full((len(images),), strong.OPS.index(name)), magnitudes)
    assert ours.dtype == torch.uint8 and ours.shape == images.shape
    for image, magnitude, mine in zip(images, magnitudes.tolist(), ours):
        expected = from_pil(PIL_OPS[name](to_pil(image), magnitude))
        assert torch.equal(mine, expected), (name, magnitude, (mine != expected).sum().item())
    if name not in ("auto_contrast", "equalize"):
        assert not torch.equal(ours, images)  # the op does something


def test_apply_ops_gives_each_image_the_op_it_drew():
    images = make_images(14)
    ops = torch.arange(14).flip(0)
    magnitudes = torch.tensor([strong.RANGES[strong.OPS[op]][0] * 0.3 + strong.RANGES[strong.OPS[op]][1] * 0.7
                               for op in ops.tolist()], dtype=torch.float64)
    out = strong.apply_ops(images, ops, magnitudes)
    for image, op, magnitude, mine in zip(images, ops.tolist(), magnitudes.tolist(), out):
        assert torch.equal(mine, from_pil(PIL_OPS[strong.OPS[op]](to_pil(image), magnitude)))


def test_cutout_equals_pil_draw():
    images = make_images(40)
    draws = torch.rand(40, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    draws[0] = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)  # side 0: no cutout at all
    draws[1, 0] = 1e-3  # a side under one pixel still fills the one pixel the rectangle covers
    ours = strong.cutout(images, draws)
    for image, u, mine in zip(images, draws.tolist(), ours):
        assert torch.equal(mine, from_pil(pil_cutout(to_pil(image), u)))
    assert torch.equal(ours[0], images[0]) and (ours[1] != images[1]).any(0).sum() == 1


def test_strong_view_equals_the_sources_pil_pipeline():
    images = make_images(24)
    draws = strong.draw(24, 4, torch.Generator().manual_seed(5))
    ours = strong.strong_view(images, draws, 4)
    cropped = crop_flip(images, draws.offsets, draws.flips, 4)
    for b in range(24):
        img = to_pil(cropped[b])
        for turn in range(strong.OPS_PER_IMAGE):
            name = strong.OPS[draws.ops[b, turn].item()]
            low, high = strong.RANGES[name]
            img = PIL_OPS[name](img, low + float(high - low) * draws.levels[b, turn].item())
        expected = from_pil(pil_cutout(img, tuple(draws.cutout[b].tolist())))
        assert torch.equal(ours[b], expected), b


def test_draws_are_per_image_and_deterministic_from_the_seed():
    images = make_images(1).expand(64, -1, -1, -1)  # one image 64 times: only the draws differ
    first = strong.strong_views(images, 64, slice(None), torch.Generator().manual_seed(0), 4)
    again = strong.strong_views(images, 64, slice(None), torch.Generator().manual_seed(0), 4)
    other = strong.strong_views(images, 64, slice(None), torch.Generator().manual_seed(1), 4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len({view.numpy().tobytes() for view in first}) == 64
    draws = strong.draw(4096, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.ops.flatten(), minlength=14)
    assert counts.min() > 0.8 * 8192 / 14 and counts.max() < 1.2 * 8192 / 14


def test_a_process_part_has_the_draws_of_the_global_batch():
    images = make_images(8)
    whole = strong.strong_views(images, 8, slice(None), torch.Generator().manual_seed(2), 4)
    second_half = strong.strong_views(images[4:], 8, slice(4, 8), torch.Generator().manual_seed(2), 4)
    assert torch.equal(whole[4:], second_half)


def test_non_rgb_images_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        strong.strong_view(make_images(2)[:, :1], strong.draw(2, 4, torch.Generator()), 4)


def two_view_batches(images: torch.Tensor, seed: int = 0) -> TrainBatches:
    labels = torch.arange(len(images)) % 10
    return TrainBatches(images, labels, 8, [0.5] * 3, [0.25] * 3, drop_last=True, second_view=strong.strong_views,
                        generator=torch.Generator().manual_seed(seed))


def test_train_batches_carry_a_strong_view_that_resumes_mid_epoch():
    images = make_images(40)
    original = two_view_batches(images)
    iterator = original.epoch()
    first = [next(iterator) for _ in range(2)]
    assert all(batch.strong.shape == batch.x.shape and not torch.equal(batch.strong, batch.x) for batch in first)
    state = original.state_dict()
    rest = list(iterator)
    resumed = two_view_batches(images, seed=99)
    resumed.load_state_dict(state)
    again = list(resumed.epoch())
    assert len(again) == len(rest) == 3
    for mine, theirs in zip(again, rest):
        assert torch.equal(mine.x, theirs.x) and torch.equal(mine.strong, theirs.strong)
        assert torch.equal(mine.index, theirs.index)
    plain = TrainBatches(images, torch.arange(40) % 10, 8, [0.5] * 3, [0.25] * 3, drop_last=True)
    assert next(plain.epoch()).strong is None
