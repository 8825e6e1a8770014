"""The Snakemake workflow: lint, dry-run job counts against the plan, config errors through snakemake, and
the quick and ImageNet-layout DAGs end to end. (The planner itself: tests/test_plan.py.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from rckd.teachers import SOURCES
from helpers import ROOT, config_file, planned, read_csv, snakemake
from test_plan import BAD_CONFIGS


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {match[1]: int(match[2]) for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_lint_is_clean(tmp_path):
    result = snakemake(ROOT, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def torch_blocked(tmp_path) -> dict[str, str]:
    """An environment in which `import torch` fails."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    return {**os.environ, "PYTHONPATH": str(blocker.parent)}


def test_default_config_plans_every_job_once_without_torch(tmp_path):
    """The process that plans the DAG never imports torch: a torch that fails to import changes nothing."""
    result = snakemake(tmp_path, "-n", env=torch_blocked(tmp_path))
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    paper = planned()
    assert len(paper.runs) == 125  # tests/test_plan.py counts them
    assert counts == {
        "prepare_data": 1, "train": len(paper.runs), "evaluate": len(paper.runs), "summarize": 3, "table": 3,
        "plot": 3, "teacher_bank": sum(paper.banks.values()), "export_onnx": len(paper.exports), "bench": 1, "all": 1,
        "total": counts["total"],
    }
    assert sum(paper.banks.values()) == 8 and len(paper.exports) == 9 + 11 * 8  # main's students, first seed


