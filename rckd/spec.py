"""A run's spec: what defines one training run (model, data, loss, schedule, teacher, numerics), apart
from where and how it runs (paths, device, threads, checkpoints: `rckd.train.TrainConfig` adds those).

The DAG resolves one spec per run while it plans (this module needs no torch) and passes it to
`rckd train --spec`; the trainer writes it to the run's spec.json, and its digest is the run's resume
identity. The defaults below are the only ones: the workflow schema's training defaults are generated
from them (`python -m rckd schema`, rckd/plan/schema.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rckd.data.options import DATASETS, resolve_options
from rckd.errors import RckdError
from rckd.losses import catalog

PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "none", "default", "reduce-overhead")
_INTEGERS = ("seed", "epochs", "batch_size")
_NUMBERS = ("lr", "momentum", "weight_decay", "lr_decay")


@dataclass(kw_only=True)
class RunSpec:
    arch: str
    dataset: str
    data_options: dict[str, Any] = field(default_factory=dict)
    method: str = "ce"
    params: dict[str, Any] = field(default_factory=dict)  # the loss's; catalog defaults fill the rest
    teacher: Path | None = None  # the teacher's model.pt (distillation methods)
    seed: int = 0
    epochs: int = 240
    batch_size: int = 64  # in total: each of N data-parallel processes takes batch_size / N
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (150, 180, 210)  # epochs at which the lr is multiplied by lr_decay
    lr_decay: float = 0.1
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA)
    compile: str = "auto"  # none | default (inductor) | reduce-overhead (+ CUDA graphs) | auto (that on CUDA)

    def check(self) -> None:
        """Raise RckdError naming the first bad field and the values it takes."""
        if self.dataset not in DATASETS:
            raise RckdError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        for name in _INTEGERS + _NUMBERS:
            value = getattr(self, name)
            kinds = (int,) if name in _INTEGERS else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise RckdError(f"{name} must be {'an integer' if name in _INTEGERS else 'a number'}, got {value!r}")
        for name, ok, rule in (("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                               ("seed", self.seed >= 0, ">= 0"), ("lr", self.lr > 0, "> 0"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                               ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1]")):
            if not ok:
                raise RckdError(f"{name} must be {rule}, got {getattr(self, name)}")
        milestones = list(self.milestones)
        if (milestones != sorted(set(milestones)) or
                any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones)):
            raise RckdError(f"milestones must be increasing positive epochs, got {milestones}")
        if self.precision not in PRECISIONS:
            raise RckdError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise RckdError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if catalog.method(self.method).needs_teacher != (self.teacher is not None):
            raise RckdError(f"method {self.method!r} distils from a teacher: pass --teacher PATH/model.pt"
                            if self.teacher is None else f"method {self.method!r} trains without a teacher; "
                            f"drop --teacher")

    def resolved(self) -> dict[str, Any]:
        """The spec as JSON data with every default filled in (the loss's parameters, the data set's
        options), checked: two specs that mean the same run resolve alike."""
        self.check()
        values = {item.name: getattr(self, item.name) for item in fields(RunSpec)}
        return values | {
            "data_options": resolve_options(self.dataset, self.data_options),
            "params": catalog.resolve(self.method, self.params),
            "teacher": str(self.teacher) if self.teacher is not None else None,
            "milestones": list(self.milestones),
        }


def digest(resolved: dict[str, Any]) -> str:
    """A short hash of a resolved spec: the run's identity for resuming it."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_fields(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """RunSpec keyword arguments from JSON data (a spec.json), with unknown keys refused."""
    known = {item.name for item in fields(RunSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RckdError(f"{origin}: unknown spec key(s) {', '.join(unknown)}; a spec has {', '.join(sorted(known))}")
    values = dict(data)
    if values.get("teacher") is not None:
        values["teacher"] = Path(values["teacher"])
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return values


def read_spec(source: str) -> dict[str, Any]:
    """JSON data of a spec given as JSON text (`{...}`, what the DAG passes) or as a file's path."""
    text, origin = (source, "--spec") if source.lstrip().startswith("{") else (None, source)
    try:
        if text is None:
            text = Path(source).read_text()
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise RckdError(f"cannot read the run spec {origin}: {err}") from None
    if not isinstance(data, dict):
        raise RckdError(f"{origin}: a run spec is a JSON object, got {type(data).__name__}")
    return spec_fields(data, origin)
