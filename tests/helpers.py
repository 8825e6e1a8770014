"""Helpers every test module shares: the synthetic data options, the run-config builder, the CSV and
history readers, and the Snakemake call. Fixtures built from them live in conftest.py.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rckd.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# The shared synthetic data set: 20 classes in 5 superclasses, 16x16 images, seconds per CPU epoch.
SYNTHETIC = {"num_superclasses": 5, "classes_per_superclass": 4, "train_per_class": 40, "test_per_class": 20,
             "image_size": 16, "seed": 0}
SYNTHETIC_CLASSES = 20
SYNTHETIC_TEST_IMAGES = 20 * 20


def option_args(options: dict[str, Any]) -> list[str]:
    """`--data-option key=value` arguments of a data options dict, for the rckd commands."""
    return [arg for key, value in options.items() for arg in ("--data-option", f"{key}={value}")]


def run_config(data_root: Path, out: Path, options: dict[str, Any] = SYNTHETIC, **changes: Any) -> TrainConfig:
    """A short CPU training run of resnet8 on the synthetic data set at `data_root`, written to `out`;
    `changes` override any field of TrainConfig."""
    from rckd.train import TrainConfig  # here, so that the Snakemake tests import no torch

    settings = dict(arch="resnet8", dataset="synthetic", data_root=data_root, out=out, data_options=options,
                    epochs=2, milestones=(1,), device="cpu", checkpoint_every=1)
    return TrainConfig(**{**settings, **changes})


def workflow_config(*overrides: str | Path) -> dict[str, Any]:
    """config/config.yaml with each override (a config file or YAML text) merged over it as snakemake's
    --configfile does, then checked and completed with the schema's defaults as the workflow does."""
    import yaml
    from snakemake.utils import update_config, validate

    from rckd.plan import check_layout

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for override in overrides:
        update_config(config, yaml.safe_load(override.read_text() if isinstance(override, Path) else override))
    check_layout(config)
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def planned(*overrides: str | Path):
    """The plan (rckd.plan) of workflow_config(*overrides)."""
    from rckd.plan import plan

    return plan(workflow_config(*overrides))


def config_file(name: str) -> Path:
    return ROOT / "config" / f"{name}.yaml"


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of text."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_history(run: Path) -> list[dict[str, str]]:
    """A run directory's history.csv, one dict of text per epoch."""
    return read_csv(Path(run) / "history.csv")


def snakemake_command(workdir: Path, *args: str, cores: int = 2) -> list[str]:
    """The command line of Snakemake on this checkout's workflow in `workdir`, with this Python."""
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--cores", str(cores), *args]


def snakemake(workdir: Path, *args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Snakemake to its end with its output captured."""
    return subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, timeout=timeout,
                          env=env)
