"""The files an imported teacher becomes: an rckd model.pt and, for the workflow, its run's metrics.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from rckd import __version__
from rckd.checkpoint import save_model
from rckd.records import ModelMeta, Origin, RunMetrics


def save_teacher(out: Path, model: nn.Module, arch: str, data: dict[str, Any], origin: Origin,
                 metrics_path: Path | None, epochs: int) -> None:
    """`data`: dataset, data_options, input_size, mean, std and classes of the data set it was trained on;
    `origin`: where the weights came from. Its accuracies are unknown until `rckd evaluate` measures them."""
    run = dict(arch=arch, dataset=data["dataset"], method="ce", params={}, teacher=None, teacher_arch=None, seed=0,
               epochs=epochs, final_top1=None, best_top1=None, best_epoch=None, **asdict(origin))
    meta = ModelMeta(**run, num_classes=len(data["classes"]), in_channels=data["input_size"][0],
                     input_size=list(data["input_size"]), data_options=data["data_options"], mean=list(data["mean"]),
                     std=list(data["std"]), classes=list(data["classes"]), rckd_version=__version__)
    save_model(out, model.state_dict(), meta)
    if metrics_path is not None:
        RunMetrics(**run, num_params=sum(p.numel() for p in model.parameters()), wall_seconds=0.0,
                   teacher_bank=False, device=None, precision=None, compile=None, processes=None, spec=None,
                   spec_hash=None).write(metrics_path)
