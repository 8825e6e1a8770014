"""The records a run leaves, typed: a model's metadata (model.pt's "meta", and `rckd.*` in an exported
ONNX file), the run's metrics.json and its eval.json. Every writer and reader goes through here.

Torch-free (the onnxruntime-only deployment reads ModelInfo). Each record is a frozen dataclass; a
field with a default is optional on disk (written only when set: an imported teacher's provenance,
the fidelity scores of an evaluation with a teacher). Reading a record with a missing or unknown key
is one RckdError that names the file and the key(s).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from rckd.errors import RckdError
from rckd.io import write_json

METADATA_PREFIX = "rckd."  # ONNX metadata keys: rckd.<ModelInfo field>


@dataclass(frozen=True, kw_only=True)
class Record:
    """A flat JSON object of known keys; subclasses declare the keys as fields."""

    WHAT: ClassVar[str] = "record"  # what the file is, for messages
    REWRITE: ClassVar[str] = "rerun the step that writes it"

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON data; optional fields that are None are left out."""
        optional = {item.name for item in fields(self) if item.default is not MISSING}
        return {key: value for key, value in asdict(self).items() if not (key in optional and value is None)}

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike) -> Self:
        """The record of `data`, read from `source` (named in the error)."""
        if not isinstance(data, dict):
            raise RckdError(f"{source} should hold a JSON object ({cls.WHAT}), not {type(data).__name__}; "
                            f"{cls.REWRITE}")
        known = {item.name for item in fields(cls)}
        required = [item.name for item in fields(cls) if item.default is MISSING]
        missing = [key for key in required if key not in data]
        unknown = sorted(key for key in data if key not in known)
        problems = [f"{'key' if len(keys) == 1 else 'keys'} {', '.join(map(repr, keys))} {what}"
                    for keys, what in ((missing, "missing"), (unknown, "unknown")) if keys]
        if problems:
            raise RckdError(f"{source}: {cls.WHAT} with {' and '.join(problems)} (written by another rckd "
                            f"version?); {cls.REWRITE}")
        return cls(**data)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Self:
        """The record in JSON file `path`."""
        path = Path(path)
        if not path.is_file():
            raise RckdError(f"{path} not found ({cls.WHAT}); {cls.REWRITE}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RckdError(f"{path} is not valid JSON ({err}); delete it and {cls.REWRITE}") from None
        return cls.from_dict(data, path)

    def write(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())


@dataclass(frozen=True, kw_only=True)
class Origin(Record):
    """Where an imported teacher's weights came from (absent for a model rckd trained)."""

    source: str | None = None  # the importer: mdistiller, torchvision
    source_file: str | None = None
    source_sha256: str | None = None
    num_tensors: int | None = None
    published_top1: float | None = None  # the source's stated test top-1 (torchvision)


@dataclass(frozen=True, kw_only=True)
class RunRecord(Origin):
    """What model.pt's metadata and metrics.json share: the model and how it was trained."""

    arch: str  # this model's architecture (a teacher's own arch when the run trains a teacher)
    dataset: str
    method: str
    params: dict[str, Any]  # the loss's, defaults filled in
    teacher: str | None  # the teacher's model.pt; None without a teacher
    teacher_arch: str | None
    seed: int
    epochs: int
    final_top1: float | None  # None for an imported teacher (rckd evaluate measures it)
    best_top1: float | None
    best_epoch: int | None

    @property
    def imported(self) -> bool:
        return self.source is not None


@dataclass(frozen=True, kw_only=True)
class ModelMeta(RunRecord):
    """model.pt's "meta": everything a later step needs to rebuild, feed and describe the model."""

    WHAT: ClassVar[str] = "model metadata"
    REWRITE: ClassVar[str] = "retrain or re-import the model"

    num_classes: int
    in_channels: int
    input_size: list[int]  # [C, H, W]
    data_options: dict[str, Any]  # resolved (rckd.data.options)
    mean: list[float]
    std: list[float]
    classes: list[str]
    rckd_version: str


@dataclass(frozen=True, kw_only=True)
class RunMetrics(RunRecord):
    """metrics.json: the run's results and how it ran. The training fields are None for an imported
    teacher."""

    WHAT: ClassVar[str] = "run metrics"
    REWRITE: ClassVar[str] = "rerun the run (or its import)"

    num_params: int
    wall_seconds: float
    teacher_bank: bool  # the teacher's logits came from a bank
    device: str | None
    precision: str | None
    compile: str | None
    processes: int | None
    spec: dict[str, Any] | None  # the resolved run spec (spec.json)
    spec_hash: str | None


@dataclass(frozen=True, kw_only=True)
class Scores(Record):
    """One model's test-set scores; the fidelity ones only against a teacher."""

    top1: float
    top5: float
    nll: float
    ece: float
    agreement: float | None = None
    kl_t1: float | None = None
    kl_tm: float | None = None
    tau_all: float | None = None
    tau_nt: float | None = None
    top5_overlap: float | None = None


@dataclass(frozen=True, kw_only=True)
class BestScores(Scores):
    """eval.json's "best": the scores of the best epoch's weights (best.pt)."""

    WHAT: ClassVar[str] = "best-epoch evaluation"
    REWRITE: ClassVar[str] = "rerun rckd evaluate"

    model: str
    epoch: int | None


@dataclass(frozen=True, kw_only=True)
class EvalRecord(Scores):
    """eval.json: the final weights' scores, what was evaluated, and optionally the best epoch's."""

    WHAT: ClassVar[str] = "evaluation"
    REWRITE: ClassVar[str] = "rerun rckd evaluate"

    model: str
    arch: str
    dataset: str
    method: str
    params: dict[str, Any]
    seed: int
    num_test: int
    ece_bins: int
    device: str
    teacher: str | None
    teacher_arch: str | None = None
    temperature: float | None = None  # of the fidelity KL (the student's own, else a fallback)
    teacher_top1: float | None = None
    best: BestScores | None = None

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        if self.best is not None:
            values["best"] = self.best.to_dict()
        return values

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike) -> Self:
        record = super().from_dict(data, source)
        if record.best is None:
            return record
        return cls(**{**data, "best": BestScores.from_dict(record.best, f"{source} (best)")})


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def _text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


