"""`rckd plot`: figures of an experiment from its summary.csv (and the runs' history.csv) -> PNG.

Each experiment kind names its figure and the function that draws it (rckd.plan.kinds); `--kind` takes
the figure's name:

- curves: per teacher -> student pair, test top-1 and non-target Kendall tau per epoch, one line per
  method (mean over seeds, band from the lowest to the highest seed); the vanilla student joins
  the top-1 panel and the teacher's accuracy (--metric: of its best or final epoch) is a dotted line.
- capacity: student top-1 and non-target tau against the teacher's own top-1, one line per method.
- ablation: one horizontal bar per distillation setting (top-1 and tau), error bars = sample std
  over seeds (none with one seed).

Figures use matplotlib's object API with the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rckd.errors import RckdError
from rckd.io import atomic_path
from rckd.plan import kinds
from rckd.plan.naming import parse_params
from rckd.report import (TAU_COLUMN, TOP1_COLUMN, Row, Stat, distill_methods, distilled_pairs, group_runs,
                         method_label, runs_of, stat, teacher_runs, vanilla_runs)
from rckd.report.summary import read_summary

METHOD_COLORS = {"ce": "#7f7f7f", "kd": "#1f77b4", "dkd": "#ff7f0e", "dist": "#2ca02c", "kd_ls": "#17becf",
                 "dkd_ls": "#bcbd22", "wttm": "#8c564b", "rckd": "#d62728"}
OTHER_COLORS = ("#9467bd", "#e377c2", "#aec7e8", "#ffbb78", "#98df8a")
TAU_LABEL = "non-target Kendall τ-b to teacher"
PAIRS_PER_ROW = 2
ZOOM_FROM = 0.25  # top-1 curves: the y axis covers the values from this fraction of training on
DPI = 130


def method_color(method: str, methods: list[str]) -> str:
    others = [other for other in methods if other not in METHOD_COLORS]
    return METHOD_COLORS.get(method) or OTHER_COLORS[others.index(method) % len(OTHER_COLORS)]


def read_history(run_dir: str) -> list[dict[str, float | None]]:
    """epoch, test_top1 and tau_nt of every epoch of a run (tau_nt None where the run has none)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise RckdError(f"{path} not found; the curves need the runs' history.csv (rerun the training rule)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"epoch", "test_top1"} <= rows[0].keys():
        raise RckdError(f"{path} lacks the epoch/test_top1 columns; rerun the training rule")
    return [{"epoch": float(row["epoch"]), "test_top1": float(row["test_top1"]),
             "tau_nt": float(row["tau_nt"]) if row.get("tau_nt") not in (None, "") else None} for row in rows]


def epoch_band(histories: list[list[dict]], column: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """(epochs, mean, lowest, highest) over the runs at every epoch where at least one run has a value."""
    by_epoch: dict[float, list[float]] = defaultdict(list)
    for history in histories:
        for row in history:
            if row[column] is not None:
                by_epoch[row["epoch"]].append(row[column])
    epochs = sorted(by_epoch)
    return (epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], [min(by_epoch[e]) for e in epochs],
            [max(by_epoch[e]) for e in epochs])


def _line(axes, histories: list[list[dict]], column: str, label: str, color: str, dashed: bool = False) -> None:
    epochs, mean, low, high = epoch_band(histories, column)
    if not epochs:
        return
    axes.plot(epochs, mean, color=color, label=label, linewidth=1.4, linestyle="--" if dashed else "-")
    if len(histories) > 1:
        axes.fill_between(epochs, low, high, color=color, alpha=0.15, linewidth=0)


def _zoom_to_late_epochs(axes) -> None:
    """Set the y range to the values after ZOOM_FROM of the epochs, where the methods separate; the
    steep first epochs would otherwise squeeze the final differences into a few pixels."""
    lows, highs = [], []
    for line in axes.get_lines():
        epochs, values = line.get_xdata(), line.get_ydata()
        if len(epochs) > 1:  # the teacher's horizontal line counts too (x 0..1), so it stays in view
            start = epochs[0] + ZOOM_FROM * (epochs[-1] - epochs[0])
            late = [value for epoch, value in zip(epochs, values) if epoch >= start]
            lows.append(min(late))
            highs.append(max(late))
    if lows:
        low, high = min(lows), max(highs)
        margin = max(high - low, 1.0) * 0.08
        axes.set_ylim(low - margin, high + margin)


def _dataset(rows: list[Row]) -> str:
    return ", ".join(sorted({row["dataset"] for row in rows}))


def _figure_legend(figure: Figure, axes_list: list) -> None:
    """One legend for the figure, from the labelled lines of all panels, below the panels."""
    entries: dict[str, Any] = {}
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    figure.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=min(len(entries), 7),
                  frameon=False)


