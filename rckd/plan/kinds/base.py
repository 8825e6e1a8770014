"""What an experiment kind provides (rckd.plan.kinds lists them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    properties: dict[str, Any]  # JSON schema of the kind's own keys (kind, enabled and train are common)
    required: tuple[str, ...]
    runs: Callable[..., list]  # (planner, experiment name, its config) -> [(method label, Run)]
    figure: str  # <figure>.png in the experiment's folder; `rckd plot --kind <figure>`
    table: str  # "module:function" (rows, metric, published) -> rckd.report.tables.Section
    plot: str  # "module:function" (rows, metric) -> matplotlib Figure
    exports: bool = False  # its students may be exported to ONNX (export.experiment)

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("summary.csv", "table.md", "table.csv", f"{self.figure}.png")
