"""`rckd summarize`: one row per run of an experiment -> summary.csv, the input of tables and plots.

A row comes from the run's metrics.json (written by the trainer) plus its eval.json when present
(written by `rckd evaluate`); eval columns of a run without eval.json stay empty, never zero. The
eval columns are of the final weights (as final_top1 is); their best_ twins are of the best epoch's
weights (best.pt, as best_top1 is), so a table can put fidelity beside the accuracy of the same weights.
Each row names the run's role as the planner decided it (teacher, vanilla or student: `--roles`), its
own `arch` and its teacher's arch (`teacher`, empty without one).
`read_summary` parses the file back with numbers as floats and empty cells as None.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from rckd.errors import RckdError
from rckd.io import write_csv
from rckd.plan.naming import format_params
from rckd.plan.records import ROLES
from rckd.records import EvalRecord, RunMetrics, Scores

# lr: the run's initial learning rate (empty for an imported teacher, which was not trained here).
RUN_COLUMNS = ("experiment", "dataset", "role", "arch", "teacher", "method", "params", "seed", "epochs", "lr",
               "num_params", "best_top1", "final_top1", "wall_seconds")
EVAL_COLUMNS = ("top1", "top5", "nll", "ece", "agreement", "kl_t1", "kl_tm", "tau_all", "tau_nt", "top5_overlap")
BEST_EVAL_COLUMNS = tuple(f"best_{name}" for name in EVAL_COLUMNS if name != "top1")  # best_top1: the trainer's
# run: the run directory; teacher_run: the directory of the teacher's model.pt (empty without a teacher).
COLUMNS = (*RUN_COLUMNS, *EVAL_COLUMNS, *BEST_EVAL_COLUMNS, "run", "teacher_run")
INT_COLUMNS = ("seed", "epochs", "num_params")
FLOAT_COLUMNS = ("lr", "best_top1", "final_top1", "wall_seconds", *EVAL_COLUMNS, *BEST_EVAL_COLUMNS)
# A run is identified by these; two run directories with the same values would be counted twice.
IDENTITY = ("teacher", "arch", "method", "params", "seed", "epochs")


def _cells(scores: Scores | None, columns: tuple[str, ...]) -> dict[str, Any]:
    """The score columns (best_ ones named after their score) of `scores`; empty where there is none."""
    values = {} if scores is None else scores.to_dict()
    return {column: values.get(column.removeprefix("best_"), "") for column in columns}


def run_row(experiment: str, run_dir: Path, role: str, method: str | None = None) -> dict[str, Any]:
    """The summary row of one run directory in `role` (one of ROLES); `method` names its method column
    (a configured method name such as kd_ls), else the loss method of its metrics.json."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RckdError(f"{run_dir} has no metrics.json: the run is not finished; train it first")
    run = RunMetrics.read(metrics_path)
    if role not in ROLES:
        raise RckdError(f"{run_dir}: role {role!r} is not one of {', '.join(ROLES)}")
    if (role == "student") != bool(run.teacher_arch):
        raise RckdError(f"{run_dir}: given the role {role}, but it was trained "
                        + (f"from teacher {run.teacher_arch}: its role is student" if run.teacher_arch
                           else "without a teacher: its role is teacher or vanilla"))
    eval_path = run_dir / "eval.json"
    evaluation = EvalRecord.read(eval_path) if eval_path.is_file() else None
    if run.imported:  # no training history: its weights are the evaluated ones, best and final
        top1 = evaluation.top1 if evaluation else ""
        accuracy, best = {"best_top1": top1, "final_top1": top1}, evaluation
    else:
        accuracy, best = {"best_top1": run.best_top1, "final_top1": run.final_top1}, evaluation and evaluation.best
    return {
        "experiment": experiment, "dataset": run.dataset, "role": role, "arch": run.arch,
        "teacher": run.teacher_arch or "", "method": method or run.method, "params": format_params(run.params),
        "seed": run.seed, "epochs": run.epochs, "lr": run.spec["lr"] if run.spec else "",
        "num_params": run.num_params, **accuracy, "wall_seconds": run.wall_seconds,
        **_cells(evaluation, EVAL_COLUMNS), **_cells(best, BEST_EVAL_COLUMNS),
        "run": str(run_dir), "teacher_run": str(Path(run.teacher).parent) if run.teacher else "",
    }


def summarize(experiment: str, run_dirs: list[Path], roles: list[str],
              methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every run, sorted by teacher, arch, method, params and seed; `roles` (one per run
    directory, from the plan) names their role and `methods` (likewise) their method column."""
    for option, names in (("--roles", roles), ("--methods", methods)):
        if names is not None and len(names) != len(run_dirs):
            raise RckdError(f"{option} gives {len(names)} names for {len(run_dirs)} --runs; give one per run")
    named = list(zip(run_dirs, roles, methods or [None] * len(run_dirs)))
    # A run listed twice counts once, in its first role.
    unique_dirs = {Path(run_dir).resolve(): (Path(run_dir), role, method) for run_dir, role, method in reversed(named)}
    rows = [run_row(experiment, run_dir, role, method) for run_dir, role, method in unique_dirs.values()]
    seen: dict[tuple, str] = {}
    for row in rows:
        identity = tuple(row[key] for key in IDENTITY)
        if identity in seen:
            raise RckdError(
                f"runs {seen[identity]} and {row['run']} have the same teacher, arch, method, params, seed "
                f"and epochs; pass each run once"
            )
        seen[identity] = row["run"]
    return sorted(rows, key=lambda row: tuple(str(row[key]) for key in ("teacher", "arch", "method", "params"))
                  + (row["seed"],))


def _parse_number(text: str, column: str, path: Path, cast: type) -> Any:
    if text == "":
        return None
    try:
        value = cast(float(text)) if cast is int else cast(text)
    except ValueError:
        raise RckdError(f"{path}: column {column} holds {text!r}, not a number; rerun rckd summarize") from None
    return None if isinstance(value, float) and math.isnan(value) else value


def read_summary(path: str | Path) -> list[dict[str, Any]]:
    """summary.csv rows with INT_COLUMNS as int, FLOAT_COLUMNS as float and empty or NaN cells as None."""
    path = Path(path)
    if not path.is_file():
        raise RckdError(f"summary {path} not found; run rckd summarize first")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise RckdError(f"{path} lacks columns {missing}; rerun rckd summarize to rewrite it")
        rows = list(reader)
    for row in rows:
        for column in INT_COLUMNS:
            row[column] = _parse_number(row[column], column, path, int)
        for column in FLOAT_COLUMNS:
            row[column] = _parse_number(row[column], column, path, float)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="experiment name written into every row")
    parser.add_argument("--runs", required=True, nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories (each with metrics.json, and eval.json when evaluated)")
    parser.add_argument("--roles", required=True, nargs="+", choices=ROLES, metavar="ROLE",
                        help=f"the role of each run, in --runs order, as the plan decides it: {', '.join(ROLES)}")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="the method name of each run, in --runs order (default: its loss method)")
    parser.add_argument("--out", required=True, type=Path, help="summary.csv to write")


def run(args: argparse.Namespace) -> int:
    rows = summarize(args.experiment, args.runs, args.roles, args.methods)
    write_csv(args.out, rows, COLUMNS)
    print(f"{args.out}: {len(rows)} runs", flush=True)
    return 0
