"""The teacher logit bank: exact lookups, the same training as the live teacher, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import option_args, read_history, run_config

from rckd import bank, data
from rckd.checkpoint import load_model, load_torch
from rckd.cli import main as cli
from rckd.data.augment import TrainBatches, all_views, crop_flip, normalize
from rckd.data.options import crop_padding, view_count
from rckd.errors import RckdError
from rckd.train import TrainConfig, train

OPTIONS = {"num_superclasses": 3, "classes_per_superclass": 3, "train_per_class": 12, "test_per_class": 6,
           "image_size": 16, "seed": 0}
OPTION_ARGS = option_args(OPTIONS)
PADDING = crop_padding("synthetic", OPTIONS)  # 16x16 images: 2 pixels, 5 x 5 offsets x 2 flips = 50 views


def config(root: Path, out: Path, **changes) -> TrainConfig:
    return run_config(root, out, OPTIONS, **{"batch_size": 16, **changes})


@pytest.fixture(scope="module")
def setup(synthetic_cache, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data root, teacher model.pt, its bank): a teacher of 9 classes, whose bank of every view is small."""
    root, out = synthetic_cache(OPTIONS), tmp_path_factory.mktemp("bank")
    train(config(root, out / "teacher", arch="resnet14", epochs=3))
    teacher = out / "teacher" / "model.pt"
    assert cli(["bank", "--teacher", str(teacher), "--dataset", "synthetic", "--data-root", str(root),
                *OPTION_ARGS, "--out", str(out / "bank.pt"), "--device", "cpu", "--batch-size", "40"]) == 0
    return root, teacher, out / "bank.pt"


def test_bank_holds_the_teachers_fp32_logits_of_every_view(setup):
    root, teacher_path, bank_path = setup
    teacher, _ = load_model(teacher_path)
    split = data.load("synthetic", root, "train", **OPTIONS)
    payload = load_torch(bank_path)
    logits = payload["logits"]
    views_per_image = view_count(PADDING)
    assert PADDING == 2 and logits.dtype == torch.float16 and logits.shape == (len(split.images), views_per_image, 9)
    offsets, flips = all_views(PADDING)
    for image in (0, 7, len(split.images) - 1):
        views = crop_flip(split.images[image].expand(views_per_image, -1, -1, -1), offsets, flips, PADDING)
        with torch.no_grad():
            expected = teacher(normalize(views, split.mean, split.std))
        # float16 storage: within half a unit in the last place (2^-11 relative) of the fp32 logits
        torch.testing.assert_close(logits[image].float(), expected, rtol=2**-11, atol=1e-6)
    assert not torch.equal(logits[0, 0], logits[0, 1])  # views differ


def test_lookup_serves_each_batch_its_views(setup):
    root, teacher_path, bank_path = setup
    split = data.load("synthetic", root, "train", **OPTIONS)
    lookup = bank.load(bank_path, teacher_path, split, PADDING, torch.device("cpu"), "synthetic", OPTIONS)
    teacher, _ = load_model(teacher_path)
    batches = TrainBatches(split.images, split.labels, 16, split.mean, split.std, drop_last=True, padding=PADDING)
    batch = next(iter(batches))
    with torch.no_grad():
        live = teacher(batch.x)
    served = lookup(batch)
    assert served.dtype == torch.float32
    torch.testing.assert_close(served, live, rtol=2**-11, atol=1e-6)


# A tamer RCKD weight than the default (effective 80) keeps this tiny student out of the chaotic regime
# where any perturbation, float16 rounding included, grows from step to step.
@pytest.mark.parametrize("method, params", [("kd", {}), ("rckd", {"rc": 0.5})])
def test_distilling_from_the_bank_matches_the_live_teacher(setup, tmp_path, method, params):
    root, teacher, bank_path = setup
    common = dict(method=method, params=params, teacher=teacher, epochs=3, lr=0.01)
    live = train(config(root, tmp_path / "live", **common))
    banked = train(config(root, tmp_path / "bank", teacher_bank=bank_path, **common))
    assert (live.teacher_bank, banked.teacher_bank) == (False, True)
    for row_live, row_bank in zip(read_history(tmp_path / "live"), read_history(tmp_path / "bank")):
        for key in row_live:
            if key.startswith("loss_"):  # float16 soft targets move a loss by its rounding, not more
                assert float(row_bank[key]) == pytest.approx(float(row_live[key]), rel=2e-3, abs=2e-3), key
        # one test image of the 54 may flip between two near-tied classes
        assert abs(float(row_bank["test_top1"]) - float(row_live["test_top1"])) <= 100 / 54 + 1e-3  # 4 decimals


def test_a_stale_corrupt_or_foreign_bank_is_refused_with_the_rebuild_command(setup, tmp_path):
    root, teacher, bank_path = setup
    other_teacher = tmp_path / "other" / "model.pt"
    train(config(root, other_teacher.parent, arch="resnet8", epochs=1))
    with pytest.raises(RckdError, match=r"another teacher_sha256.*rebuild it:\n  python -m rckd bank --teacher"):
        train(config(root, tmp_path / "stale", method="kd", teacher=other_teacher, teacher_bank=bank_path))

    payload = load_torch(bank_path)
    payload["logits"][3, 5, 2] += 1  # one logit changed: the checksum no longer matches
    corrupt = tmp_path / "corrupt.pt"
    torch.save(payload, corrupt)
    with pytest.raises(RckdError, match="corrupt.*rebuild it"):
        train(config(root, tmp_path / "corrupt", method="kd", teacher=teacher, teacher_bank=corrupt))

    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(teacher.read_bytes())  # a model file, not a bank
    with pytest.raises(RckdError, match="not an rckd teacher bank"):
        train(config(root, tmp_path / "foreign", method="kd", teacher=teacher, teacher_bank=foreign))


def test_the_bank_is_refused_for_other_data_options(setup, tmp_path):
    root, teacher, bank_path = setup
    split = data.load("synthetic", root, "train", **OPTIONS)
    with pytest.raises(RckdError, match="another data_options"):
        bank.load(bank_path, teacher, split, PADDING, torch.device("cpu"), "synthetic", {**OPTIONS, "difficulty": 2.0})


def test_bank_fallback_runs_the_teacher_live_when_the_bank_does_not_fit(setup, tmp_path, monkeypatch, capsys):
    root, teacher, bank_path = setup
    monkeypatch.setattr(bank, "fits_in_memory", lambda size, device: (False, f"teacher bank of {size} B does not fit"))
    metrics = train(config(root, tmp_path, method="kd", teacher=teacher, teacher_bank=bank_path, bank_fallback=True,
                           epochs=1))
    assert metrics.teacher_bank is False
    assert "does not fit: running the teacher live instead" in capsys.readouterr().out


def test_crop_padding_is_cifars_or_the_synthetic_shift_range():
    assert crop_padding("cifar100", {}) == crop_padding("fashion_mnist", {}) == 4 and view_count(4) == 162
    assert crop_padding("synthetic", {}) == 4 and crop_padding("synthetic", {"image_size": 16}) == 2


def test_bank_size_and_memory_budget():
    assert bank.size_bytes(50_000, 100, 4) == 50_000 * 162 * 100 * 2  # the CIFAR-100 bank: 1.51 GiB
    fits, line = bank.fits_in_memory(1, torch.device("cpu"))
    assert fits and "available host memory" in line
    fits, line = bank.fits_in_memory(1 << 60, torch.device("cpu"))
    assert not fits and "does not fit" in line
