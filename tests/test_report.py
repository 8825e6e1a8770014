"""evaluate, summarize, table and plot on hand-made run directories, summaries and a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from helpers import SYNTHETIC, SYNTHETIC_TEST_IMAGES, option_args

from rckd import data, report
from rckd.checkpoint import load_model
from rckd.cli import main as cli
from rckd.errors import RckdError
from rckd.io import write_csv
from rckd.records import BestScores, EvalRecord, Origin, RunMetrics
from rckd.report import tables
from rckd.report.summary import COLUMNS, read_summary, run_row, summarize

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "config" / "published.yaml"
EVAL_KEYS = {"top1", "top5", "nll", "ece", "agreement", "kl_t1", "kl_tm", "tau_all", "tau_nt", "top5_overlap"}



def test_a_methods_column_title_names_its_loss_and_variant():
    assert [report.method_label(method) for method in ("ce", "kd", "kd_ls", "dkd_ls", "kd_ctkd", "dist", "rckd")] == [
        "Vanilla", "KD", "KD+LS", "DKD+LS", "KD+CTKD", "DIST", "RCKD"]

def make_run(root: Path, name: str, arch: str, method: str = "ce", teacher: str | None = None, seed: int = 0,
             params: dict | None = None, best: float = 70.0, final: float | None = None, tau: float | None = None,
             epochs: int = 4, evaluated: bool = True, dataset: str = "cifar100", teacher_run: Path | None = None,
             best_tau: float | None = None) -> Path:
    """A finished run directory as the trainer and `rckd evaluate` leave it (eval.json: the final
    weights' metrics, and best.pt's under "best", whose tau_nt is `best_tau`); a distilled run's
    teacher is the model.pt of `teacher_run`."""
    run = root / name
    run.mkdir(parents=True)
    final = best - 0.5 if final is None else final
    RunMetrics(arch=arch, teacher_arch=teacher, method=method, params=params or {}, seed=seed, num_params=1234,
               epochs=epochs, final_top1=final, best_top1=best, best_epoch=epochs - 1, wall_seconds=12.5,
               dataset=dataset, teacher=None if teacher_run is None else str(teacher_run / "model.pt"),
               teacher_bank=False, device="cpu", precision="fp32", compile="none", processes=1, spec=None,
               spec_hash=None).write(run / "metrics.json")
    lines = ["epoch,lr,loss_ce,train_top1,test_top1,tau_nt,seconds"]
    for epoch in range(1, epochs + 1):
        tau_text = "" if teacher is None else f"{(tau or 0.3) * epoch / epochs:.4f}"
        lines.append(f"{epoch},0.05,1.0,50.0,{best * epoch / epochs:.2f},{tau_text},1.0")
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    if evaluated:
        scores = {"top1": final, "top5": 90.0, "nll": 1.1, "ece": 0.04}
        if teacher is not None:
            scores.update(agreement=80.0, kl_t1=0.4, kl_tm=0.05, tau_all=0.6, tau_nt=tau or 0.3, top5_overlap=0.7)
        best_scores = {**scores, "top1": best, "top5": 91.0}
        if teacher is not None:
            best_scores["tau_nt"] = best_tau or tau or 0.3
        EvalRecord(model=str(run / "model.pt"), arch=arch, dataset=dataset, method=method, params=params or {},
                   seed=seed, num_test=100, ece_bins=15, device="cpu",
                   teacher=None if teacher_run is None else str(teacher_run / "model.pt"), **scores,
                   best=BestScores(model=str(run / "best.pt"), epoch=epochs - 1, **best_scores)
                   ).write(run / "eval.json")
    return run


def summary_row(teacher: str, arch: str, method: str, seed: int, best: float, params: str = "",
                final: float | None = None, tau: float | None = None, teacher_seed: int = 0,
                best_tau: float | None = None, role: str | None = None, epochs: int = 240,
                lr: float = 0.05) -> dict:
    """A summary.csv row (tau_nt of the final weights, best_tau_nt of the best epoch's: `best_tau`, else
    `tau`); a distilled run's teacher is the `ce` run of its teacher arch with teacher_seed. Its role:
    student with a teacher, else `role` (vanilla unless told teacher)."""
    row = {column: "" for column in COLUMNS}
    row.update(experiment="x", dataset="cifar100", role="student" if teacher else role or "vanilla", arch=arch,
               teacher=teacher, method=method, params=params, seed=seed, epochs=epochs, lr=lr, num_params=1,
               best_top1=best, final_top1=best - 1 if final is None else final,
               wall_seconds=1.0, tau_nt="" if tau is None else tau,
               best_tau_nt=next((value for value in (best_tau, tau) if value is not None), ""),
               run=f"runs/{arch}/{teacher or 'none'}/{method}/{params or 'default'}/seed{seed}",
               teacher_run=f"runs/{teacher}/none/ce/default/seed{teacher_seed}" if teacher else "")
    return row


def write_summary(path: Path, rows: list[dict]) -> Path:
    write_csv(path, rows, COLUMNS)
    return path


# --- summarize ----------------------------------------------------------------------------------


def test_summarize_writes_one_row_per_run(tmp_path):
    runs = tmp_path / "runs"
    student = make_run(runs, "s", "resnet20", seed=1, best=69.0, evaluated=False)
    teacher = make_run(runs, "t", "resnet56", best=72.0)
    kd = make_run(runs, "kd", "resnet20", "kd", "resnet56", seed=1, params={"kd": 0.9, "T": 4.0}, best=70.5, tau=0.4,
                  teacher_run=teacher, best_tau=0.45)
    out = tmp_path / "results" / "summary.csv"
    assert cli(["summarize", "--experiment", "main", "--runs", str(kd), str(student), str(teacher), str(teacher),
                "--roles", "student", "vanilla", "teacher", "teacher", "--out", str(out)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["role"], row["teacher"], row["arch"], row["method"]) for row in rows] == [
        ("vanilla", "", "resnet20", "ce"), ("teacher", "", "resnet56", "ce"), ("student", "resnet56", "resnet20", "kd")]
    assert "student" not in rows[0]  # the arch column is `arch`, whatever the role
    ce, _, kd_row = rows
    assert kd_row["params"] == "T=4,kd=0.9" and kd_row["experiment"] == "main" and kd_row["dataset"] == "cifar100"
    assert kd_row["tau_nt"] == "0.4" and kd_row["best_top1"] == "70.5" and kd_row["run"] == str(kd)
    assert kd_row["teacher_run"] == str(teacher) and ce["teacher_run"] == ""
    assert kd_row["best_tau_nt"] == "0.45" and kd_row["best_top5"] == "91.0"  # eval.json's best: best.pt's
    assert all(ce[key] == "" for key in EVAL_KEYS)  # not evaluated: empty, not zero
    parsed = read_summary(out)
    assert parsed[0]["top1"] is None and parsed[2]["tau_nt"] == 0.4 and parsed[2]["seed"] == 1


def test_summarize_refuses_unfinished_and_duplicate_runs(tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    assert cli(["summarize", "--experiment", "main", "--runs", str(tmp_path / "unfinished"), "--roles", "vanilla",
                "--out", str(tmp_path / "s.csv")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    first, second = make_run(tmp_path, "a", "resnet20"), make_run(tmp_path, "b", "resnet20")
    with pytest.raises(RckdError, match="same teacher, arch, method"):
        summarize("main", [first, second], ["vanilla", "vanilla"])
    metrics = json.loads((first / "metrics.json").read_text())
    del metrics["wall_seconds"]
    (first / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(RckdError, match=rf"^{first / 'metrics.json'}: run metrics with key 'wall_seconds' missing"):
        summarize("main", [first], ["vanilla"])


def test_summarize_takes_each_runs_role_from_the_plan_and_checks_it(tmp_path, capsys):
    teacher = make_run(tmp_path, "t", "resnet56")
    kd = make_run(tmp_path, "kd", "resnet20", "kd", "resnet56", teacher_run=teacher)
    with pytest.raises(RckdError, match="--roles gives 1 names for 2 --runs"):
        summarize("main", [teacher, kd], ["teacher"])
    with pytest.raises(RckdError, match=rf"^{kd}: given the role vanilla, but it was trained from teacher resnet56"):
        summarize("main", [teacher, kd], ["teacher", "vanilla"])
    with pytest.raises(RckdError, match=rf"^{teacher}: given the role student, but it was trained without a teacher"):
        summarize("main", [teacher, kd], ["student", "student"])
    with pytest.raises(SystemExit) as exit_info:
        cli(["summarize", "--experiment", "main", "--runs", str(teacher), "--out", str(tmp_path / "s.csv")])
    assert exit_info.value.code == 2
    assert "required: --roles" in capsys.readouterr().err  # never guessed: the plan gives it
    assert [row["role"] for row in summarize("main", [teacher, kd], ["vanilla", "student"])] == ["vanilla", "student"]


# --- tables -------------------------------------------------------------------------------------


def test_an_imported_teachers_row_takes_its_accuracy_from_its_evaluation(tmp_path):
    """An imported teacher has no training history: its best and final top-1 are its evaluated top-1 (empty
    until it is evaluated), and its best_ columns are those of the evaluated weights."""
    from rckd.teachers.output import save_teacher

    run = tmp_path / "teacher"
    data_set = {"dataset": "cifar100", "data_options": {}, "input_size": [3, 32, 32], "mean": [0.5] * 3,
                "std": [0.2] * 3, "classes": ["a", "b"]}
    origin = Origin(source="mdistiller", source_file="t.tar:resnet56.pth", source_sha256="ab", num_tensors=2)
    save_teacher(run / "model.pt", torch.nn.Linear(2, 2), "resnet56", data_set, origin, run / "metrics.json", 240)
    row = run_row("main", run, "teacher")
    assert (row["best_top1"], row["final_top1"], row["top1"], row["best_top5"]) == ("", "", "", "")
    EvalRecord(model=str(run / "model.pt"), arch="resnet56", dataset="cifar100", method="ce", params={}, seed=0,
               num_test=100, ece_bins=15, device="cpu", teacher=None, top1=72.5, top5=91.0, nll=1.0,
               ece=0.05).write(run / "eval.json")
    row = run_row("main", run, "teacher")
    assert (row["best_top1"], row["final_top1"], row["top1"], row["best_top5"]) == (72.5, 72.5, 72.5, 91.0)
    assert (row["role"], row["arch"], row["teacher"], row["epochs"], row["num_params"]) == (
        "teacher", "resnet56", "", 240, 6)
    assert row["lr"] == ""  # not trained here


def main_rows() -> list[dict]:
    rows = [summary_row("", "resnet56", "ce", 0, 72.00, role="teacher"),
            summary_row("", "vgg13", "ce", 0, 74.00, role="teacher")]
    for seed, (vanilla, kd, dkd, dist, rckd) in enumerate([(69.0, 70.0, 71.0, 71.5, 72.0),
                                                           (69.2, 70.4, 71.2, 71.1, 72.6),
                                                           (69.4, 70.2, 71.4, 71.3, 72.1)]):
        rows += [summary_row("", "resnet20", "ce", seed, vanilla),
                 summary_row("resnet56", "resnet20", "kd", seed, kd, "T=4"),
                 summary_row("resnet56", "resnet20", "dkd", seed, dkd, "T=4,beta=2"),
                 summary_row("resnet56", "resnet20", "dist", seed, dist, "T=4"),
                 summary_row("resnet56", "resnet20", "rckd", seed, rckd, "T=4")]
    # vgg13 -> vgg8: a single seed, DIST never ran and RCKD finished one seed
    rows += [summary_row("", "vgg8", "ce", 0, 70.0), summary_row("vgg13", "vgg8", "kd", 0, 72.5, "T=4"),
             summary_row("vgg13", "vgg8", "dkd", 0, 73.0, "T=4,beta=6"),
             summary_row("vgg13", "vgg8", "rckd", 0, 73.5, "T=4")]
    return rows


def table_lines(markdown: str, heading: str) -> list[str]:
    """The table rows under the first heading that contains `heading`."""
    section = markdown.split(heading, 1)[1].split("\n### ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_main_table_means_stds_bold_deltas_and_missing(tmp_path):
    summary = write_summary(tmp_path / "summary.csv", main_rows())
    md, csv_path, paired_path = tmp_path / "table.md", tmp_path / "table.csv", tmp_path / "paired.csv"
    assert cli(["table", "--experiment", "main", "--kind", "main", "--summary", str(summary),
                "--published", str(PUBLISHED), "--out-md", str(md), "--out-csv", str(csv_path),
                "--out-paired", str(paired_path)]) == 0
    text = md.read_text()
    best = table_lines(text, "Main: best-epoch")
    assert best[0] == "| Teacher → Student | Teacher | Vanilla student | KD | DKD | DIST | RCKD | RCKD − KD |"
    resnet, vgg = best[2], best[3]
    kd_std = np.std([70.0, 70.4, 70.2], ddof=1)
    assert f"| 70.20 ± {kd_std:.2f} |" in resnet
    assert resnet.startswith("| resnet56 → resnet20 | 72.00 | 69.20 ± 0.20 |")
    assert "**72.23 ± 0.32**" in resnet and resnet.endswith("| +2.03 |")  # RCKD best; 72.233 - 70.2
    # one seed: the mean alone, annotated as fewer runs than the column's others; no DIST run: a dash
    assert vgg == "| vgg13 → vgg8 | 74.00 | 70.00 (n=1) | 72.50 (n=1) | 73.00 (n=1) | — | **73.50 (n=1)** | +1.00 |"
    assert "0.00 |" not in vgg
    # the final-epoch table is there too (final = best - 1 in these rows), and named as such
    final = table_lines(text, "Main: final-epoch")
    assert final[3].startswith("| vgg13 → vgg8 | 73.00 | 69.00 (n=1) | 71.50 (n=1)")
    assert text.index("Main: best-epoch") < text.index("Main: final-epoch")
    # published: measured / published [source] (measured - published), best epoch only
    published = table_lines(text, "Measured vs published")
    assert published[0] == "| Teacher → Student | Teacher | Vanilla student | KD | DKD | DIST |"
    assert "72.00 / 72.34 [1] (-0.34)" in published[2] and "71.20 ± 0.20 / 71.97 [3] (-0.77)" in published[2]
    assert "71.30 ± 0.20 / 71.75 [2] (-0.45)" in published[2]
    assert "— / —" in published[3]  # vgg13 -> vgg8 DIST: neither measured nor published
    # every source says which statistic its numbers are, and the caption points there
    assert "- [3] https://github.com/megvii-research/mdistiller: not stated in its README" in text
    assert "- [2] https://github.com/hunto/DIST_KD: mean over runs" in text
    assert "the statistic its source reports" in text
    rows = {row["teacher"]: row for row in csv.DictReader(open(csv_path))}
    assert rows["vgg13"]["dist_top1_mean"] == "" and rows["vgg13"]["dist_top1_n"] == "0"
    assert float(rows["resnet56"]["kd_top1_std"]) == pytest.approx(kd_std)
    assert float(rows["resnet56"]["kd_minus_published"]) == pytest.approx(70.2 - 70.66)
    assert float(rows["resnet56"]["rckd_minus_kd"]) == pytest.approx((72.0 + 72.6 + 72.1) / 3 - 70.2)
    assert "rckd_published" not in rows["resnet56"]  # nobody published RCKD numbers


def test_main_table_states_schedules_that_differ_between_pairs(tmp_path):
    """MLKD's protocol: its pairs train for 240, 480 or 960 epochs at their own lr. The caption names each
    schedule with its pairs, and each pair's vanilla student is the one trained under its schedule."""
    rows = [summary_row("", teacher, "ce", 0, accuracy, role="teacher")
            for teacher, accuracy in (("resnet56", 72.0), ("resnet32x4", 79.0), ("wrn_40_2", 76.0))]
    for teacher, student, epochs, lr, vanilla, mlkd in (("resnet56", "resnet20", 240, 0.025, 69.0, 71.0),
                                                         ("resnet32x4", "shufflenetv1", 960, 0.01, 71.0, 77.0),
                                                         ("wrn_40_2", "shufflenetv1", 480, 0.01, 70.0, 76.0)):
        rows += [summary_row("", student, "ce", 0, vanilla, epochs=epochs, lr=lr),
                 summary_row(teacher, student, "mlkd", 0, mlkd, epochs=epochs, lr=lr)]
    markdown = tables.build_report("mlkd", "main", rows_from_csv(tmp_path, rows), "best", None,
                                   tmp_path / "summary.csv")[0]
    assert ("The distilled students train under different schedules, so compare pairs with care: "
            "240 epochs at lr 0.025: resnet56 → resnet20; 480 epochs at lr 0.01: wrn_40_2 → shufflenetv1; "
            "960 epochs at lr 0.01: resnet32x4 → shufflenetv1.") in markdown
    lines = table_lines(markdown, "Main: best-epoch")
    assert lines[2:] == ["| resnet32x4 → shufflenetv1 | 79.00 | 71.00 | **77.00** |",
                         "| resnet56 → resnet20 | 72.00 | 69.00 | **71.00** |",
                         "| wrn_40_2 → shufflenetv1 | 76.00 | 70.00 | **76.00** |"]
    uniform = tables.build_report("main", "main", rows_from_csv(tmp_path, main_rows()), "best", None,
                                  tmp_path / "summary.csv")[0]
    assert "different schedules" not in uniform


