"""capacity: one student distilled from teachers of growing capacity (summary, table, capacity plot)."""

from __future__ import annotations

from rckd.plan.kinds.base import Kind


def runs(planner, name: str, spec: dict) -> list:
    key = f"experiments.{name}"
    labelled = [("ce", planner.teacher(teacher)) for teacher in spec["teachers"]]
    train = [(f"{key}.train", spec.get("train", {}))]
    for seed in planner.seeds:
        labelled.append(("ce", planner.vanilla(spec["student"], seed, train)))
        labelled += [(method, planner.distilled(method, spec["student"], teacher, seed, train))
                     for teacher in spec["teachers"] for method in spec["methods"]]
    return labelled


KIND = Kind(
    name="capacity",
    description="one student under each method, distilled from each teacher; teachers sorted by accuracy",
    properties={
        "student": {"$ref": "#/$defs/arch"},
        "teachers": {"type": "array", "items": {"$ref": "#/$defs/arch"}, "minItems": 1, "uniqueItems": True},
        "methods": {"$ref": "#/$defs/method_list"},
    },
    required=("student", "teachers", "methods"),
    runs=runs,
    figure="capacity",
    table="rckd.report.tables:capacity_table",
    plot="rckd.report.plots:capacity_figure",
)
