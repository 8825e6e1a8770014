"""Reports built from run directories: summary.csv (`rckd summarize`), paper-style tables
(`rckd table`) and plots (`rckd plot`). This module holds what tables and plots share: method
order and names, the mean/std of a cell over seeds, and how a summary's runs group.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rckd.errors import RckdError

# The paper's column order; methods not listed here follow in alphabetical order.
METHOD_ORDER = ("ce", "kd", "dkd", "dist", "kd_ls", "dkd_ls", "wttm", "nkd", "kd_ctkd", "rckd")
METHOD_LABELS = {"ce": "Vanilla", "dist": "DIST", "wttm": "WTTM"}
# summary.csv column of each --metric choice: the best epoch's test top-1 (as papers report) or the last's.
TOP1_COLUMN = {"best": "best_top1", "final": "final_top1"}
# ... and the rank fidelity of the same weights: best.pt's or model.pt's (eval.json).
TAU_COLUMN = {"best": "best_tau_nt", "final": "tau_nt"}
WEIGHTS = {"best": "the best epoch's weights", "final": "the final weights"}

Row = dict[str, Any]  # one parsed summary.csv row (rckd.report.summary.read_summary)
Groups = dict[tuple[str, str, str], dict[str, list[Row]]]  # (teacher, arch, method) -> {params: rows}


def method_label(method: str) -> str:
    """A method name as a column title: kd -> KD, and a variant of a loss, kd_ls -> KD+LS."""
    return METHOD_LABELS.get(method, method.upper().replace("_", "+"))


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """The distinct methods, in METHOD_ORDER first and then alphabetically."""
    distinct = set(methods)
    known = [method for method in METHOD_ORDER if method in distinct]
    return known + sorted(distinct - set(METHOD_ORDER))


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one cell's values (one per seed)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


def stat(values: Iterable[float | None]) -> Stat | None:
    """The Stat of the values that exist, or None when there are none (missing is never zero)."""
    present = tuple(value for value in values if value is not None)
    return Stat(present) if present else None


def distilled_pairs(rows: list[Row]) -> list[tuple[str, str]]:
    """Every (teacher, student arch) of the distilled rows, sorted."""
    return sorted({(row["teacher"], row["arch"]) for row in rows if row["role"] == "student"})


def distill_methods(rows: list[Row]) -> list[str]:
    """The methods of the distilled rows, in paper order."""
    return ordered_methods(row["method"] for row in rows if row["role"] == "student")


def group_runs(rows: list[Row], one_setting: bool) -> Groups:
    """(teacher, arch, method) -> {params: rows}. With one_setting, a second params string for the
    same (teacher, arch, method) is an error: the main and capacity reports compare one setting."""
    groups: Groups = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row["teacher"], row["arch"], row["method"]][row["params"]].append(row)
    if one_setting:
        for (teacher, arch, method), settings in groups.items():
            if len(settings) > 1:
                raise RckdError(
                    f"{method} {teacher or 'without teacher'} -> {arch} was run with {len(settings)} settings "
                    f"{sorted(settings)}; this report compares one setting per method (use a sweep experiment)"
                )
    return groups


def runs_of(groups: Groups, teacher: str, arch: str, method: str) -> list[Row]:
    """Every run of (teacher, arch, method), over all its settings; teacher "" for runs without one."""
    return [row for setting in groups.get((teacher, arch, method), {}).values() for row in setting]


def vanilla_runs(groups: Groups, arch: str, teacher: str = "") -> list[Row]:
    """The vanilla student: the runs of `arch` in role vanilla (a teacher of the same architecture is
    not one, unless the plan made it the same run). Given the pair's `teacher`, only those under the
    schedule (epochs, lr) of the pair's distilled runs, beside which the plan trains them: pairs of one
    student may train for different epochs (MLKD's)."""
    schedules = {(row["epochs"], row["lr"]) for (pair_teacher, pair_arch, _), settings in groups.items()
                 if teacher and (pair_teacher, pair_arch) == (teacher, arch)
                 for setting in settings.values() for row in setting}
    return [row for row in runs_of(groups, "", arch, "ce")
            if row["role"] == "vanilla" and (not schedules or (row["epochs"], row["lr"]) in schedules)]


def teacher_runs(groups: Groups, teacher: str, student: str) -> list[Row]:
    """The `ce` runs of `teacher` that the distilled runs of (teacher, student) were distilled from, found
    by run directory: other seeds of the teacher architecture were never anyone's teacher here."""
    used = {os.path.realpath(row["teacher_run"])
            for (pair_teacher, pair_student, _), settings in groups.items()
            if (pair_teacher, pair_student) == (teacher, student)
            for setting in settings.values() for row in setting if row["teacher_run"]}
    return [row for row in runs_of(groups, "", teacher, "ce") if os.path.realpath(row["run"]) in used]