def curves_figure(rows: list[Row], metric: str) -> Figure:
    pairs = distilled_pairs(rows)
    if not pairs:
        raise RckdError("the summary has no distilled runs (rows in role student); nothing to plot as curves")
    methods = distill_methods(rows)
    groups = group_runs(rows, one_setting=True)
    columns = min(PAIRS_PER_ROW, len(pairs))
    lines = math.ceil(len(pairs) / columns)
    figure = Figure(figsize=(4.6 * 2 * columns, 3.4 * lines + 1.2), layout="constrained")
    grid = figure.subplots(lines, 2 * columns, squeeze=False)
    for index, (teacher, student) in enumerate(pairs):
        panel_row, panel_column = index // columns, 2 * (index % columns)
        top1_axes, tau_axes = grid[panel_row][panel_column], grid[panel_row][panel_column + 1]
        vanilla = vanilla_runs(groups, student, teacher)
        if vanilla:
            _line(top1_axes, [read_history(row["run"]) for row in vanilla], "test_top1", "Vanilla student (CE)",
                  METHOD_COLORS["ce"], dashed=True)
        for method in methods:
            histories = [read_history(row["run"]) for row in runs_of(groups, teacher, student, method)]
            _line(top1_axes, histories, "test_top1", method_label(method), method_color(method, methods))
            _line(tau_axes, histories, "tau_nt", method_label(method), method_color(method, methods))
        teacher_top1 = stat(row[TOP1_COLUMN[metric]] for row in teacher_runs(groups, teacher, student))
        if teacher_top1 is not None:
            top1_axes.axhline(teacher_top1.mean, color="black", linestyle=":", linewidth=1,
                              label=f"Teacher (CE, {metric} epoch)")
        _zoom_to_late_epochs(top1_axes)
        top1_axes.set(title=f"{teacher} → {student}: test top-1", xlabel="epoch",
                      ylabel="test top-1 (%), zoomed to later epochs")
        tau_axes.set(title=f"{teacher} → {student}: rank fidelity", xlabel="epoch", ylabel=TAU_LABEL)
        for axes in (top1_axes, tau_axes):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
    for index in range(len(pairs), lines * columns):  # empty slots of the last row
        grid[index // columns][2 * (index % columns)].set_visible(False)
        grid[index // columns][2 * (index % columns) + 1].set_visible(False)
    figure.suptitle(f"{_dataset(rows)}: training curves per teacher → student pair "
                    "(mean over seeds; shaded: lowest to highest seed)")
    _figure_legend(figure, list(grid.flat))
    return figure


def _errorbar(axes, xs: list[float], cells: list[Stat | None], label: str, color: str) -> None:
    points = [(x, cell) for x, cell in zip(xs, cells) if cell is not None]
    if points:
        axes.errorbar([x for x, _ in points], [cell.mean for _, cell in points],
                      yerr=[cell.std or 0.0 for _, cell in points], label=label, color=color, marker="o",
                      capsize=3, linewidth=1.4)


def capacity_figure(rows: list[Row], metric: str) -> Figure:
    column = TOP1_COLUMN[metric]
    pairs = distilled_pairs(rows)
    methods = distill_methods(rows)
    groups = group_runs(rows, one_setting=True)
    students = sorted({student for _, student in pairs})
    if not students:
        raise RckdError("the summary has no distilled runs (rows in role student); nothing to plot for capacity")
    figure = Figure(figsize=(12, 4.4 * len(students) + 1.0), layout="constrained")
    grid = figure.subplots(len(students), 2, squeeze=False)
    for (top1_axes, tau_axes), student in zip(grid, students):
        teacher_top1 = {teacher: stat(row[column] for row in teacher_runs(groups, teacher, student))
                        for teacher, other in pairs if other == student}
        placed = sorted((cell.mean, teacher) for teacher, cell in teacher_top1.items() if cell is not None)
        unplaced = sorted(teacher for teacher, cell in teacher_top1.items() if cell is None)
        if not placed:
            raise RckdError(f"no teacher run that {student} was distilled from is in the summary, so the "
                            "teachers cannot be placed by accuracy; summarize the teachers' runs too")
        xs = [x for x, _ in placed]
        for method in methods:
            color = method_color(method, methods)
            runs = [runs_of(groups, teacher, student, method) for _, teacher in placed]
            label = method_label(method)
            _errorbar(top1_axes, xs, [stat(row[column] for row in group) for group in runs], label, color)
            _errorbar(tau_axes, xs, [stat(row[TAU_COLUMN[metric]] for row in group) for group in runs], label, color)
        vanilla = stat(row[column] for row in vanilla_runs(groups, student))
        if vanilla is not None:
            top1_axes.axhline(vanilla.mean, color=METHOD_COLORS["ce"], linestyle="--", linewidth=1.2,
                              label="Vanilla student (CE)")
        for axes in (top1_axes, tau_axes):
            axes.set_xticks(xs, [f"{teacher}\n{x:.1f}" for x, teacher in placed], rotation=30, fontsize=8)
            axes.set_xlabel(f"teacher ({metric}-epoch test top-1, %)")
            axes.grid(alpha=0.3)
        missing = f" (teacher run not summarized, not shown: {', '.join(unplaced)})" if unplaced else ""
        top1_axes.set(title=f"student {student}: accuracy by teacher{missing}",
                      ylabel=f"student {metric}-epoch test top-1 (%)")
        tau_axes.set(title=f"student {student}: rank fidelity by teacher",
                     ylabel=f"{TAU_LABEL} ({metric}-epoch weights)")
    figure.suptitle(f"{_dataset(rows)}: teacher capacity (mean ± sample std over seeds)")
    _figure_legend(figure, list(grid.flat))
    return figure


def _setting_labels(variants: list[tuple[str, str]]) -> list[str]:
    """Bar labels: the method and the parameters that vary between that method's settings."""
    labels = []
    for method, params in variants:
        settings = [parse_params(other_params) for other, other_params in variants if other == method]
        values = parse_params(params)
        varying = [name for name in sorted(values) if len({setting.get(name) for setting in settings}) > 1]
        labels.append(f"{method_label(method)}  " + ", ".join(f"{name}={values[name]}" for name in varying))
    return labels


def _bars(axes, cells: list[Stat | None], colors: list[str], digits: int, reference: float | None = None) -> None:
    """Horizontal bars, first variant on top, with the value printed at each bar's end. The value axis is
    zoomed to the bars (and the reference line) since the differences are small against the values."""
    positions = [index for index, cell in enumerate(cells) if cell is not None]
    axes.set_yticks(range(len(cells)))
    axes.set_ylim(len(cells) - 0.4, -0.6)
    if not positions:
        return
    means = [cells[index].mean for index in positions]
    errors = [cells[index].std or 0.0 for index in positions]
    bars = axes.barh(positions, means, xerr=errors if any(errors) else None, capsize=3, height=0.7,
                     color=[colors[index] for index in positions])
    axes.bar_label(bars, [f"{mean:.{digits}f}" for mean in means], padding=3, fontsize=8)
    ends = [mean - error for mean, error in zip(means, errors)] + [mean + error for mean, error in zip(means, errors)]
    ends += [] if reference is None else [reference]
    low, high = min(ends), max(ends)
    margin = max(high - low, abs(high) * 0.02, 1e-3) * 0.15
    axes.set_xlim(low - margin, high + 2.5 * margin)


def ablation_figure(rows: list[Row], metric: str) -> Figure:
    column = TOP1_COLUMN[metric]
    pairs = distilled_pairs(rows)
    if not pairs:
        raise RckdError("the summary has no distilled runs (rows in role student); nothing to plot for the ablation")
    methods = distill_methods(rows)
    groups = group_runs(rows, one_setting=False)
    variants = {pair: sorted({(row["method"], row["params"]) for row in rows
                              if row["role"] == "student" and (row["teacher"], row["arch"]) == pair},
                             key=lambda variant: (methods.index(variant[0]), variant[1]))
                for pair in pairs}
    height = sum(1.2 + 0.32 * len(pair_variants) for pair_variants in variants.values()) + 0.8
    figure = Figure(figsize=(13, height), layout="constrained")
    grid = figure.subplots(len(pairs), 2, squeeze=False, sharey="row",
                           height_ratios=[len(variants[pair]) + 2 for pair in pairs])
    for (top1_axes, tau_axes), pair in zip(grid, pairs):
        teacher, student = pair
        variant_rows = [groups[teacher, student, method][params] for method, params in variants[pair]]
        colors = [method_color(method, methods) for method, _ in variants[pair]]
        vanilla = stat(row[column] for row in vanilla_runs(groups, student, teacher))
        _bars(top1_axes, [stat(row[column] for row in group) for group in variant_rows], colors, 2,
              None if vanilla is None else vanilla.mean)
        _bars(tau_axes, [stat(row[TAU_COLUMN[metric]] for row in group) for group in variant_rows], colors, 3)
        top1_axes.set_yticklabels(_setting_labels(variants[pair]), fontsize=8)
        if vanilla is not None:
            top1_axes.axvline(vanilla.mean, color=METHOD_COLORS["ce"], linestyle="--", linewidth=1.2,
                              label=f"Vanilla student (CE): {vanilla.mean:.2f}")
        top1_axes.set(title=f"{teacher} → {student}: accuracy",
                      xlabel=f"{metric}-epoch test top-1 (%), axis not from 0")
        tau_axes.set(title=f"{teacher} → {student}: rank fidelity",
                     xlabel=f"{TAU_LABEL} ({metric}-epoch weights), axis not from 0")
        for axes in (top1_axes, tau_axes):
            axes.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{_dataset(rows)}: ablation per distillation setting (mean ± sample std over seeds)")
    _figure_legend(figure, [axes for axes, _ in grid])
    return figure


def save_png(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=kinds.figures(),
                        help="the figure of an experiment kind: " + ", ".join(
                            f"{kind.figure} ({name})" for name, kind in kinds.KINDS.items()))
    parser.add_argument("--summary", required=True, type=Path, help="summary.csv from rckd summarize")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--metric", choices=sorted(TOP1_COLUMN), default="best",
                        help="top-1 of the plots (the curves' teacher line): best or final epoch (default: best)")


def run(args: argparse.Namespace) -> int:
    rows = read_summary(args.summary)
    if not rows:
        raise RckdError(f"{args.summary} has no runs; check the --runs given to rckd summarize")
    figure = kinds.builder(kinds.by_figure(args.kind).plot)(rows, args.metric)
    save_png(figure, args.out)
    print(f"{args.out}: {args.kind} plot of {len(rows)} runs", flush=True)
    return 0
