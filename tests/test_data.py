"""rckd.data: data sets, the cache, `rckd prepare`, and on-device augmentation."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pickle
import shlex
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import chisquare
from torchvision.datasets import CIFAR100

from rckd import cli, data
from rckd.data import augment, cache, datasets, synthetic
from rckd.data import options as data_options
from rckd.data.prepare import add_arguments as add_prepare_arguments
from rckd.errors import RckdError

SMALL = dict(num_superclasses=3, classes_per_superclass=4, train_per_class=5, test_per_class=2)


# ---------------------------------------------------------------- augmentation


def _torchvision_view(image_u8: torch.Tensor, offset: tuple[int, int], flip: bool, padding: int,
                      mean, std) -> torch.Tensor:
    """RandomCrop(size, padding) + RandomHorizontalFlip + ToTensor + Normalize with fixed choices."""
    array = image_u8.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    height, width = image_u8.shape[1:]
    picture = TF.crop(TF.pad(picture, padding), offset[0], offset[1], height, width)
    if flip:
        picture = TF.hflip(picture)
    return TF.normalize(TF.to_tensor(picture), mean, std)


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28)])
def test_crop_flip_matches_torchvision_transforms(channels, size):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, channels, size, size), dtype=torch.uint8, generator=generator)
    offsets = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0], [4, 4], [1, 7],
                            [7, 2], [3, 5], [2, 2], [6, 0], [5, 3], [0, 6]])
    flips = torch.tensor([False, True] * 6)
    mean, std = (0.5071, 0.4867, 0.4408)[:channels], (0.2675, 0.2565, 0.2761)[:channels]
    ours = augment.normalize(augment.crop_flip(images, offsets, flips, padding=4), mean, std)
    expected = torch.stack([
        _torchvision_view(image, tuple(offset.tolist()), bool(flip), 4, mean, std)
        for image, offset, flip in zip(images, offsets, flips)
    ])
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_crop_flip_centre_offset_is_identity_and_flip_mirrors():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    centre = torch.full((4, 2), 2)
    assert torch.equal(augment.crop_flip(images, centre, torch.zeros(4, dtype=torch.bool), padding=2), images)
    assert torch.equal(augment.crop_flip(images, centre, torch.ones(4, dtype=torch.bool), padding=2),
                       images.flip(-1))


def test_random_views_cover_all_81_crops_uniformly_and_flip_half():
    draws = 81 * 200
    offsets, flips = augment.random_views(draws, 4, generator=torch.Generator().manual_seed(123))
    assert offsets.dtype == torch.int64 and offsets.shape == (draws, 2) and flips.dtype == torch.bool
    assert offsets.min() == 0 and offsets.max() == 8
    counts = torch.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81)
    assert counts.numel() == 81 and counts.min() > 0
    assert chisquare(counts.numpy()).pvalue > 0.01
    assert abs(flips.float().mean().item() - 0.5) < 0.02


def _labelled_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images without black pixels (so zero padding is recognisable), labelled by index."""
    images = torch.randint(1, 256, (count, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return images, torch.arange(count)


def test_train_batches_visit_every_sample_once_per_epoch():
    images, ids = _labelled_images(50)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batches = augment.TrainBatches(images, ids, 16, mean, std, augment=False,
                                   generator=torch.Generator().manual_seed(0))
    assert len(batches) == 4
    epochs = [list(batches), list(batches)]
    for epoch in epochs:
        assert [y.shape[0] for _, y, *_ in epoch] == [16, 16, 16, 2]
        seen = torch.cat([y for _, y, *_ in epoch])
        assert torch.equal(seen.sort().values, ids)
        for x, y, *_ in epoch:  # each x is the normalised image of its label
            torch.testing.assert_close(x, augment.normalize(images[y], mean, std), rtol=0, atol=0)
    assert not torch.equal(torch.cat([y for _, y, *_ in epochs[0]]), torch.cat([y for _, y, *_ in epochs[1]]))
    dropped = augment.TrainBatches(images, ids, 16, mean, std, drop_last=True)
    assert len(dropped) == 3 and [y.shape[0] for _, y, *_ in dropped] == [16, 16, 16]


def test_train_batches_resume_from_state_dict_reproduces_batches():
    images, ids = _labelled_images(40)
    mean, std = (0.5,) * 3, (0.25,) * 3
    original = augment.TrainBatches(images, ids, 16, mean, std, generator=torch.Generator().manual_seed(7))
    list(original)  # epoch 1
    state = original.state_dict()
    continued = list(original)  # epoch 2
    resumed = augment.TrainBatches(images, ids, 16, mean, std, generator=torch.Generator().manual_seed(99))
    resumed.load_state_dict(state)
    replayed = list(resumed)
    assert len(replayed) == len(continued) == 3
    for batch, again in zip(continued, replayed):
        assert batch.strong is None and all(torch.equal(a, b) for a, b in zip(batch[:4], again[:4]))


def test_train_batches_resume_mid_epoch_reproduces_the_rest_of_it():
    images, ids = _labelled_images(40)
    mean, std = (0.5,) * 3, (0.25,) * 3
    original = augment.TrainBatches(images, ids, 8, mean, std, generator=torch.Generator().manual_seed(7))
    epoch = iter(original)
    first, second = next(epoch), next(epoch)
    state = original.state_dict()
    assert state["position"] == 2 and state["order"] is not None
    rest = list(epoch)
    resumed = augment.TrainBatches(images, ids, 8, mean, std, generator=torch.Generator().manual_seed(99))
    resumed.load_state_dict(state)
    replayed = list(resumed)
    assert len(replayed) == len(rest) == 3
    for batch, again in zip(rest, replayed):
        assert batch.strong is None and all(torch.equal(a, b) for a, b in zip(batch[:4], again[:4]))
    assert resumed.state_dict()["order"] is None  # the epoch is over; the next one draws a new order
    assert torch.equal(torch.cat([first.index, second.index, *(b.index for b in rest)]).sort().values,
                       torch.arange(40))


def test_view_ids_name_each_crop_and_flip_once():
    offsets, flips = augment.all_views(4)
    assert augment.view_count(4) == len(flips) == 162
    assert torch.equal(augment.view_id(offsets, flips, 4), torch.arange(162))
    assert {(int(dy), int(dx), bool(f)) for (dy, dx), f in zip(offsets, flips)} == {
        (dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)}
    images, ids = _labelled_images(16)
    batch = next(iter(augment.TrainBatches(images, ids, 16, (0.5,) * 3, (0.25,) * 3, padding=4)))
    crops = augment.crop_flip(images[batch.index], offsets[batch.view], flips[batch.view], 4)
    torch.testing.assert_close(batch.x, augment.normalize(crops, (0.5,) * 3, (0.25,) * 3), rtol=0, atol=0)


def test_train_batches_augment_and_channels_last():
    images, ids = _labelled_images(8)
    batches = augment.TrainBatches(images, ids, 8, (0.5,) * 3, (0.25,) * 3, padding=2, channels_last=True)
    ((x, y, *_),) = list(batches)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 6, 6)
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain = augment.normalize(images[y], (0.5,) * 3, (0.25,) * 3)
    assert not torch.equal(x, plain)  # 8 random views are not all the identity view
    assert (x == (0 - 0.5) / 0.25).any()  # zero padding entered some crops (the images have no zeros)


def test_eval_batches_keep_order_without_augmentation():
    images, ids = _labelled_images(10)
    batches = list(augment.eval_batches(images, ids, 4, (0.5,) * 3, (0.25,) * 3))
    assert [y.tolist() for _, y, *_ in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    torch.testing.assert_close(torch.cat([x for x, *_ in batches]),
                               (images.float() / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_labels_and_stats():
    train = data.load("synthetic", "unused-root", "train", **SMALL)
    test = data.load("synthetic", "unused-root", "test", **SMALL)
    assert train.images.shape == (60, 3, 32, 32) and test.images.shape == (24, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(train.labels), torch.full((12,), 5))
    assert torch.equal(torch.bincount(test.labels), torch.full((12,), 2))
    assert train.classes == test.classes
    assert train.classes[:5] == ["s00_c00", "s00_c01", "s00_c02", "s00_c03", "s01_c00"]
    pixels = train.images.double() / 255
    np.testing.assert_allclose(train.mean, pixels.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    np.testing.assert_allclose(train.std, pixels.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-12)
    assert test.mean == train.mean and len(train.std) == 3


def test_synthetic_is_deterministic_per_seed():
    first = synthetic.generate(data_options.make_options(SMALL))
    again = synthetic.generate(data_options.make_options(SMALL))
    other = synthetic.generate(data_options.make_options({**SMALL, "seed": 1}))
    for split in ("train", "test"):
        assert torch.equal(first[split][0], again[split][0]) and torch.equal(first[split][1], again[split][1])
        assert not torch.equal(first[split][0], other[split][0])
    more_train = synthetic.generate(data_options.make_options({**SMALL, "train_per_class": 9}))
    assert torch.equal(more_train["test"][0], first["test"][0])  # the test set does not depend on it


def test_synthetic_siblings_are_closer_than_other_superclasses():
    options = data_options.make_options({**SMALL, "train_per_class": 30})
    images, labels = synthetic.generate(options)["train"]
    centroids = torch.stack([images[labels == label].double().mean(0).flatten() for label in range(12)])
    distances = torch.cdist(centroids, centroids)
    superclass = torch.arange(12) // 4
    same = superclass[:, None] == superclass[None, :]
    siblings = distances[same & ~torch.eye(12, dtype=torch.bool)]
    strangers = distances[~same]
    assert siblings.max() < strangers.min()


def test_synthetic_difficulty_zero_gives_shifted_prototypes_only():
    options = data_options.make_options({**SMALL, "train_per_class": 200, "difficulty": 0})
    images, labels = synthetic.generate(options)["train"]
    # Without noise, images of one class differ only by their crop position: at most 81 distinct images.
    same_class = images[labels == 0]
    assert same_class.shape[0] == 200 and 1 < len({bytes(image.numpy()) for image in same_class}) <= 81


def test_synthetic_option_errors():
    with pytest.raises(RckdError, match="unknown synthetic option.*colour"):
        data.load("synthetic", ".", "train", colour=3)
    with pytest.raises(RckdError, match="train_per_class must be int >= 1"):
        data.load("synthetic", ".", "train", train_per_class=0)
    with pytest.raises(RckdError, match="difficulty must be float >= 0"):
        data.load("synthetic", ".", "train", difficulty="hard")
    with pytest.raises(RckdError, match="takes no options"):
        data.load("fashion_mnist", ".", "train", seed=1)
    with pytest.raises(RckdError, match="unknown data set 'mnist'"):
        data.load("mnist", ".", "train")
    with pytest.raises(RckdError, match="unknown split"):
        data.load("synthetic", ".", "validation")


# ---------------------------------------------------------------- fashion_mnist


@pytest.fixture(scope="module")
def fashion_mnist():
    return datasets.build("fashion_mnist", "unused-root", download=False, options={})


def test_fashion_mnist_reads_the_debian_files(fashion_mnist):
    assert datasets.DEBIAN_FASHION_MNIST.is_dir()
    train, test = fashion_mnist["train"], fashion_mnist["test"]
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and test.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    # Widely quoted Fashion-MNIST statistics: mean 0.2860, std 0.3530.
    assert train.mean == pytest.approx((0.2860,), abs=1e-4) and train.std == pytest.approx((0.3530,), abs=1e-4)


def test_idx_reader_rejects_damaged_files(tmp_path):
    good = tmp_path / "good.gz"
    header = b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")  # uint8, 2 dims: 2 x 3
    good.write_bytes(gzip.compress(header + bytes(range(6))))
    assert datasets._read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (9).to_bytes(4, "big") + bytes(3)))
    with pytest.raises(RckdError, match="header says"):
        datasets._read_idx(short)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"hello")
    with pytest.raises(RckdError, match="not a readable gzip"):
        datasets._read_idx(not_gzip)


# ---------------------------------------------------------------- cifar100


def test_cifar100_offline_and_missing_says_what_to_do(tmp_path):
    with pytest.raises(RckdError) as caught:
        data.load("cifar100", tmp_path, "train")
    message = str(caught.value)
    for needed in ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", str(tmp_path.resolve()),
                   "--download", "data.download: true"):
        assert needed in message


def test_cifar100_failed_download_is_an_rckd_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(RckdError, match="downloading CIFAR-100 .* failed .*no route to host"):
        data.load("cifar100", tmp_path, "test", download=True)


def _fake_cifar100_archive(root, monkeypatch) -> dict[str, np.ndarray]:
    """A tiny cifar-100-python.tar.gz in torchvision's pickle format; the md5s torchvision checks
    are patched to those of the fake files."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir()
    arrays = {}
    for split, count in (("train", 6), ("test", 4)):
        arrays[split] = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        entry = {"data": arrays[split].reshape(count, -1), "fine_labels": [i % 3 for i in range(count)],
                 "coarse_labels": [0] * count}
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bear", "cloud"],
                                                "coarse_label_names": ["things"]}))
    archive = root / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    for path in [*folder.iterdir()]:
        path.unlink()
    folder.rmdir()

    def md5(path):
        return hashlib.md5(path.read_bytes()).hexdigest()

    with tarfile.open(archive) as tar:
        sums = {member.name.split("/")[-1]: hashlib.md5(tar.extractfile(member).read()).hexdigest()
                for member in tar.getmembers() if member.isfile()}
    monkeypatch.setattr(CIFAR100, "tgz_md5", md5(archive))
    monkeypatch.setattr(CIFAR100, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": sums["meta"]})
    return arrays


def test_cifar100_reads_torchvision_format_from_the_archive(tmp_path, monkeypatch):
    arrays = _fake_cifar100_archive(tmp_path, monkeypatch)
    test = data.load("cifar100", tmp_path, "test")  # extracts the archive, then reads through torchvision
    assert (tmp_path / "cifar-100-python" / "train").is_file()
    train = data.load("cifar100", tmp_path, "train")
    assert torch.equal(train.images, torch.from_numpy(arrays["train"]))
    assert torch.equal(test.images, torch.from_numpy(arrays["test"]))
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2] and test.labels.dtype == torch.int64
    assert train.classes == ["apple", "bear", "cloud"]
    assert train.mean == (0.5071, 0.4867, 0.4408) and train.std == (0.2675, 0.2565, 0.2761)


def test_cifar100_corrupt_archive_is_refused(tmp_path, monkeypatch):
    _fake_cifar100_archive(tmp_path, monkeypatch)
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(RckdError, match="incomplete or corrupt.*delete it"):
        data.load("cifar100", tmp_path, "train")


# ---------------------------------------------------------------- cache and `rckd prepare`


def test_cache_round_trip_and_load_reads_only_the_cache(tmp_path, monkeypatch):
    path = data.prepare_cache("synthetic", tmp_path, **SMALL)
    assert path == tmp_path / "synthetic.pt" and path.is_file()
    built = datasets.build("synthetic", tmp_path, download=False, options=data_options.resolve_options("synthetic", SMALL))

    def no_source(*args, **kwargs):
        raise AssertionError("load rebuilt the data set although a cache exists")

    monkeypatch.setattr(synthetic, "generate", no_source)
    for split in ("train", "test"):
        cached = data.load("synthetic", tmp_path, split, **SMALL)
        assert torch.equal(cached.images, built[split].images) and torch.equal(cached.labels, built[split].labels)
        assert (cached.classes, cached.mean, cached.std) == (built[split].classes, built[split].mean, built[split].std)
    modified = path.stat().st_mtime_ns
    assert data.prepare_cache("synthetic", tmp_path, **SMALL) == path  # a valid cache is kept as it is
    assert path.stat().st_mtime_ns == modified


def test_truncated_cache_is_refused(tmp_path):
    path = data.prepare_cache("synthetic", tmp_path, **SMALL)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RckdError, match="corrupt.*delete it.*rckd prepare --dataset synthetic"):
        data.load("synthetic", tmp_path, "train", **SMALL)
    data.prepare_cache("synthetic", tmp_path, **SMALL)  # rerunning prepare replaces the broken cache
    assert data.load("synthetic", tmp_path, "train", **SMALL).images.shape == (60, 3, 32, 32)


def test_altered_cache_fails_its_checksum(tmp_path):
    path = data.prepare_cache("synthetic", tmp_path, **SMALL)
    payload = torch.load(path, weights_only=True)
    payload["train_images"][0, 0, 0, 0] ^= 1
    torch.save(payload, path)
    with pytest.raises(RckdError, match="SHA-256 mismatch.*delete it and rerun `rckd prepare"):
        data.load("synthetic", tmp_path, "test", **SMALL)


def test_cache_built_with_other_options_is_refused_then_replaced(tmp_path):
    data.prepare_cache("synthetic", tmp_path, **SMALL)
    with pytest.raises(RckdError, match="built with options .*'seed': 0.*'seed': 5.*rckd prepare"):
        data.load("synthetic", tmp_path, "train", **{**SMALL, "seed": 5})
    data.prepare_cache("synthetic", tmp_path, **{**SMALL, "seed": 5})
    reseeded = data.load("synthetic", tmp_path, "train", **{**SMALL, "seed": 5})
    assert torch.equal(reseeded.images, synthetic.generate(data_options.make_options({**SMALL, "seed": 5}))["train"][0])


def suggested_command(message: str) -> list[str]:
    """The argv of the `rckd prepare ...` call quoted in an error message."""
    argv = shlex.split(message.split("`rckd prepare ", 1)[1].split("`", 1)[0])
    return ["prepare", *argv]


def test_the_suggested_prepare_command_rebuilds_the_cache(tmp_path, capsys):
    root = tmp_path / "data dir"  # a space: the command must be quoted for the shell
    data.prepare_cache("synthetic", root, **SMALL)
    with pytest.raises(RckdError) as caught:
        data.load("synthetic", root, "train", **{**SMALL, "seed": 5})
    argv = suggested_command(str(caught.value))
    assert "--download" not in argv
    assert cli.main(argv) == 0
    reseeded = data.load("synthetic", root, "train", **{**SMALL, "seed": 5})
    assert torch.equal(reseeded.images, synthetic.generate(data_options.make_options({**SMALL, "seed": 5}))["train"][0])

    # Asked to download, the suggestion downloads too; it parses as `rckd prepare` arguments.
    (root / "cifar100.pt").write_bytes(b"not a cache")
    with pytest.raises(RckdError) as caught:
        data.load("cifar100", root, "test", download=True)
    argv = suggested_command(str(caught.value))
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args(argv[1:])
    assert (args.dataset, args.data_root, args.download, args.data_option) == ("cifar100", root, True, [])


def test_cache_checksum_covers_every_tensor():
    images, labels = torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    payload = {"format": cache.FORMAT, "dataset": "x", "options": {}, "classes": ["a"], "mean": [0.0], "std": [1.0],
               "train_images": images, "train_labels": labels, "test_images": images, "test_labels": labels}
    reference = cache.checksum(payload)
    assert cache.checksum({**payload, "test_labels": torch.ones(2, dtype=torch.int64)}) != reference
    assert cache.checksum({**payload, "test_images": images.view(2, 1, 4, 1)}) != reference
    assert cache.checksum({**payload, "classes": ["b"]}) != reference


def test_prepare_cli_writes_the_cache(tmp_path, capsys):
    code = cli.main(["prepare", "--dataset", "synthetic", "--data-root", str(tmp_path),
                     "--data-option", "train_per_class=3",
                     "--data-option", "num_superclasses=2", "--data-option", "classes_per_superclass=2",
                     "--data-option", "difficulty=0.5"])
    assert code == 0
    output = capsys.readouterr().out
    assert str(tmp_path / "synthetic.pt") in output and "MiB" in output
    loaded = data.load("synthetic", tmp_path, "train", train_per_class=3, num_superclasses=2,
                       classes_per_superclass=2, difficulty=0.5)
    assert loaded.images.shape == (12, 3, 32, 32)


def test_prepare_cli_reports_bad_options(tmp_path, capsys):
    code = cli.main(["prepare", "--dataset", "synthetic", "--data-root", str(tmp_path),
                     "--data-option", "shape=round"])
    assert code == 2
    assert "unknown synthetic option(s) ['shape']" in capsys.readouterr().err
    assert not (tmp_path / "synthetic.pt").exists()


def test_parse_option_types():
    from rckd.data.options import parse_option

    assert parse_option("seed=3") == ("seed", 3) and isinstance(parse_option("seed=3")[1], int)
    assert parse_option("difficulty=1.5") == ("difficulty", 1.5)
    assert parse_option("name=a=b") == ("name", "a=b")
    with pytest.raises(Exception, match="key=value"):
        parse_option("difficulty")


def test_synthetic_image_size_scales_the_images_and_is_checked():
    small = data.load("synthetic", ".", "train", **{**SMALL, "image_size": 16})
    assert small.images.shape[1:] == (3, 16, 16)
    with pytest.raises(RckdError, match="image_size must be int >= 8"):
        data.load("synthetic", ".", "train", image_size=4)


def test_load_splits_reads_the_cache_once_and_equals_load(tmp_path, monkeypatch):
    data.prepare_cache("synthetic", tmp_path, **SMALL)
    reads = []
    original = cache.read
    monkeypatch.setattr(cache, "read", lambda *args, **kwargs: reads.append(1) or original(*args, **kwargs))
    splits = data.load_splits("synthetic", tmp_path, **SMALL)
    assert len(reads) == 1
    for split in ("train", "test"):
        alone = data.load("synthetic", tmp_path, split, **SMALL)
        assert torch.equal(splits[split].images, alone.images) and torch.equal(splits[split].labels, alone.labels)