# What each rckd.* metadata value must decode to: (check, description for the error message).
_METADATA_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (_is_integer, "an integer"),
    "classes": (_list_of(_is_text), "a list of strings"),
    "input_shape": (_list_of(_is_integer), "a list of integers"),
    "mean": (_list_of(_is_number), "a list of numbers"),
    "std": (_list_of(_is_number), "a list of numbers"),
    "params": (lambda value: isinstance(value, dict), "an object"),
    "teacher": (_text_or_none, "a string or null"),
    "teacher_arch": (_text_or_none, "a string or null"),
    **{name: (_is_number, "a number") for name in ("top1", "fp32_top1", "torch_top1")},
    **{name: (_is_text, "a string") for name in ("arch", "dataset", "method", "precision", "rckd_version")},
}


# ONNX metadata: each value JSON under rckd.<field>; all are required.
@dataclass(frozen=True, kw_only=True)
class ModelInfo(Record):
    """The `rckd.*` metadata of an exported model: what a consumer needs to feed and label it."""

    WHAT: ClassVar[str] = "rckd metadata"
    REWRITE: ClassVar[str] = "re-export it with `rckd export`"

    arch: str
    dataset: str
    num_classes: int
    classes: list[str]
    input_shape: list[int]  # [C, H, W] of one image
    mean: list[float]  # per channel, [0, 1] pixel units
    std: list[float]
    method: str
    params: dict[str, Any]
    teacher: str | None
    teacher_arch: str | None
    precision: str  # "fp32" or "int8"
    top1: float  # this file's top-1 (%) on the data set's test split, measured at export
    fp32_top1: float  # the fp32 ONNX model's top-1 (equal to top1 for the fp32 file)
    torch_top1: float  # the PyTorch model's top-1 on the same images
    rckd_version: str

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_PREFIX + key: json.dumps(value) for key, value in self.to_dict().items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str) -> ModelInfo:
        """The rckd.* entries of an ONNX file's metadata (`source` names it in errors), checked for
        missing and unknown keys, value types and consistency."""
        ours = {key.removeprefix(METADATA_PREFIX): value for key, value in props.items()
                if key.startswith(METADATA_PREFIX)}
        if not ours:
            raise RckdError(
                f"{source} has no rckd metadata (no '{METADATA_PREFIX}*' keys): it was not written by "
                "`rckd export`; export the trained model.pt with `rckd export`"
            )
        try:
            values = {key: json.loads(value) for key, value in ours.items()}
        except json.JSONDecodeError as err:
            raise RckdError(f"{source}: rckd metadata is not valid JSON ({err}); {cls.REWRITE}") from None
        info = cls.from_dict(values, source)
        wrong = [f"{name} is {ours[name]} (expected {expected})"
                 for name, (check, expected) in _METADATA_TYPES.items() if not check(values[name])]
        if wrong:
            raise RckdError(f"{source}: rckd metadata of the wrong type: {'; '.join(wrong)}; {cls.REWRITE}")
        channels = info.input_shape[0] if len(info.input_shape) == 3 else None
        if channels not in (1, 3) or len(info.mean) != channels or len(info.std) != channels:
            raise RckdError(f"{source}: inconsistent rckd metadata (input_shape {info.input_shape}, mean "
                            f"{info.mean}, std {info.std}); {cls.REWRITE}")
        if len(info.classes) != info.num_classes:
            raise RckdError(f"{source}: {len(info.classes)} class names for {info.num_classes} classes")
        return info

    @classmethod
    def from_meta(cls, meta: ModelMeta, **measured: Any) -> ModelInfo:
        """The metadata of an export of the model `meta` describes; `measured`: precision and the top-1s."""
        return cls(arch=meta.arch, dataset=meta.dataset, num_classes=meta.num_classes, classes=list(meta.classes),
                   input_shape=list(meta.input_size), mean=list(meta.mean), std=list(meta.std), method=meta.method,
                   params=dict(meta.params), teacher=meta.teacher, teacher_arch=meta.teacher_arch, **measured)
