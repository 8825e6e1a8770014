"""ImageNet-style streamed data and data-parallel training (torchrun, gloo on the CPU).

A tiny ImageFolder of JPEGs (the synthetic classes written as files) stands in for ImageNet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import read_history

from rckd import data, distributed
from rckd.cli import main as cli
from rckd.errors import RckdError
from rckd.train import TrainConfig, train
from rckd.data import imagefolder
from rckd.data.augment import TrainBatches
from rckd.data.options import make_options
from rckd.data.synthetic import write_image_folder

TESTS = Path(__file__).parent
ENTRY = TESTS / "ddp_entry.py"
# 4 classes x 24 training images (6 total batches of 16 per epoch), 4 x 9 = 36 validation images:
# 2 processes score 18 each, so an accuracy from one shard alone would be visible.
FOLDER_OPTIONS = {"num_superclasses": 2, "classes_per_superclass": 2, "train_per_class": 24, "test_per_class": 9,
                  "image_size": 32}
SIZES = ["--data-option", "image_size=32", "--data-option", "resize_size=36"]
OPTIONS = {"image_size": 32, "resize_size": 36}


@pytest.fixture(scope="session")
def root(built_once) -> Path:
    """A data root holding the ImageFolder `imagenet` (read-only: a test that writes an index links it)."""

    def build(where: Path) -> None:
        write_image_folder(where / "imagenet", make_options(FOLDER_OPTIONS))
        (where / "complete").touch()

    return built_once("imagenet-folder", build, "complete")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}


def _train_command(root: Path, out: Path, processes: int, arch: str = "linear_probe", *extra: str) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--standalone"] if processes > 1 else [sys.executable])
    return [*launcher, str(ENTRY), "train", "--arch", arch, "--dataset", "imagenet", "--data-root", str(root),
            *SIZES, "--out", str(out), "--batch-size", "16", "--milestones", "2", "--device", "cpu",
            "--threads", "1", *extra]


def _train(root: Path, out: Path, processes: int, arch: str = "linear_probe", *extra: str,
           epochs: int = 2) -> subprocess.CompletedProcess:
    done = subprocess.run(_train_command(root, out, processes, arch, "--epochs", str(epochs), *extra),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="session")
def one_process_probe(root, built_once) -> Path:
    """A linear_probe trained with CE by one process: the reference of the two-process run, and a teacher."""
    return built_once("one-process-probe", lambda out: _train(root, out, 1), "model.pt")


@pytest.mark.slow(20)
def test_two_processes_train_and_learn_ctkds_temperature_exactly_like_one(root, one_process_probe, tmp_path):
    """No BatchNorm (linear_probe): DDP's averaged gradients equal the one-process gradient of the total
    batch, and both see the same images under the same crops, so only float rounding differs. CTKD's
    temperature is outside the DDP module: each process averages its gradient, so two processes learn the
    same temperature as one too."""
    teacher = ["--method", "ctkd", "--param", "curriculum=1", "--teacher", str(one_process_probe / "model.pt")]
    _train(root, tmp_path / "one", 1, "linear_probe", *teacher)
    _train(root, tmp_path / "two", 2, "linear_probe", *teacher)
    one, two = _weights(tmp_path / "one" / "model.pt"), _weights(tmp_path / "two" / "model.pt")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-6)
    for row_one, row_two in zip(read_history(tmp_path / "one"), read_history(tmp_path / "two"), strict=True):
        for loss in ("loss_ce", "loss_kd"):
            assert abs(float(row_one[loss]) - float(row_two[loss])) < 1e-5, loss
        assert row_one["train_top1"] == row_two["train_top1"] and row_one["test_top1"] == row_two["test_top1"]
        assert float(row_one["temperature"]) == pytest.approx(float(row_two["temperature"]), abs=1e-5)
    assert float(row_one["temperature"]) != pytest.approx(15.621172, abs=1e-4)  # it did move


@pytest.mark.slow(25)
def test_sigterm_to_torchrun_resumes_to_the_same_weights(root, tmp_path):
    """torchrun forwards SIGTERM to its processes: they agree to stop, rank 0 writes resume.pt, and
    the same command continues the run to the weights of an uninterrupted one."""
    _train(root, tmp_path / "whole", 2, "resnet8", epochs=4)
    out = tmp_path / "cut"
    command = _train_command(root, out, 2, "resnet8", "--epochs", "4", "--checkpoint-every", "100")
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch=1 "):
            process.send_signal(signal.SIGTERM)
            break
    lines += process.stdout.readlines()
    assert process.wait(timeout=120) != 0, "".join(lines)
    assert (out / "resume.pt").exists() and not (out / "model.pt").exists(), "".join(lines)
    _train(root, out, 2, "resnet8", epochs=4)
    whole, resumed = _weights(tmp_path / "whole" / "model.pt"), _weights(out / "model.pt")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_stream_parts_of_every_rank_make_up_the_one_process_batches(root):
    splits = data.load_splits("imagenet", root, **OPTIONS)
    cpu = torch.device("cpu")
    whole = list(imagefolder.StreamBatches(splits["train"], 16, seed=3, device=cpu))
    parts = [list(imagefolder.StreamBatches(splits["train"], 8, seed=3, device=cpu, rank=rank, world=2,
                                            workers=2 * rank))  # worker processes must not change a view
             for rank in range(2)]
    assert len(whole) == len(parts[0]) == 96 // 16
    for full, first, second in zip(whole, *parts):
        assert torch.equal(torch.cat([first.index, second.index]), full.index)
        assert torch.equal(torch.cat([first.x, second.x]), full.x)
        assert torch.equal(torch.cat([first.y, second.y]), full.y)
    again = list(imagefolder.StreamBatches(splits["train"], 16, seed=3, device=cpu))
    assert all(torch.equal(a.x, b.x) for a, b in zip(whole, again))


def test_stream_state_restores_the_rest_of_an_epoch_and_the_next_one(root):
    split = data.load_splits("imagenet", root, **OPTIONS)["train"]
    reference = imagefolder.StreamBatches(split, 16, seed=0, device=torch.device("cpu"))
    first_epoch = list(reference)
    second_epoch = list(reference)
    assert not torch.equal(first_epoch[0].index, second_epoch[0].index)  # a fresh permutation per epoch
    stream = imagefolder.StreamBatches(split, 16, seed=0, device=torch.device("cpu"))
    iterator = iter(stream)
    next(iterator), next(iterator)
    resumed = imagefolder.StreamBatches(split, 16, seed=0, device=torch.device("cpu"))
    resumed.load_state_dict(stream.state_dict())
    rest = list(resumed) + list(resumed)
    expected = first_epoch[2:] + second_epoch
    assert len(rest) == len(expected)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.index, b.index) for a, b in zip(rest, expected))


def test_in_memory_batches_split_among_ranks_like_streamed_ones():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40)

    def batches(rank: int, world: int) -> list:
        generator = torch.Generator().manual_seed(5)
        return list(TrainBatches(images, labels, 8 // world, [0.5] * 3, [0.2] * 3, generator=generator,
                                 drop_last=True, rank=rank, world=world, padding=1))

    whole, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    for full, a, b in zip(whole, first, second):
        assert torch.equal(torch.cat([a.x, b.x]), full.x) and torch.equal(torch.cat([a.view, b.view]), full.view)


def test_train_and_test_views_follow_the_imagenet_recipe(root):
    split = data.load_splits("imagenet", root, image_size=24, resize_size=28)["test"]
    image = imagefolder.decode(split.folder / split.files[0])
    view = imagefolder.eval_view(split.folder / split.files[0], split.options)
    assert view.shape == (3, 24, 24) and view.dtype == torch.uint8
    from torchvision.transforms.v2 import functional as TF

    expected = TF.center_crop(TF.resize(image, [28], antialias=True), [24, 24])
    assert torch.equal(view, expected)
    import random

    for seed in range(200):  # every crop lies inside the image, covers >= min_scale of it, ratio in [3/4, 4/3]
        top, left, h, w = imagefolder.random_box(30, 40, 0.08, random.Random(seed))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert h * w >= 0.08 * 1200 * 0.9 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_missing_imagenet_says_where_and_in_which_layout(tmp_path, capsys):
    prepare = ["prepare", "--dataset", "imagenet", "--data-root", str(tmp_path)]
    assert cli(prepare) == 2
    message = capsys.readouterr().err
    assert f"ImageNet not usable at {tmp_path.resolve()}/imagenet" in message
    assert "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG" in message
    (tmp_path / "imagenet" / "train" / "n01").mkdir(parents=True)
    (tmp_path / "imagenet" / "train" / "n01" / "a.JPEG").write_bytes(b"")
    (tmp_path / "imagenet" / "val" / "n02").mkdir(parents=True)
    assert cli(prepare) == 2 and "other class folders than train/" in capsys.readouterr().err


def test_index_is_checked_and_a_teacher_bank_is_refused(root, tmp_path, capsys):
    (tmp_path / "imagenet").symlink_to(root / "imagenet")
    index = imagefolder.write_index(tmp_path, "imagenet")
    saved = torch.load(index, weights_only=True)
    assert saved["classes"] == sorted(saved["classes"]) and len(saved["train_files"]) == 96
    torch.save({**saved, "train_labels": [0] * 96}, index)
    with pytest.raises(Exception, match="not a valid image index"):
        data.load_splits("imagenet", tmp_path)
    assert cli(["train", "--arch", "resnet8", "--dataset", "imagenet", "--data-root", str(root), "--out",
                str(tmp_path / "x"), "--method", "kd", "--teacher", "t.pt", "--teacher-bank", "b.pt"]) == 2
    assert "no teacher bank" in capsys.readouterr().err


def test_unequal_batch_split_is_refused(root, tmp_path, monkeypatch):
    """As process 0 of 2 (what torchrun starts), a total batch that does not divide stops before training."""
    monkeypatch.setattr(distributed, "join", lambda device: (distributed.Group(0, 2, 0), torch.device("cpu")))
    settings = dict(arch="resnet8", dataset="imagenet", data_root=root, data_options=OPTIONS, out=tmp_path / "odd",
                    batch_size=15, epochs=1, device="cpu")
    with pytest.raises(RckdError, match="batch_size 15 \\(the total\\) must divide among 2 processes"):
        train(TrainConfig(**settings))
    assert not (tmp_path / "odd" / "model.pt").exists()