def test_published_sources_must_state_their_statistic(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text("sources: {repdistiller: {url: https://github.com/HobbitLong/RepDistiller}}\n"
                    "cifar100: {teachers: {resnet56: {top1: 72.34, source: repdistiller}}}\n")
    with pytest.raises(RckdError, match="source 'repdistiller' needs a url and a statistic"):
        tables.load_published(path, "cifar100")
    path.write_text(path.read_text().replace("RepDistiller}", "RepDistiller, statistic: one run}"))
    assert tables.load_published(path, "cifar100").teachers["resnet56"].source.statistic == "one run"


def test_teacher_cells_show_the_teacher_run_that_was_used(tmp_path):
    # Two resnet56 teachers (seeds 0 and 1); every student learnt from seed 1's run. Its 76.00 is the
    # teacher cell, not the 74.00 mean of both seeds; the vanilla student stays a mean over its seeds.
    rows = [summary_row("", "resnet56", "ce", 0, 72.0, role="teacher"),
            summary_row("", "resnet56", "ce", 1, 76.0, role="teacher"),
            summary_row("", "resnet20", "ce", 0, 69.0), summary_row("", "resnet20", "ce", 1, 70.0)]
    rows += [summary_row("resnet56", "resnet20", method, seed, 71.0 + seed, "T=4", tau=0.4, teacher_seed=1)
             for method in ("kd", "rckd") for seed in (0, 1)]
    summary_rows = rows_from_csv(tmp_path, rows)
    for kind, heading, expected in (
            ("main", "Main: best-epoch", "| resnet56 → resnet20 | 76.00 | 69.50 ± 0.71 |"),
            ("capacity", "Capacity: best-epoch", "| resnet56 | 76.00 |"),
            ("sweep", "Ablation: best-epoch", "| resnet56 | Teacher (CE) | n/a | 76.00 | n/a |")):
        markdown, csv_rows, _ = tables.build_report("x", kind, summary_rows, "best", None, tmp_path / "summary.csv")
        assert table_lines(markdown, heading)[2].startswith(expected)
    main_csv = tables.build_report("main", "main", summary_rows, "best", None, tmp_path / "summary.csv")[1]
    assert (main_csv[0]["teacher_top1_mean"], main_csv[0]["teacher_top1_n"]) == (76.0, 1)
    # A teacher run that is not in the summary is shown as missing, never replaced by another seed.
    unused = [row for row in rows if (row["arch"], row["seed"]) != ("resnet56", 1)]
    markdown = tables.build_report("main", "main", rows_from_csv(tmp_path, unused), "best", None,
                                   tmp_path / "summary.csv")[0]
    assert table_lines(markdown, "Main: best-epoch")[2].startswith("| resnet56 → resnet20 | — | 69.50 ± 0.71 |")


def test_paired_comparison_is_a_t_interval_over_matched_seeds(tmp_path):
    summary = write_summary(tmp_path / "summary.csv", main_rows())
    paired_path = tmp_path / "paired.csv"
    cli(["table", "--experiment", "main", "--kind", "main", "--summary", str(summary),
         "--out-md", str(tmp_path / "t.md"), "--out-csv", str(tmp_path / "t.csv"), "--out-paired", str(paired_path)])
    rows = {row["baseline"]: row for row in csv.DictReader(open(paired_path))}
    kd_differences = np.array([72.0 - 70.0, 72.6 - 70.4, 72.1 - 70.2, 73.5 - 72.5])  # 3 seeds + vgg pair
    low, high = stats.t.interval(0.95, len(kd_differences) - 1, loc=kd_differences.mean(),
                                 scale=stats.sem(kd_differences))
    assert int(rows["kd"]["n"]) == 4 and int(rows["kd"]["pairs"]) == 2 and int(rows["kd"]["wins"]) == 4
    assert float(rows["kd"]["mean_difference"]) == pytest.approx(kd_differences.mean())
    assert (float(rows["kd"]["ci95_low"]), float(rows["kd"]["ci95_high"])) == pytest.approx((low, high))
    assert int(rows["dist"]["n"]) == 3  # vgg8 has no DIST run to pair with
    markdown = (tmp_path / "t.md").read_text()
    assert f"| RCKD − KD | 4 (2 pairs) | +{kd_differences.mean():.2f} | [+{low:.2f}, +{high:.2f}] | 4/4 |" in markdown
    # a single matched run: the interval is undefined, and the table says so
    one = [summary_row("t", "s", "kd", 0, 70.0), summary_row("t", "s", "rckd", 0, 71.0)]
    comparison = tables.paired(one, "best_top1", "rckd", "kd")
    assert comparison.n == 1 and comparison.interval is None and comparison.mean == pytest.approx(1.0)
    assert "undefined (n=1)" in tables.paired_markdown([comparison], "best")


def test_main_table_refuses_two_settings_of_one_method(tmp_path):
    rows = main_rows() + [summary_row("resnet56", "resnet20", "kd", 0, 70.0, "T=2")]
    with pytest.raises(RckdError, match="2 settings"):
        tables.build_report("main", "main", rows_from_csv(tmp_path, rows), "best", None, tmp_path / "summary.csv")


def rows_from_csv(tmp_path: Path, rows: list[dict]) -> list[dict]:
    return read_summary(write_summary(tmp_path / "summary.csv", rows))


def test_capacity_table_sorts_teachers_by_their_accuracy(tmp_path):
    rows = [summary_row("", "resnet20", "ce", 0, 69.0)]
    for teacher, accuracy in (("resnet32x4", 79.0), ("resnet110", 74.0), ("resnet56", 72.0)):
        rows.append(summary_row("", teacher, "ce", 0, accuracy, role="teacher"))
        for seed in (0, 1):
            rows.append(summary_row(teacher, "resnet20", "kd", seed, 70.0 + seed, "T=4", tau=0.30 + 0.02 * seed))
            rows.append(summary_row(teacher, "resnet20", "rckd", seed, 71.0 + seed, "T=4", tau=0.50, best_tau=0.55))
    markdown, csv_rows, _ = tables.build_report("capacity", "capacity", rows_from_csv(tmp_path, rows), "best",
                                                PUBLISHED, tmp_path / "summary.csv")
    lines = table_lines(markdown, "Capacity: best-epoch")
    assert lines[0] == "| Teacher | Teacher top-1 | KD top-1 | KD τ_nt | RCKD top-1 | RCKD τ_nt |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| resnet56", "| resnet110", "| resnet32x4"]
    # tau_nt of the same weights as the top-1 beside it: best.pt's here, model.pt's in the final-epoch table
    assert lines[2] == "| resnet56 | 72.00 | 70.50 ± 0.71 | 0.310 ± 0.014 | **71.50 ± 0.71** | 0.550 ± 0.000 |"
    assert table_lines(markdown, "Capacity: final-epoch")[2].endswith("| 0.500 ± 0.000 |")
    assert "vanilla: 69.00" in markdown and "Capacity: final-epoch" in markdown
    assert [row["teacher"] for row in csv_rows] == ["resnet56", "resnet110", "resnet32x4"]
    assert csv_rows[0]["rckd_tau_nt_mean"] == pytest.approx(0.55)


