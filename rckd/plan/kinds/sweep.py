"""sweep: one method's parameters varied one factor at a time (summary, table, ablation plot)."""

from __future__ import annotations

from rckd.plan.kinds.base import Kind


def variants(spec: dict) -> list[dict]:
    """One-factor-at-a-time sweep around `base`: each swept key takes each value, others stay at base."""
    found: list[dict] = []
    for key, values in spec["sweep"].items():
        for value in values:
            params = {**spec.get("base", {}), key: value}
            if params not in found:
                found.append(params)
    return found


def runs(planner, name: str, spec: dict) -> list:
    key = f"experiments.{name}"
    labelled = [("ce", planner.teacher(spec["teacher"]))]
    train = [(f"{key}.train", spec.get("train", {}))]
    for seed in planner.seeds:
        labelled.append(("ce", planner.vanilla(spec["student"], seed, train)))
        labelled += [(spec["method"], planner.distilled(spec["method"], spec["student"], spec["teacher"], seed, train,
                                                        params, f"{key}.sweep"))
                     for params in variants(spec)]
    return labelled


KIND = Kind(
    name="sweep",
    description="one method's parameters, one factor at a time around its settings plus `base` (the ablation)",
    properties={
        "method": {"$ref": "#/$defs/method_name"},
        "teacher": {"$ref": "#/$defs/arch"},
        "student": {"$ref": "#/$defs/arch"},
        "base": {"$ref": "#/$defs/loss_params", "default": {}},
        "sweep": {
            "description": "one-factor-at-a-time sweep of the method's parameters around its settings plus base",
            "type": "object",
            "propertyNames": {"$ref": "#/$defs/param_name"},
            "additionalProperties": {"type": "array", "minItems": 1},
        },
    },
    required=("method", "teacher", "student", "sweep"),
    runs=runs,
    figure="ablation",
    table="rckd.report.tables:ablation_table",
    plot="rckd.report.plots:ablation_figure",
)
