"""Command-line arguments of the workflow's jobs, from the config and a run's record."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from rckd.plan.records import Run


def data_options_args(config: dict[str, Any]) -> str:
    """The data set options every rule that loads data passes, so all load the same cache."""
    return " ".join(f"--data-option {key}={value}" for key, value in sorted(config["data"]["options"].items()))


def train_args(config: dict[str, Any], run: Run) -> str:
    """`rckd train` arguments of one run: its spec as JSON (what it computes, also in the log and the
    run's spec.json), then where and how it runs."""
    train = config["train"]
    on_gpu = train["device"] != "cpu" and train["processes"] == 1
    args = [
        f"--spec {shlex.quote(json.dumps(run.spec, sort_keys=True))}",
        f"--data-root {shlex.quote(config['data']['root'])}",
        f"--device {train['device']}",
        f"--checkpoint-every {train['checkpoint_every']}",
        f"--gpu-slots {train['jobs_per_gpu'] if on_gpu else 0}",
        f"--workers {train['workers']}",
        f"--tensorboard {'on' if train['tensorboard'] else 'off'}",
    ]
    if run.bank:
        args.append(f"--teacher-bank {run.bank}")
        args += ["--bank-fallback"] if train["teacher_bank"] == "auto" else []
    return " ".join(args)


def import_args(config: dict[str, Any], archive: str | None) -> str:
    """`rckd import-teacher` source arguments: mdistiller's archive (the rule's input), or torchvision's
    weight folder when there is one (else the job downloads the weights) and the data options for its
    metadata."""
    if config["teachers"]["source"] == "mdistiller":
        return f"--archive {shlex.quote(archive)}"
    folder = config["teachers"]["archive"]
    return (f"--archive {shlex.quote(folder)} " if os.path.isdir(folder) else "") + data_options_args(config)
