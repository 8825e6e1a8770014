"""`rckd table`: paper-style results tables from an experiment's summary.csv -> table.md + table.csv.

table.md holds the best-epoch and the final-epoch version of the table (the one named by --metric
first), each captioned with which it is; published numbers are each source's own statistic. table.csv
holds the --metric version only, with mean, std and n of every cell. Each experiment kind names its
table builder (rckd.plan.kinds). For `main`, table.md also
holds the measured-minus-published comparison (CIFAR-100, best epoch, from config/published.yaml)
and a paired comparison of RCKD with each baseline over matched (pair, seed) runs; --out-paired
writes that comparison as CSV too.

Cells are the mean ± sample standard deviation over seeds (just the mean with one seed); a cell with
fewer seeds than its column's maximum says "(n=k)", and a cell without any finished run shows "—",
never zero.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from scipy import stats as scipy_stats

from rckd.errors import RckdError
from rckd.io import write_csv, write_text
from rckd.plan.kinds import KINDS, builder
from rckd.plan.naming import parse_params
from rckd.report import (TAU_COLUMN, TOP1_COLUMN, WEIGHTS, Groups, Row, Stat, distill_methods, distilled_pairs,
                         group_runs, method_label, runs_of, stat, teacher_runs, vanilla_runs)
from rckd.report.summary import read_summary

METRIC_NAME = {"best": "best-epoch", "final": "final-epoch"}
METRIC_NOTE = {
    "best": "Top-1: each run's highest test accuracy over its epochs (best epoch), as the papers report.",
    "final": "Top-1: the test accuracy of each run's last-epoch weights (final epoch).",
}
MISSING = "—"
NOT_APPLICABLE = "n/a"


def format_stat(cell: Stat | None, digits: int = 2, expected_n: int = 1) -> str:
    if cell is None:
        return MISSING
    text = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        text += f" ± {cell.std:.{digits}f}"
    if cell.n < expected_n:
        text += f" (n={cell.n})"
    return text


def format_delta(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:+.{digits}f}"


def stat_columns(prefix: str, cell: Stat | None) -> dict[str, Any]:
    """A cell as CSV columns <prefix>_mean, <prefix>_std, <prefix>_n (empty when absent)."""
    return {
        f"{prefix}_mean": "" if cell is None else cell.mean,
        f"{prefix}_std": "" if cell is None or cell.std is None else cell.std,
        f"{prefix}_n": 0 if cell is None else cell.n,
    }


def markdown_table(header: list[str], body: list[list[str]], text_columns: int = 1) -> str:
    """A GitHub-flavoured markdown table: the first `text_columns` left-aligned, the numbers right-aligned."""
    alignment = [":---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def bold_best(cells: list[Stat | None], texts: list[str], digits: int = 2) -> list[str]:
    """Bold the texts of the cells with the highest mean, as shown (ties at the shown precision all bold)."""
    shown = [None if cell is None else round(cell.mean, digits) for cell in cells]
    best = max((value for value in shown if value is not None), default=None)
    return [f"**{text}**" if value is not None and value == best else text for value, text in zip(shown, texts)]


def expected_counts(cells: Iterable[Stat | None]) -> int:
    return max((cell.n for cell in cells if cell is not None), default=0)


# --- grouping the summary ------------------------------------------------------------------------


def single_dataset(rows: list[Row], summary: Path) -> str:
    datasets = sorted({row["dataset"] for row in rows})
    if len(datasets) != 1:
        raise RckdError(f"{summary} holds runs of {len(datasets)} data sets {datasets}; a table needs exactly one")
    return datasets[0]


def vanilla_stat(groups: Groups, arch: str, column: str, teacher: str = "") -> Stat | None:
    """The vanilla student column: `arch` trained alone (beside the pair of `teacher`), over all its seeds."""
    return stat(row[column] for row in vanilla_runs(groups, arch, teacher))


def teacher_stat(groups: Groups, pair: tuple[str, str], column: str) -> Stat | None:
    """The teacher column: the teacher run(s) the pair's students were distilled from, not every seed
    of the teacher architecture."""
    return stat(row[column] for row in teacher_runs(groups, *pair))


def pair_cells(groups: Groups, pair: tuple[str, str], methods: list[str], column: str) -> dict[str, Stat | None]:
    """A main-table row: the teacher and the student trained alone, and the student under each method."""
    return {"teacher": teacher_stat(groups, pair, column), "vanilla": vanilla_stat(groups, pair[1], column, pair[0]),
            **{method: stat(row[column] for row in runs_of(groups, *pair, method)) for method in methods}}


# --- published numbers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    url: str
    statistic: str  # what the number is, as the source says it (a best epoch, a mean of n runs, ...)


@dataclass(frozen=True)
class Published:
    top1: float
    source: Source


@dataclass(frozen=True)
class PublishedSet:
    teachers: dict[str, Published]
    students: dict[str, Published]
    distilled: dict[tuple[str, str, str], Published]  # (teacher, student, method)

    def sources(self) -> list[Source]:
        entries = [*self.teachers.values(), *self.students.values(), *self.distilled.values()]
        return sorted({entry.source for entry in entries}, key=lambda source: (source.url, source.statistic))


def load_published(path: Path, dataset: str) -> PublishedSet | None:
    """The published numbers for `dataset` from config/published.yaml, or None when it has none."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RckdError(f"published numbers file {path} not found; pass --published config/published.yaml") from None
    except yaml.YAMLError as err:
        raise RckdError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(document, dict) or not isinstance(document.get("sources", {}), dict):
        raise RckdError(f"{path} should map data set names (and `sources`) to published numbers")
    if dataset not in document:
        return None
    sources = {}
    for name, record in document.get("sources", {}).items():
        if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("url", "statistic")):
            raise RckdError(f"{path}: source {name!r} needs a url and a statistic (what its numbers are: a best "
                            f"epoch, a mean of n runs, or that the source does not say)")
        sources[name] = Source(record["url"], record["statistic"])
    section = document[dataset]

    def entry(record: dict[str, Any], where: str) -> Published:
        if record.get("source") not in sources or not isinstance(record.get("top1"), (int, float)):
            raise RckdError(f"{path}: {dataset} {where} needs a numeric top1 and a source from {sorted(sources)}")
        return Published(float(record["top1"]), sources[record["source"]])

    return PublishedSet(
        teachers={arch: entry(record, f"teacher {arch}") for arch, record in section.get("teachers", {}).items()},
        students={arch: entry(record, f"student {arch}") for arch, record in section.get("students", {}).items()},
        distilled={
            (record["teacher"], record["student"], record["method"]):
                entry(record, f"{record['method']} {record['teacher']} -> {record['student']}")
            for record in section.get("distillation", [])
        },
    )