def test_ablation_table_shows_what_varies(tmp_path):
    rows = [summary_row("", "resnet8x4", "ce", 0, 72.0), summary_row("", "resnet32x4", "ce", 0, 79.0, role="teacher"),
            summary_row("resnet32x4", "resnet8x4", "kd", 0, 73.0, "T=4,kd=0.9", tau=0.3)]
    for relation, rc, accuracy in (("rank", 1, 74.0), ("rank", 2, 74.5), ("prob_diff", 1, 73.5)):
        rows.append(summary_row("resnet32x4", "resnet8x4", "rckd", 0, accuracy, f"T=4,rc={rc},relation={relation}",
                                tau=0.5))
    markdown, csv_rows, _ = tables.build_report("ablation", "sweep", rows_from_csv(tmp_path, rows), "best", None,
                                                tmp_path / "summary.csv")
    lines = table_lines(markdown, "Ablation: best-epoch")
    assert lines[2] == "| resnet32x4 | Teacher (CE) | n/a | 79.00 | n/a |"
    assert lines[3] == "| resnet8x4 | Vanilla | n/a | 72.00 | n/a |"
    assert lines[4] == "| resnet8x4 | KD | (only setting) | 73.00 | 0.300 |"
    assert lines[5] == "| resnet8x4 | RCKD | rc=1, relation=prob_diff | 73.50 | 0.500 |"
    assert lines[7] == "| resnet8x4 | RCKD | rc=2, relation=rank | **74.50** | 0.500 |"
    assert "RCKD T=4" in markdown  # the fixed parameter is named in the caption
    assert [row["params"] for row in csv_rows] == ["T=4,kd=0.9", "T=4,rc=1,relation=prob_diff",
                                                  "T=4,rc=1,relation=rank", "T=4,rc=2,relation=rank"]


