"""main: the paper's table, teacher -> student pairs under every method (summary, table, curves)."""

from __future__ import annotations

from rckd.plan.errors import config_error
from rckd.plan.kinds.base import Kind


def runs(planner, name: str, spec: dict) -> list:
    key = f"experiments.{name}"
    teachers = spec["teachers"]
    labelled = [("ce", planner.teacher(teacher)) for teacher in teachers]
    for seed in planner.seeds:
        for index, pair in enumerate(spec["pairs"]):
            where = f"{key}.pairs[{index}]"
            if pair["teacher"] not in teachers:
                raise config_error(f"{where}.teacher", f"{pair['teacher']!r} is not one of {key}.teachers "
                                   f"{teachers}; add it there")
            train = [(f"{key}.train", spec.get("train", {})), (f"{where}.train", pair.get("train", {}))]
            labelled.append(("ce", planner.vanilla(pair["student"], seed, train)))
            for method in spec["methods"]:
                own = pair.get("params", {}).get(method, {})
                labelled.append((method, planner.distilled(method, pair["student"], pair["teacher"], seed, train,
                                                           own, f"{where}.params.{method}")))
    return labelled


KIND = Kind(
    name="main",
    description="the main table: each teacher -> student pair under each method, beside the teacher and "
                "the student trained alone",
    properties={
        "teachers": {"type": "array", "items": {"$ref": "#/$defs/arch"}, "minItems": 1, "uniqueItems": True},
        "methods": {"$ref": "#/$defs/method_list"},
        "pairs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["teacher", "student"],
                "properties": {
                    "teacher": {"$ref": "#/$defs/arch"},
                    "student": {"$ref": "#/$defs/arch"},
                    "params": {
                        "description": "this pair's parameters of a method name, over those of `methods`",
                        "type": "object",
                        "propertyNames": {"$ref": "#/$defs/method_name"},
                        "additionalProperties": {"$ref": "#/$defs/loss_params"},
                    },
                    "train": {"$ref": "#/$defs/schedule",
                              "description": "this pair's schedule, over the experiment's `train`"},
                },
            },
        },
    },
    required=("teachers", "pairs", "methods"),
    runs=runs,
    figure="curves",
    table="rckd.report.tables:main_report",
    plot="rckd.report.plots:curves_figure",
    exports=True,
)
