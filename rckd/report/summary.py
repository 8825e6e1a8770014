"""`rckd summarize`: one row per run of an experiment -> summary.csv, the input of tables and plots.

A row comes from the run's metrics.json (written by the trainer) plus its eval.json when present
(written by `rckd evaluate`); eval columns of a run without eval.json stay empty, never zero. The
eval columns are of the final weights (as final_top1 is); their best_ twins are of the best epoch's
weights (best.pt, as best_top1 is), so a table can put fidelity beside the accuracy of the same weights.
`read_summary` parses the file back with numbers as floats and empty cells as None.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from rckd.errors import RckdError
from rckd.io import write_csv
from rckd.plan.naming import format_params

RUN_COLUMNS = ("experiment", "dataset", "teacher", "student", "method", "params", "seed", "epochs", "num_params",
               "best_top1", "final_top1", "wall_seconds")
EVAL_COLUMNS = ("top1", "top5", "nll", "ece", "agreement", "kl_t1", "kl_tm", "tau_all", "tau_nt", "top5_overlap")
BEST_EVAL_COLUMNS = tuple(f"best_{name}" for name in EVAL_COLUMNS if name != "top1")  # best_top1: the trainer's
# run: the run directory; teacher_run: the directory of the teacher's model.pt (empty without a teacher).
COLUMNS = (*RUN_COLUMNS, *EVAL_COLUMNS, *BEST_EVAL_COLUMNS, "run", "teacher_run")
INT_COLUMNS = ("seed", "epochs", "num_params")
FLOAT_COLUMNS = ("best_top1", "final_top1", "wall_seconds", *EVAL_COLUMNS, *BEST_EVAL_COLUMNS)
REQUIRED_METRICS = ("arch", "teacher", "teacher_arch", "method", "params", "seed", "epochs", "num_params", "best_top1",
                    "final_top1", "wall_seconds", "dataset")
# A run is identified by these; two run directories with the same values would be counted twice.
IDENTITY = ("teacher", "student", "method", "params", "seed", "epochs")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RckdError(f"{path} is not valid JSON ({err}); delete it and rerun the step that writes it") from None
    if not isinstance(payload, dict):
        raise RckdError(f"{path} should hold a JSON object ({what}); delete it and rerun the step that writes it")
    return payload


def run_row(experiment: str, run_dir: Path, method: str | None = None) -> dict[str, Any]:
    """The summary row of one run directory; `method` names its method column (a configured method
    name such as kd_ls), else the loss method of its metrics.json."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RckdError(f"{run_dir} has no metrics.json: the run is not finished; train it first")
    run_metrics = _read_json(metrics_path, "run metrics")
    missing = [key for key in REQUIRED_METRICS if key not in run_metrics]
    if missing:
        raise RckdError(f"{metrics_path} lacks {missing}: it was written by another rckd version; retrain the run")
    row: dict[str, Any] = {
        "experiment": experiment, "dataset": run_metrics["dataset"], "teacher": run_metrics["teacher_arch"] or "",
        "student": run_metrics["arch"], "method": method or run_metrics["method"], "params": format_params(run_metrics["params"]),
        **{key: run_metrics[key] for key in ("seed", "epochs", "num_params", "best_top1", "final_top1",
                                              "wall_seconds")},
        "run": str(run_dir),
        "teacher_run": str(Path(run_metrics["teacher"]).parent) if run_metrics["teacher"] else "",
    }
    eval_path = run_dir / "eval.json"
    evaluation = _read_json(eval_path, "evaluation") if eval_path.is_file() else {}
    row.update({key: evaluation.get(key, "") for key in EVAL_COLUMNS})
    best = evaluation.get("best", {})
    if run_metrics.get("source"):  # an imported teacher: no training history, its weights are the evaluated ones
        row.update(best_top1=evaluation.get("top1", ""), final_top1=evaluation.get("top1", ""))
        best = evaluation
    row.update({key: best.get(key.removeprefix("best_"), "") for key in BEST_EVAL_COLUMNS})
    return row


def summarize(experiment: str, run_dirs: list[Path], methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every run, sorted by teacher, student, method, params and seed; `methods` (one per run
    directory) names their method column."""
    if methods is not None and len(methods) != len(run_dirs):
        raise RckdError(f"--methods gives {len(methods)} names for {len(run_dirs)} --runs; give one per run")
    named = list(zip(run_dirs, methods or [None] * len(run_dirs)))
    # A run listed twice (e.g. by two roles) counts once.
    unique_dirs = {Path(run_dir).resolve(): (Path(run_dir), method) for run_dir, method in reversed(named)}
    rows = [run_row(experiment, run_dir, method) for run_dir, method in unique_dirs.values()]
    seen: dict[tuple, str] = {}
    for row in rows:
        identity = tuple(row[key] for key in IDENTITY)
        if identity in seen:
            raise RckdError(
                f"runs {seen[identity]} and {row['run']} have the same teacher, student, method, params, seed "
                f"and epochs; pass each run once"
            )
        seen[identity] = row["run"]
    return sorted(rows, key=lambda row: tuple(str(row[key]) for key in ("teacher", "student", "method", "params"))
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
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="the method name of each run, in --runs order (default: its loss method)")
    parser.add_argument("--out", required=True, type=Path, help="summary.csv to write")


def run(args: argparse.Namespace) -> int:
    rows = summarize(args.experiment, args.runs, args.methods)
    write_csv(args.out, rows, COLUMNS)
    print(f"{args.out}: {len(rows)} runs", flush=True)
    return 0
