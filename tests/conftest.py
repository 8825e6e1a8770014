"""Shared test setup: one torch thread for the whole session, the session's synthetic data, trained
teacher and trained student, and tiny models exported to ONNX.

The session fixtures are built once per test session, also under pytest-xdist: the first worker to
ask builds under a file lock in the directory all workers share, the others wait and reuse it. They
are read-only for the tests (write into tmp_path, never into a fixture's directory).
Import its functions with `from conftest import ...`, and the run-config builder, the CSV and history
readers and the Snakemake call with `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import SYNTHETIC, run_config
from torch import nn

from rckd import __version__, data, models
from rckd.data.augment import normalize
from rckd.records import ModelMeta
from rckd.train import train

SIZE = 16  # every architecture maps any image size to logits; 16x16 keeps tracing and checking fast
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, longest first (`@pytest.mark.slow(seconds)`, a rough cost). Under the Makefile's
    `--maxschedchunk 1` each pytest-xdist worker takes the next test when it ends one, so the long tests
    spread over the workers and the short ones fill in at the end, instead of one worker ending the run
    alone. The sort is stable: every other order is kept."""

    def cost(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return 0.0 if slow is None else float(slow.args[0]) if slow.args else 60.0

    items.sort(key=cost, reverse=True)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Test batches are tiny and gain nothing from threads; on a busy 2-core runner thread barriers
    made model tests several times slower. onnxruntime sessions set their own thread counts."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temporary directory; under xdist the one above every worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _built_once(directory: Path, build: Callable[[Path], None], marker: str) -> Path:
    """`directory`, built by `build(directory)` unless its `marker` file exists; a file lock makes
    concurrent workers wait for the one that builds it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / marker).exists():
            build(directory)
    return directory


@pytest.fixture(scope="session")
def built_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None], str], Path]:
    """`built_once(name, build, marker)`: the session's directory `name`, built by `build(directory)` once
    for every worker unless its `marker` file exists (the last file `build` writes)."""
    shared = _shared_dir(tmp_path_factory)
    return lambda name, build, marker: _built_once(shared / name, build, marker)


@pytest.fixture(scope="session")
def synthetic_cache(built_once) -> Callable[[dict], Path]:
    """`synthetic_cache(options)`: a data root holding the prepared synthetic data set of `options`,
    one per distinct options for the whole session."""

    def root(options: dict) -> Path:
        name = "-".join(f"{key}={value}" for key, value in sorted(options.items())) or "defaults"
        return built_once(f"synthetic/{name}", lambda where: data.prepare_cache("synthetic", where, **options),
                          "synthetic.pt")

    return root


@pytest.fixture(scope="session")
def synthetic_root(synthetic_cache) -> Path:
    """The data root of the shared synthetic data set (helpers.SYNTHETIC)."""
    return synthetic_cache(SYNTHETIC)


@pytest.fixture(scope="session")
def trained_teacher(synthetic_root, built_once) -> Path:
    """model.pt of a resnet14 trained for 6 epochs (lr decay after 5) on helpers.SYNTHETIC, in its run
    directory (history.csv, metrics.json, best.pt, spec.json)."""

    def build(out: Path) -> None:
        train(run_config(synthetic_root, out, arch="resnet14", epochs=6, milestones=(5,), tensorboard=False))

    return built_once("teacher", build, "model.pt") / "model.pt"


@pytest.fixture(scope="session")
def trained_student(synthetic_root, trained_teacher, built_once) -> Path:
    """model.pt of a resnet8 distilled from `trained_teacher` with kd (default parameters) for 4 epochs
    (lr decay after 3) on helpers.SYNTHETIC, in its run directory."""

    def build(out: Path) -> None:
        train(run_config(synthetic_root, out, method="kd", teacher=trained_teacher, epochs=4, milestones=(3,),
                         tensorboard=False))

    return built_once("student", build, "model.pt") / "model.pt"


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
             teacher_arch: str | None = "resnet32x4") -> ModelMeta:
    """The metadata of a model trained for SIZE x SIZE images (what `rckd.export.export` needs)."""
    return ModelMeta(
        arch=arch, num_classes=len(classes), in_channels=channels, input_size=[channels, SIZE, SIZE],
        dataset="synthetic", data_options={}, mean=MEAN[:channels], std=STD[:channels], classes=list(classes),
        method=method, params={"beta": 2.0} if params is None else params, teacher=teacher,
        teacher_arch=teacher_arch, seed=0, epochs=1, final_top1=None, best_top1=None, best_epoch=None,
        rckd_version=__version__,
    )


def tiny_model(arch: str, num_classes: int, channels: int = 3) -> nn.Module:
    """A random `arch` (seed 0) with BatchNorm statistics settled on 32 random images."""
    torch.manual_seed(0)
    model = models.build(arch, num_classes=num_classes, in_channels=channels)
    return settle_batchnorm(model, normalized(random_images(32, channels, seed=1)))


def export_tiny(out: Path, meta: dict, *, int8: bool = False) -> tuple[nn.Module, Path]:
    """tiny_model(meta's arch) exported to `out` (and `out`'s X.int8.onnx sibling with int8), gated on
    16 random test images; returns the PyTorch model and `out`."""
    from rckd.export import export  # here: onnx is not needed by the CUDA tests' bare GPU machine

    channels, classes = meta.input_size[0], meta.num_classes
    model = tiny_model(meta.arch, classes, channels)
    images = normalized(random_images(16, channels))
    int8_out = out.with_name(out.name.removesuffix(".onnx") + ".int8.onnx") if int8 else None
    calibration = normalized(random_images(16, channels, seed=2)) if int8 else None
    export(model, meta, images, torch.arange(16) % classes, out, int8_out=int8_out, calibration_images=calibration)
    return model, out