# --- paired comparison --------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """Differences method - baseline over runs matched by (teacher, student, seed)."""

    method: str
    baseline: str
    differences: tuple[float, ...]
    num_pairs: int

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.differences) if self.differences else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% t interval of the mean difference; None when n < 2 (undefined)."""
        if self.n < 2:
            return None
        half = scipy_stats.t.ppf(0.975, self.n - 1) * statistics.stdev(self.differences) / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def wins(self) -> int:
        return sum(difference > 0 for difference in self.differences)


def paired(rows: list[Row], column: str, method: str, baseline: str) -> Paired:
    by_run: dict[tuple[str, str, str, int], float] = {}
    for row in rows:
        if row["role"] == "student" and row["method"] in (method, baseline) and row[column] is not None:
            by_run[row["method"], row["teacher"], row["arch"], row["seed"]] = row[column]
    matched = sorted(key[1:] for key in by_run if key[0] == method and (baseline, *key[1:]) in by_run)
    differences = tuple(by_run[(method, *key)] - by_run[(baseline, *key)] for key in matched)
    return Paired(method, baseline, differences, len({key[:2] for key in matched}))


def paired_comparisons(rows: list[Row], column: str) -> list[Paired]:
    """RCKD against every other distillation method in the summary."""
    methods = distill_methods(rows)
    if "rckd" not in methods:
        return []
    return [paired(rows, column, "rckd", baseline) for baseline in methods if baseline != "rckd"]


def paired_markdown(comparisons: list[Paired], metric: str) -> str:
    body = []
    for comparison in comparisons:
        interval = comparison.interval
        if comparison.n == 0:
            ci = "no matched runs"
        elif interval is None:
            ci = "undefined (n=1)"
        else:
            ci = f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
        body.append([
            f"{method_label(comparison.method)} − {method_label(comparison.baseline)}",
            f"{comparison.n} ({comparison.num_pairs} pair{'' if comparison.num_pairs == 1 else 's'})",
            format_delta(comparison.mean), ci,
            f"{comparison.wins}/{comparison.n}",
        ])
    header = ["Comparison", "Matched runs", "Mean Δ (pp)", "95% CI (pp)", "Wins"]
    return (f"### Paired comparison: {METRIC_NAME[metric]} top-1\n\n"
            "Differences between runs of the same teacher → student pair and seed, pooled over pairs and "
            "seeds (each pair × seed counted as one independent difference); 95% confidence interval from "
            "the t distribution with n − 1 degrees of freedom, undefined for n = 1. An interval that "
            "excludes 0 is a gain (or loss) larger than the seed-to-seed noise. Wins: differences > 0.\n\n"
            + markdown_table(header, body))


def paired_csv_rows(comparisons: list[Paired], metric: str) -> list[Row]:
    rows = []
    for comparison in comparisons:
        interval = comparison.interval
        rows.append({
            "metric": metric, "method": comparison.method, "baseline": comparison.baseline, "n": comparison.n,
            "pairs": comparison.num_pairs, "mean_difference": "" if comparison.mean is None else comparison.mean,
            "ci95_low": "" if interval is None else interval[0], "ci95_high": "" if interval is None else interval[1],
            "wins": comparison.wins,
        })
    return rows


# --- the three tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    markdown: str
    csv_rows: list[Row]
    paired_rows: list[Row] | None = None  # the paired comparison (main), None for a table without one


def main_table(rows: list[Row], metric: str, published: PublishedSet | None) -> Section:
    """One row per teacher -> student pair: teacher, vanilla student, each method, RCKD - KD."""
    column = TOP1_COLUMN[metric]
    groups = group_runs(rows, one_setting=True)
    pairs = distilled_pairs(rows)
    methods = distill_methods(rows)
    cells = {pair: pair_cells(groups, pair, methods, column) for pair in pairs}
    keys = ["teacher", "vanilla", *methods]
    expected = {key: expected_counts(cells[pair][key] for pair in pairs) for key in keys}
    show_difference = "rckd" in methods and "kd" in methods
    compare_published = published is not None and metric == "best"
    body, csv_rows = [], []
    for pair in pairs:
        row_cells = cells[pair]
        texts = [format_stat(row_cells[key], expected_n=expected[key]) for key in keys]
        texts[1:] = bold_best([row_cells[key] for key in keys[1:]], texts[1:])
        difference = None
        if show_difference and row_cells["rckd"] is not None and row_cells["kd"] is not None:
            difference = row_cells["rckd"].mean - row_cells["kd"].mean
        body.append([f"{pair[0]} → {pair[1]}", *texts] + ([format_delta(difference)] if show_difference else []))
        csv_row: Row = {"metric": metric, "teacher": pair[0], "student": pair[1]}
        for key in keys:
            csv_row.update(stat_columns(f"{key}_top1", row_cells[key]))
        if show_difference:
            csv_row["rckd_minus_kd"] = "" if difference is None else difference
        if compare_published:
            numbers = published_numbers(published, pair, methods)
            for key in published_columns(published, methods):
                measured, number = row_cells[key], numbers[key]
                csv_row[f"{key}_published"] = "" if number is None else number.top1
                csv_row[f"{key}_minus_published"] = (
                    "" if number is None or measured is None else measured.mean - number.top1)
        csv_rows.append(csv_row)
    header = ["Teacher → Student", "Teacher", "Vanilla student", *map(method_label, methods)]
    header += ["RCKD − KD"] if show_difference else []
    markdown = (f"### Main: {METRIC_NAME[metric]} test top-1 (%)\n\n{METRIC_NOTE[metric]} {legend(expected)} "
                f"Bold: the best student of the row.{schedule_note(rows)}\n\n" + markdown_table(header, body))
    return Section(markdown, csv_rows)


def schedule_note(rows: list[Row]) -> str:
    """A caption sentence naming each schedule (epochs, and lr where the summary has it) of the distilled
    runs when they do not all train for the same number of epochs (e.g. MLKD's per-pair protocol), so
    pairs are not compared as if trained alike; "" when they do."""
    distilled = [row for row in rows if row["role"] == "student"]
    if len({row["epochs"] for row in distilled}) < 2:
        return ""
    pairs_by_schedule: dict[str, set[str]] = {}
    for row in sorted(distilled, key=lambda row: (row["epochs"], row["lr"] or 0.0)):
        lr = "" if row["lr"] is None else f" at lr {row['lr']:g}"
        pairs_by_schedule.setdefault(f"{row['epochs']} epochs{lr}", set()).add(f"{row['teacher']} → {row['arch']}")
    schedules = "; ".join(f"{schedule}: {', '.join(sorted(pairs))}" for schedule, pairs in pairs_by_schedule.items())
    return f" The distilled students train under different schedules, so compare pairs with care: {schedules}."


def main_report(rows: list[Row], metric: str, published: PublishedSet | None) -> Section:
    """The main table, then the paired RCKD-vs-baseline comparison and, for the best epoch, the
    measured-vs-published table."""
    section = main_table(rows, metric, published)
    comparisons = paired_comparisons(rows, TOP1_COLUMN[metric])
    parts = [section.markdown] + ([paired_markdown(comparisons, metric)] if comparisons else [])
    if published is not None and metric == "best":
        parts.append(published_markdown(rows, published))
    return Section("\n\n".join(parts), section.csv_rows, paired_csv_rows(comparisons, metric))


def legend(expected: dict[str, int]) -> str:
    seeds = sorted({count for count in expected.values() if count})
    counts = ", ".join(str(count) for count in seeds) or "0"
    return (f"Mean ± sample std over seeds (runs per column: {counts}; one run shows the mean alone); "
            f"(n=k): fewer runs than the column's others; {MISSING}: no finished run.")


def published_numbers(published: PublishedSet, pair: tuple[str, str],
                      methods: list[str]) -> dict[str, Published | None]:
    """The published number for each column of a main-table row (None where none is published)."""
    return {
        "teacher": published.teachers.get(pair[0]),
        "vanilla": published.students.get(pair[1]),
        **{method: published.distilled.get((*pair, method)) for method in methods},
    }


def published_columns(published: PublishedSet, methods: list[str]) -> list[str]:
    """The main-table columns that have published numbers: teacher, vanilla and the methods with any."""
    published_methods = {method for _, _, method in published.distilled}
    return ["teacher", "vanilla", *(method for method in methods if method in published_methods)]


def published_markdown(rows: list[Row], published: PublishedSet) -> str:
    """Measured (best epoch) beside published, with measured - published, for the columns with sources."""
    column = TOP1_COLUMN["best"]
    groups = group_runs(rows, one_setting=True)
    methods = distill_methods(rows)
    footnotes = {source: index + 1 for index, source in enumerate(published.sources())}
    keys = published_columns(published, methods)
    body = []
    for pair in distilled_pairs(rows):
        measured = pair_cells(groups, pair, methods, column)
        numbers = published_numbers(published, pair, methods)
        cells = []
        for key in keys:
            mine, theirs = measured[key], numbers[key]
            text = (f"{format_stat(mine)} / "
                    + (MISSING if theirs is None else f"{theirs.top1:.2f} [{footnotes[theirs.source]}]"))
            if mine is not None and theirs is not None:
                text += f" ({mine.mean - theirs.top1:+.2f})"
            cells.append(text)
        body.append([f"{pair[0]} → {pair[1]}", *cells])
    header = ["Teacher → Student", "Teacher", "Vanilla student", *(method_label(key) for key in keys[2:])]
    sources = "\n".join(f"- [{index}] {source.url}: {source.statistic}" for source, index in footnotes.items())
    return ("### Measured vs published, best-epoch top-1 (%)\n\n"
            "Each cell: measured (best epoch) / published [source] (measured − published). Each published "
            "number is the statistic its source reports, listed with the source below; RCKD's per-pair "
            "numbers are not public.\n\n"
            + markdown_table(header, body) + "\n\n" + sources)


def capacity_table(rows: list[Row], metric: str, published: PublishedSet | None = None) -> Section:
    """Student top-1 and non-target tau per teacher and method; teachers sorted by their own top-1.
    (No published numbers exist for it: `published` is accepted as by every table builder, not used.)"""
    column = TOP1_COLUMN[metric]
    groups = group_runs(rows, one_setting=True)
    methods = distill_methods(rows)
    students = sorted({pair[1] for pair in distilled_pairs(rows)})
    parts, csv_rows = [], []
    for student in students:
        teacher_top1 = {teacher: teacher_stat(groups, (teacher, student), column)
                        for teacher, other in distilled_pairs(rows) if other == student}
        teachers = sorted(teacher_top1, key=lambda arch: _teacher_sort_key(teacher_top1[arch], arch))
        top1 = {(teacher, method): stat(row[column] for row in runs_of(groups, teacher, student, method))
                for teacher in teachers for method in methods}
        tau = {(teacher, method): stat(row[TAU_COLUMN[metric]] for row in runs_of(groups, teacher, student, method))
               for teacher in teachers for method in methods}
        expected_top1 = expected_counts(top1.values())
        expected_tau = expected_counts(tau.values())
        expected_teacher = expected_counts(teacher_top1.values())
        body = []
        for teacher in teachers:
            top1_cells = [top1[teacher, method] for method in methods]
            method_texts = bold_best(top1_cells, [format_stat(cell, expected_n=expected_top1) for cell in top1_cells])
            cells = [teacher, format_stat(teacher_top1[teacher], expected_n=expected_teacher)]
            for method, text in zip(methods, method_texts):
                cells += [text, format_stat(tau[teacher, method], digits=3, expected_n=expected_tau)]
            body.append(cells)
            csv_row: Row = {"metric": metric, "student": student, "teacher": teacher,
                            **stat_columns("teacher_top1", teacher_top1[teacher])}
            for method in methods:
                csv_row.update(stat_columns(f"{method}_top1", top1[teacher, method]))
                csv_row.update(stat_columns(f"{method}_tau_nt", tau[teacher, method]))
            csv_rows.append(csv_row)
        header = ["Teacher", "Teacher top-1"]
        for method in methods:
            header += [f"{method_label(method)} top-1", f"{method_label(method)} τ_nt"]
        vanilla = vanilla_stat(groups, student, column)
        parts.append(
            f"Student **{student}** (vanilla: {format_stat(vanilla)}). Teachers sorted by their own top-1. "
            "τ_nt: mean Kendall τ-b between the student's and the teacher's logit rankings over the "
            f"non-target classes of each test image, of {WEIGHTS[metric]} as the top-1 beside it (eval.json). "
            f"{legend({'top1': expected_top1, 'tau': expected_tau})} Bold: the best method of the row.\n\n"
            + markdown_table(header, body))
    markdown = (f"### Capacity: {METRIC_NAME[metric]} test top-1 (%) and rank fidelity by teacher\n\n"
                f"{METRIC_NOTE[metric]}\n\n" + "\n\n".join(parts))
    return Section(markdown, csv_rows)


def _teacher_sort_key(teacher_top1: Stat | None, arch: str) -> tuple:
    """Weakest teacher first; teachers without their own runs last, by name."""
    return (teacher_top1 is None, teacher_top1.mean if teacher_top1 else 0.0, arch)


def split_settings(settings: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """(names of the parameters whose values differ between the params strings, the others' values)."""
    parsed = [parse_params(setting) for setting in settings]
    names = sorted({name for params in parsed for name in params})
    varying = [name for name in names if len({params.get(name) for params in parsed}) > 1]
    return varying, {name: parsed[0][name] for name in names if name not in varying}


def ablation_table(rows: list[Row], metric: str, published: PublishedSet | None = None) -> Section:
    """One row per distillation setting of each pair (the RCKD variants, and any baseline runs), below
    the teacher and the student trained alone. (`published`: as capacity_table.)"""
    column = TOP1_COLUMN[metric]
    groups = group_runs(rows, one_setting=False)
    parts, csv_rows = [], []
    for teacher, student in distilled_pairs(rows):
        variants = [(method, params, setting_rows)
                    for method in distill_methods(rows)
                    for params, setting_rows in sorted(groups.get((teacher, student, method), {}).items())]
        split = {method: split_settings(params for other, params, _ in variants if other == method)
                 for method in {method for method, _, _ in variants}}
        top1 = [stat(row[column] for row in setting_rows) for _, _, setting_rows in variants]
        tau = [stat(row[TAU_COLUMN[metric]] for row in setting_rows) for _, _, setting_rows in variants]
        expected_top1, expected_tau = expected_counts(top1), expected_counts(tau)
        top1_texts = bold_best(top1, [format_stat(cell, expected_n=expected_top1) for cell in top1])
        vanilla = vanilla_stat(groups, student, column, teacher)
        body = [[teacher, "Teacher (CE)", NOT_APPLICABLE, format_stat(teacher_stat(groups, (teacher, student), column)),
                 NOT_APPLICABLE],
                [student, method_label("ce"), NOT_APPLICABLE, format_stat(vanilla), NOT_APPLICABLE]]
        for (method, params, _), top1_text, top1_cell, tau_cell in zip(variants, top1_texts, top1, tau):
            values = parse_params(params)
            setting = ", ".join(f"{name}={values[name]}" for name in split[method][0] if name in values)
            body.append([student, method_label(method), setting or "(only setting)", top1_text,
                         format_stat(tau_cell, digits=3, expected_n=expected_tau)])
            csv_rows.append({"metric": metric, "teacher": teacher, "student": student, "method": method,
                             "params": params, **stat_columns("top1", top1_cell), **stat_columns("tau_nt", tau_cell)})
        fixed = "; ".join(f"{method_label(method)} " + ", ".join(f"{name}={value}" for name, value in constant.items())
                          for method, (_, constant) in sorted(split.items()) if constant)
        parts.append(
            f"Teacher **{teacher}**, student **{student}**. Setting: the parameters that vary between runs; "
            f"fixed: {fixed or 'none'}. τ_nt: mean non-target Kendall τ-b to the teacher, of {WEIGHTS[metric]} "
            f"as the top-1 beside it (eval.json). {legend({'top1': expected_top1, 'tau': expected_tau})} "
            "Bold: the best setting.\n\n"
            + markdown_table(["Model", "Method", "Setting", "Top-1 (%)", "τ_nt"], body, text_columns=3))
    markdown = (f"### Ablation: {METRIC_NAME[metric]} test top-1 (%) and rank fidelity per setting\n\n"
                f"{METRIC_NOTE[metric]}\n\n" + "\n\n".join(parts))
    return Section(markdown, csv_rows)


def build_report(experiment: str, kind: str, rows: list[Row], metric: str, published_path: Path | None,
                 summary: Path) -> tuple[str, list[Row], list[Row] | None]:
    """(table.md text, table.csv rows for `metric`, paired-comparison rows for `metric` or None when the
    kind's table has none), from the table builder of experiment kind `kind` (rckd.plan.kinds)."""
    if kind not in KINDS:
        raise RckdError(f"unknown experiment kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not rows:
        raise RckdError(f"{summary} has no runs; check the --runs given to rckd summarize")
    dataset = single_dataset(rows, summary)
    published = load_published(published_path, dataset) if published_path is not None else None
    table = builder(KINDS[kind].table)
    order = [metric] + [other for other in TOP1_COLUMN if other != metric]
    sections = {current: table(rows, current, published) for current in order}
    title = f"# {dataset}: {experiment} experiment ({kind})\n\n{len(rows)} runs from the summary {summary}."
    markdown = "\n\n".join([title, *(section.markdown for section in sections.values())]) + "\n"
    return markdown, sections[metric].csv_rows, sections[metric].paired_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="the experiment's name (the title of table.md)")
    parser.add_argument("--kind", required=True, choices=list(KINDS), help="its kind (the config's `kind:`)")
    parser.add_argument("--summary", required=True, type=Path, help="summary.csv from rckd summarize")
    parser.add_argument("--published", type=Path,
                        help="published numbers (config/published.yaml); used where it has the data set")
    parser.add_argument("--out-md", required=True, type=Path, help="table.md: best- and final-epoch tables")
    parser.add_argument("--out-csv", required=True, type=Path, help="table.csv: the --metric table")
    parser.add_argument("--out-paired", type=Path,
                        help="main: the paired RCKD-vs-baseline comparison as CSV (it is in table.md anyway)")
    parser.add_argument("--metric", choices=sorted(TOP1_COLUMN), default="best",
                        help="which top-1 goes into table.csv and comes first in table.md (default: best)")


def run(args: argparse.Namespace) -> int:
    rows = read_summary(args.summary)
    markdown, csv_rows, paired_rows = build_report(args.experiment, args.kind, rows, args.metric, args.published,
                                                   args.summary)
    if args.out_paired is not None and paired_rows is None:
        raise RckdError(f"--out-paired: a {args.kind} table has no paired comparison (a main table has)")
    write_text(args.out_md, markdown)
    write_csv(args.out_csv, csv_rows)
    if args.out_paired is not None:
        write_csv(args.out_paired, paired_rows)
    print(f"{args.out_md}, {args.out_csv}: {len(csv_rows)} rows", flush=True)
    return 0