def test_table_rejects_a_summary_of_two_data_sets(tmp_path):
    rows = main_rows()
    rows[0]["dataset"] = "fashion_mnist"
    with pytest.raises(RckdError, match="2 data sets"):
        tables.build_report("main", "main", rows_from_csv(tmp_path, rows), "best", None, tmp_path / "summary.csv")


# --- plots --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["curves", "capacity", "ablation"])
def test_each_plot_kind_writes_a_png(tmp_path, kind):
    runs = tmp_path / "runs"
    teachers = {"resnet56": make_run(runs, "t1", "resnet56", best=72.0),
                "resnet110": make_run(runs, "t2", "resnet110", best=74.0)}
    dirs, roles = list(teachers.values()), ["teacher"] * len(teachers)
    for seed in (0, 1):
        dirs.append(make_run(runs, f"s{seed}", "resnet20", seed=seed, best=69.0 + seed))
        roles.append("vanilla")
        for teacher, teacher_run in teachers.items():
            for method, gain in (("kd", 1.0), ("rckd", 2.0)):
                dirs.append(make_run(runs, f"{teacher}-{method}-{seed}", "resnet20", method, teacher, seed,
                                     {"T": 4.0}, best=69.0 + gain + seed, tau=0.3 * gain, teacher_run=teacher_run))
                roles.append("student")
    if kind == "ablation":  # a second RCKD setting, which only the ablation compares
        dirs.append(make_run(runs, "variant", "resnet20", "rckd", "resnet56", 0, {"T": 2.0}, best=70.0, tau=0.5,
                             teacher_run=teachers["resnet56"]))
        roles.append("student")
    summary = tmp_path / "summary.csv"
    assert cli(["summarize", "--experiment", "x", "--runs", *map(str, dirs), "--roles", *roles,
                "--out", str(summary)]) == 0
    out = tmp_path / f"{kind}.png"
    assert cli(["plot", "--kind", kind, "--summary", str(summary), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        width, height = image.size
        assert width > 800 and height > 300
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 50  # drawn, not a blank canvas


def test_curves_need_the_histories(tmp_path, capsys):
    run = make_run(tmp_path, "kd", "resnet20", "kd", "resnet56", best=70.0)
    summary = tmp_path / "summary.csv"
    write_csv(summary, summarize("x", [run], ["student"]), COLUMNS)
    (run / "history.csv").unlink()
    assert cli(["plot", "--kind", "curves", "--summary", str(summary), "--out", str(tmp_path / "c.png")]) == 2
    assert "history.csv" in capsys.readouterr().err


# --- evaluate -----------------------------------------------------------------------------------

OPTION_ARGS = option_args(SYNTHETIC)


@pytest.fixture
def tiny(synthetic_root, trained_student, trained_teacher) -> tuple[Path, Path, Path]:
    """(data root, a distilled student's model.pt, its teacher's): the session's."""
    return synthetic_root, trained_student, trained_teacher


def test_evaluate_writes_metrics_and_fidelity(tiny, tmp_path, monkeypatch):
    data_root, student, teacher = tiny
    out = tmp_path / "eval.json"
    thread_settings = []
    monkeypatch.setattr(torch, "set_num_threads", thread_settings.append)
    assert cli(["evaluate", "--model", str(student), "--teacher", str(teacher), "--data-root", str(data_root),
                "--out", str(out), "--device", "cpu", "--batch-size", "7", "--threads", "3", *OPTION_ARGS]) == 0
    assert thread_settings == [3]
    record = json.loads(out.read_text())
    assert EVAL_KEYS <= set(record) and record["num_test"] == SYNTHETIC_TEST_IMAGES
    assert record["temperature"] == load_model(student)[1].params["T"] == 4.0  # the student's own KD temperature
    assert record["teacher_arch"] == "resnet14" and record["dataset"] == "synthetic"
    # top-1 recomputed independently: normalise by hand, one forward pass of the whole split
    split = data.load("synthetic", data_root, "test", **SYNTHETIC)
    mean = torch.tensor(split.mean).view(1, -1, 1, 1)
    std = torch.tensor(split.std).view(1, -1, 1, 1)
    images = (split.images.float() / 255 - mean) / std
    with torch.no_grad():
        logits = load_model(student)[0](images)
        teacher_logits = load_model(teacher)[0](images)
    assert record["top1"] == pytest.approx((logits.argmax(1) == split.labels).float().mean().item() * 100)
    assert record["agreement"] == pytest.approx((logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()
                                                * 100)
    assert 0 <= record["ece"] <= 1 and record["nll"] > 0 and -1 <= record["tau_nt"] <= 1


def test_evaluate_best_adds_the_best_epochs_weights(tiny, tmp_path, capsys):
    """--best: the same metrics of best.pt under "best", with its epoch; best.pt of another run is refused."""
    data_root, student, teacher = tiny
    payload = torch.load(student, weights_only=True)
    payload["state_dict"] = {name: value + 0.05 * torch.randn_like(value) if value.is_floating_point() else value
                             for name, value in payload["state_dict"].items()}
    payload["meta"]["best_epoch"] = 3
    torch.save(payload, tmp_path / "best.pt")
    out = tmp_path / "eval.json"
    assert cli(["evaluate", "--model", str(student), "--best", str(tmp_path / "best.pt"), "--teacher", str(teacher),
                "--data-root", str(data_root), "--out", str(out), "--device", "cpu", *OPTION_ARGS]) == 0
    record = json.loads(out.read_text())
    alone = tmp_path / "alone.json"
    assert cli(["evaluate", "--model", str(tmp_path / "best.pt"), "--teacher", str(teacher), "--data-root",
                str(data_root), "--out", str(alone), "--device", "cpu", *OPTION_ARGS]) == 0
    expected = json.loads(alone.read_text())
    assert record["best"]["epoch"] == 3 and record["best"]["model"] == str(tmp_path / "best.pt")
    assert {key: record["best"][key] for key in EVAL_KEYS} == {key: expected[key] for key in EVAL_KEYS}
    assert record["best"]["tau_nt"] != record["tau_nt"]  # other weights, other fidelity
    assert cli(["evaluate", "--model", str(student), "--best", str(teacher), "--data-root", str(data_root),
                "--out", str(tmp_path / "bad.json"), "--device", "cpu", *OPTION_ARGS]) == 2
    assert "is not the best epoch of" in capsys.readouterr().err


def test_evaluate_without_teacher_and_with_a_wrong_one(tiny, tmp_path, capsys):
    data_root, student, teacher = tiny
    out = tmp_path / "eval.json"
    assert cli(["evaluate", "--model", str(teacher), "--data-root", str(data_root), "--out", str(out),
                "--device", "cpu", *OPTION_ARGS]) == 0
    record = json.loads(out.read_text())
    assert record["teacher"] is None and "tau_nt" not in record and record["top5"] >= record["top1"]
    other = tmp_path / "other.pt"
    payload = torch.load(teacher, weights_only=True)
    payload["meta"]["dataset"] = "cifar100"
    torch.save(payload, other)
    assert cli(["evaluate", "--model", str(student), "--teacher", str(other), "--data-root", str(data_root),
                "--out", str(tmp_path / "bad.json"), "--device", "cpu", *OPTION_ARGS]) == 2
    assert "does not fit this data set" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()
    assert cli(["evaluate", "--model", str(teacher), "--data-root", str(data_root), "--out", str(tmp_path / "t.json"),
                "--threads", "-1", *OPTION_ARGS]) == 2
    assert "--threads must be 0 (torch's default) or positive" in capsys.readouterr().err