@pytest.mark.parametrize("configfile", ["quick", "fashion", "imagenet"])
def test_every_config_plans_without_torch(tmp_path, configfile):
    """Each other config plans the jobs of its plan, without torch: every run trained or imported,
    evaluated, and the students of export.methods exported."""
    result = snakemake(tmp_path, "-n", "--configfile", str(config_file(configfile)), env=torch_blocked(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    config_plan = planned(config_file(configfile))
    imported = sum(run.imported for run in config_plan.runs.values())
    assert counts["train"] == len(config_plan.runs) - imported > 0
    assert counts.get("import_teacher", 0) == imported and counts["evaluate"] == len(config_plan.runs)
    assert counts["export_onnx"] == len(config_plan.exports) > 0
    assert counts["summarize"] == counts["table"] == counts["plot"] == len(config_plan.experiments)


@pytest.mark.parametrize("case", ["typo in a key", "untrained teacher", "experiment without a kind"])
def test_bad_config_stops_before_any_job(tmp_path, case):
    """A schema error, a planner error and an old layout, each through snakemake (tests/test_plan.py checks
    every bad config's message without a snakemake process)."""
    text, expected = BAD_CONFIGS[case]
    (tmp_path / "bad.yaml").write_text(text + "\n")
    result = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    message = result.stdout + result.stderr
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in:\n{message[-3000:]}"
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def train_commands(result: subprocess.CompletedProcess) -> dict[str, str]:
    """{run directory: its `rckd train` command} from a dry run with --printshellcmds."""
    commands = re.findall(r"python -m rckd train (.*?) --out (\S+)", result.stdout)
    return {out: args for args, out in commands}


def spec_of(args: str) -> dict:
    """The run spec a `rckd train` command line passes."""
    return json.loads(shlex.split(re.search(r"--spec ('.*?'|\S+) ", args).group(1))[0])


def test_published_teachers_are_imported_not_trained(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar_teachers.tar").touch()  # planning only needs the archive to exist
    result = snakemake(tmp_path, "-n", "-p", "--config", "teachers={source: mdistiller}")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    imported = set(SOURCES["mdistiller"])
    assert counts["import_teacher"] == len(imported)
    assert counts["train"] == len(planned().runs) - len(imported)
    commands = train_commands(result)
    assert all(f"/{arch}/none/ce/mdistiller/seed0/model.pt" in " ".join(commands.values()) for arch in imported)
    assert not any("/mdistiller/" in run for run in commands)  # no training job writes an imported teacher
    # The capacity study's small teachers are not in the archive: they are still trained.
    assert any(run.endswith("resnet20/none/ce/default/seed0") for run in commands)


def test_imagenet_config_plans_its_table_with_imported_teachers_and_data_parallel_runs(tmp_path):
    """config/imagenet.yaml: 2 pairs x (vanilla + 7 methods) trained by torchrun on 8 processes with the
    total batch 512, torchvision's teachers imported (downloaded by the job), no bank, 16 students exported."""
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(ROOT / "config" / "imagenet.yaml"),
                       "--resources", "gpu=8")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert {rule: counts.get(rule, 0) for rule in ("train", "import_teacher", "evaluate", "export_onnx",
                                                   "teacher_bank")} == {
        "train": 16, "import_teacher": 2, "evaluate": 18, "export_onnx": 16, "teacher_bank": 0}
    commands = re.findall(r"python -m torch\.distributed\.run --standalone --nproc_per_node 8 -m rckd train (.*?) "
                          r"--out (\S+)", result.stdout)
    assert len(commands) == 16
    specs = [spec_of(args) for args, _ in commands]
    assert all(spec["dataset"] == "imagenet" and spec["batch_size"] == 512 and spec["lr"] == 0.2
               and spec["milestones"] == [30, 60, 90] for spec in specs)
    assert all("--workers 6" in args for args, _ in commands)
    students = {out.split("/runs/")[1].split("/")[0] for _, out in commands}
    assert students == {"tv_resnet18", "mobilenetv1"}
    assert "import-teacher --source torchvision --arch tv_resnet34" in result.stdout
    assert any("/mobilenetv1/tv_resnet50/dkd/T=1,beta=2,warmup=1/" in out for _, out in commands)
    assert any("/tv_resnet18/tv_resnet34/ctkd/ce=1,curriculum=5,kd=1/" in out for _, out in commands)
    assert any("/tv_resnet18/tv_resnet34/nkd/T=1,gamma=1.5/" in out for _, out in commands)


@pytest.mark.slow(50)
def test_quick_dag_end_to_end(tmp_path):
    """The quick config, shrunk to the fewest runs that still reach every rule (each experiment kind's
    summary, table and plot, a bank per teacher, export, bench and the report): every output, then nothing
    to do, then only what changed."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "data: {options: {train_per_class: 20, test_per_class: 10, image_size: 8}}\n"  # 1-pixel crops: 18 bank views
        "train: {epochs: 2, milestones: [1], teacher_epochs: 3, teacher_bank: 'on'}\n"
        "experiments: {main: {methods: [kd, rckd]}, capacity: {methods: [kd]},\n"
        "              ablation: {sweep: {relation: [log_ratio, prob_diff], kd: [0]}}}\n"
        "export: {methods: [rckd], calibration_size: 16}\n"
        "bench: {batch_sizes: [1], warmup: 1, min_iters: 3, min_seconds: 0.0}\n"
    )
    configs = ["--configfile", str(ROOT / "config" / "quick.yaml"), str(tiny)]
    quick = planned(config_file("quick"), tiny)
    assert len(quick.runs) == 7 and len(quick.exports) == 1  # 2 teachers, vanilla, kd x 2, rckd x 2
    result = snakemake(tmp_path, *configs)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results" / "synthetic"
    for name in ("main", "capacity", "ablation"):
        rows = read_csv(results / name / "summary.csv")
        assert len(rows) == len(quick.experiments[name].runs)
        assert all(0 <= float(row["best_top1"]) <= 100 for row in rows)
        assert (results / name / "table.md").read_text().strip()
    assert (results / "main" / "curves.png").stat().st_size > 1000
    main_table = (results / "main" / "table.md").read_text()
    assert all(f"| {label} " in main_table or f" {label} |" in main_table for label in ("Vanilla", "KD", "RCKD"))
    banked = [json.loads(path.read_text()) for path in (results / "runs").glob("*/*/*/*/seed*/metrics.json")]
    assert all(metrics["teacher_bank"] for metrics in banked if metrics["teacher"])  # tiny: teacher_bank on
    for metrics_file in (results / "runs").glob("*/*/*/*/seed*/metrics.json"):  # the spec the DAG resolved ran
        spec = json.loads((metrics_file.parent / "spec.json").read_text())
        assert spec == json.loads(metrics_file.read_text())["spec"]
        assert spec["epochs"] == (3 if "/none/ce/epochs=3/" in str(metrics_file) else 2)
    assert len(list((results / "runs").glob("*/none/ce/*/seed0/bank.pt"))) == sum(quick.banks.values()) == 2
    latency = read_csv(results / "deploy" / "latency.csv")
    assert latency and all(float(row["p50_ms"]) > 0 for row in latency)

    report = snakemake(tmp_path, *configs, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    for name in ("summary.csv", "table.csv", "curves.png", "capacity.png", "ablation.png", "latency.png"):
        assert name in html

    again = snakemake(tmp_path, *configs, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    changed = tmp_path / "changed.yaml"
    changed.write_text("methods: {kd: {T: 3}}\n")
    plan = snakemake(tmp_path, *configs, str(changed), "-n")
    assert plan.returncode == 0, plan.stderr
    trained = re.findall(r"^rule train:\n(?:.*\n)*?\s+output: (\S+)/model\.pt", plan.stdout, re.M)
    kd_runs = {run.name for experiment in quick.experiments.values() for label, run in experiment.runs if label == "kd"}
    assert len(kd_runs) == 2 and len(trained) == len(kd_runs) and all("/kd/T=3/" in path for path in trained)


@pytest.mark.slow(40)
def test_imagenet_layout_dag_end_to_end_with_two_processes_per_run(tmp_path):
    """The ImageNet path of the DAG on a tiny ImageFolder of JPEGs: the index, data-parallel training
    through torchrun (2 gloo processes per run, BatchNorm students distilled), streamed evaluation, ONNX
    export at the configured crop size, latency and the tables. Only rank 0 writes, and the test top-1 it
    logs is that of all 24 validation images, not of its own 12."""
    from rckd.data.options import make_options
    from rckd.data.synthetic import write_image_folder

    write_image_folder(tmp_path / "data" / "imagenet", make_options(
        {"num_superclasses": 2, "classes_per_superclass": 2, "train_per_class": 16, "test_per_class": 6,
         "image_size": 40}))
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "data: {options: {image_size: 32, resize_size: 36}}\n"
        "train: {epochs: 2, batch_size: 16, lr: 0.05, milestones: [1], teacher_epochs: 2, processes: 2, workers: 1, "
        "device: cpu, precision: fp32, compile: none, threads: 2, mem_mb: 2000, runtime: 30}\n"
        "teachers: {source: train}\n"
        "experiments: {main: {teachers: [resnet14], methods: [rckd], pairs: [{teacher: resnet14, student: resnet8}]}}\n"
        "evaluate: {device: cpu, batch_size: 50}\n"
        "bench: {batch_sizes: [1], warmup: 1, min_iters: 3, min_seconds: 0.0}\n"
        "export: {methods: [rckd], calibration_size: 16, test_images: 0}\n"
    )
    configs = ["--configfile", str(ROOT / "config" / "imagenet.yaml"), str(tiny)]
    result = snakemake(tmp_path, *configs)
    assert result.returncode == 0, result.stderr[-5000:]
    results = tmp_path / "results" / "imagenet"
    assert (tmp_path / "data" / "imagenet.pt").exists()
    rows = read_csv(results / "main" / "summary.csv")
    assert len(rows) == 3 and all(0 <= float(row["best_top1"]) <= 100 for row in rows)
    runs = [path.parent for path in (results / "runs").glob("*/*/*/*/seed0/metrics.json")]
    assert len(runs) == 3
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        evaluated = json.loads((run / "eval.json").read_text())
        assert metrics["processes"] == 2 and evaluated["num_test"] == 24
        assert metrics["final_top1"] == pytest.approx(evaluated["top1"], abs=1e-3)
        assert float(read_csv(run / "history.csv")[-1]["test_top1"]) == pytest.approx(evaluated["top1"], abs=1e-3)
        names = sorted(path.name for path in run.iterdir())
        events = [name for name in names if name.startswith("events.out.tfevents.")]  # rank 0's curves
        assert len(events) == 1 and [name for name in names if name not in events] == [
            "best.pt", "eval.json", "history.csv", "metrics.json", "model.pt", "spec.json"]
        log = (tmp_path / "logs" / "imagenet" / "train" / f"{run.relative_to(results / 'runs')}.log").read_text()
        assert log.count("epoch=2 ") == 1 and log.count("done: ") == 1, log
    student = next(run for run in runs if "/rckd/" in str(run))
    assert json.loads((student / "metrics.json").read_text())["teacher_arch"] == "resnet14"
    exports = [json.loads(path.read_text()) for path in (results / "deploy").glob("**/export.json")]
    assert len(exports) == 1 and all(record["test_images"] == 24 for record in exports)
    latency = read_csv(results / "deploy" / "latency.csv")
    assert latency and all(float(row["p50_ms"]) > 0 for row in latency)
    assert "RCKD" in (results / "main" / "table.md").read_text()
