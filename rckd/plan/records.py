"""The plan's typed records: what the workflow runs, decided from the config alone (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("teacher", "vanilla", "student")  # trained to teach, trained alone, distilled


@dataclass(frozen=True)
class Schedule:
    """A run's optimisation schedule (the rest of its RunSpec comes from the global train section)."""

    epochs: int
    milestones: tuple[int, ...]
    lr: float
    batch_size: int


@dataclass(frozen=True)
class Run:
    """One run: its identity is its directory, so changed parameters or schedule mean a new run."""

    role: str  # one of ROLES
    arch: str
    method: str  # the loss of rckd.losses.catalog (ce for teachers and vanilla students)
    params: dict[str, Any]  # the loss parameters that differ from the catalogue's defaults
    teacher: str | None  # the teacher's arch, for a distilled student
    seed: int
    schedule: Schedule
    name: str  # <arch>/<teacher or none>/<method>/<tag>/seed<k>, its path under <results>/runs
    dir: str
    source: str | None = None  # an imported teacher's source (teachers.source), else None: trained here
    teacher_run: Run | None = None  # the run whose model.pt a distilled student learns from
    bank: str | None = None  # the teacher's logit bank it reads, or None: it runs its teacher live
    spec: dict[str, Any] | None = field(default=None, compare=False)  # resolved RunSpec (None if imported)

    @property
    def imported(self) -> bool:
        return self.source is not None


@dataclass(frozen=True)
class Experiment:
    """An enabled experiment: its runs, each with its method label (the table column), and outputs."""

    name: str
    kind: str  # a key of rckd.plan.kinds.KINDS
    runs: tuple[tuple[str, Run], ...]  # (method label, run), one per run directory
    outputs: tuple[str, ...]  # summary.csv, table.md, table.csv and the kind's figure, in its folder


@dataclass(frozen=True)
class Plan:
    dataset: str
    results: str  # <results>/<dataset>
    logs: str
    data_cache: str
    runs: dict[str, Run]  # by name: every run of every enabled experiment, once
    experiments: dict[str, Experiment]
    exports: tuple[Run, ...]  # the students exported to ONNX (export.experiment)
    banks: dict[str, bool]  # teacher run name -> whether its students read a logit bank
    priority: dict[str, int]  # teacher run name -> the epochs of all its students together
    imports: tuple[str, ...]  # archs of the imported teachers

    def outputs(self) -> list[str]:
        """The targets of `rule all`: every experiment's outputs and, with exports, the latency files."""
        targets = [output for experiment in self.experiments.values() for output in experiment.outputs]
        if self.exports:
            targets += [f"{self.results}/deploy/latency.csv", f"{self.results}/deploy/latency.png"]
        return targets
