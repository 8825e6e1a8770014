"""The files an imported teacher becomes: an rckd model.pt and, for the workflow, its run's metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rckd import __version__
from rckd.checkpoint import save_model
from rckd.io import write_json


def save_teacher(out: Path, model: nn.Module, arch: str, data: dict[str, Any], record: dict[str, Any],
                 metrics_path: Path | None, epochs: int) -> None:
    """`data`: dataset, data_options, input_size, mean, std and classes of the data set it was trained on;
    `record`: where the weights came from (source, source_file, source_sha256, num_tensors)."""
    common = {"arch": arch, "dataset": data["dataset"], "method": "ce", "params": {}, "teacher": None,
              "teacher_arch": None, "seed": 0, "epochs": epochs, "final_top1": None, "best_top1": None}
    meta = {**common, "num_classes": len(data["classes"]), "in_channels": data["input_size"][0],
            "input_size": list(data["input_size"]), "data_options": data["data_options"],
            "mean": list(data["mean"]), "std": list(data["std"]), "classes": list(data["classes"]),
            "best_epoch": None, "rckd_version": __version__, **record}
    save_model(out, model.state_dict(), meta)
    if metrics_path is not None:
        write_json(metrics_path, {**common, "num_params": sum(p.numel() for p in model.parameters()),
                                  "wall_seconds": 0.0, **record})
