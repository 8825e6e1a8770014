"""The Snakemake workflow: lint, dry-run job counts, config validation, and the quick DAG end to end."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rckd import losses, models
from rckd.losses import catalog
from rckd.teachers import SOURCES

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def snakemake(workdir: Path, *args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
               "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def deep_merge(base: dict, override: dict) -> dict:
    """Snakemake's --configfile merge: nested mappings key by key, everything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {match[1]: int(match[2]) for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def canonical(method: str, params: dict) -> frozenset:
    """Parameters that differ from the loss defaults: two runs with the same are the same run."""
    defaults = losses.defaults(method)
    return frozenset((key, value) for key, value in params.items() if defaults.get(key) != value)


def expected_labelled_runs(config: dict) -> set[tuple]:
    """Every (method name, training run) the experiments need, counted from the config on its own.

    A run is (student, teacher, loss, changed parameters, seed, teacher epochs): a teacher trains for
    train.teacher_epochs when set, so it is then not the vanilla student of its architecture."""
    seeds, teacher_seed = config.get("seeds", [0]), config.get("teacher_seed", 0)
    train = config.get("train", {})
    epochs = train.get("epochs", 240)
    teacher_epochs = train.get("teacher_epochs") or epochs
    names = config.get("methods", {})
    ce = lambda arch, seed, role="student": ("ce", (arch, None, "ce", frozenset(), seed,  # noqa: E731
                                                    teacher_epochs if role == "teacher" else epochs))

    def distilled(name, student, teacher, seed, overrides=None):
        spec = {**names.get(name, {}), **(overrides or {})}
        loss = spec.pop("method", name)
        return name, (student, teacher, loss, canonical(loss, spec), seed, epochs)

    runs = set()
    for name, spec in config["experiments"].items():
        teachers = spec.get("teachers", [spec.get("teacher")])
        runs |= {ce(teacher, teacher_seed, "teacher") for teacher in teachers}
        for seed in seeds:
            if name == "main":
                for pair in spec["pairs"]:
                    runs.add(ce(pair["student"], seed))
                    for method in spec["methods"]:
                        runs.add(distilled(method, pair["student"], pair["teacher"], seed,
                                           pair.get("params", {}).get(method)))
            elif name == "capacity":
                runs.add(ce(spec["student"], seed))
                runs |= {distilled(method, spec["student"], teacher, seed)
                         for teacher in spec["teachers"] for method in spec["methods"]}
            else:  # a sweep of one method, one factor at a time around its settings plus base
                runs.add(ce(spec["student"], seed))
                for key, values in spec["sweep"].items():
                    runs |= {distilled(spec["method"], spec["student"], spec["teacher"], seed,
                                       {**spec.get("base", {}), key: value}) for value in values}
    return runs


def expected_runs(config: dict) -> set[tuple]:
    return {run for _, run in expected_labelled_runs(config)}


def test_lint_is_clean(tmp_path):
    result = snakemake(ROOT, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_default_config_plans_every_job_once(tmp_path):
    result = snakemake(tmp_path, "-n")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    runs = expected_runs(CONFIG)
    # The paper DAG per seed: main 6 teachers + 9 vanilla students + 11 pairs x 8 methods = 103, capacity 15
    # more (its resnet56 teacher's runs are main's), the RCKD ablation 6 more (its default is main's).
    assert len(runs) == 124
    main = CONFIG["experiments"]["main"]
    students = {pair["student"] for pair in main["pairs"]}
    teachers_with_students = {run[1] for run in runs if run[1]}
    assert counts == {
        "prepare_data": 1, "train": len(runs), "evaluate": len(runs), "summarize": 3, "table": 3, "plot": 3,
        # auto: every teacher has more student epochs (>= 240) than the bank has views (162)
        "teacher_bank": len(teachers_with_students),
        # every main student, vanilla and distilled by each method, first seed only
        "export_onnx": len(students) + len(main["pairs"]) * len(main["methods"]),
        "bench": 1, "all": 1, "total": counts["total"],
    }


@pytest.mark.parametrize("configfile", ["config.yaml", "quick.yaml", "fashion.yaml", "imagenet.yaml"])
def test_every_config_plans_without_torch(tmp_path, configfile):
    """The process that plans the DAG never imports torch: a torch that fails to import changes nothing,
    and each config plans the runs of its enabled experiments (and exports the students of
    export.methods)."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / configfile), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["train"] > 0
    if configfile in ("quick.yaml", "fashion.yaml"):  # (config.yaml: above; imagenet.yaml imports its teachers)
        merged = deep_merge(CONFIG, yaml.safe_load((ROOT / "config" / configfile).read_text()))
        merged["experiments"] = {name: spec for name, spec in merged["experiments"].items()
                                 if spec.get("enabled", True)}
        assert counts["train"] == len(expected_runs(merged))
        main = merged["experiments"]["main"]
        exported = merged["export"]["methods"] or ["ce", *main["methods"]]
        students = {pair["student"] for pair in main["pairs"]}
        assert counts["export_onnx"] == (len(students) * ("ce" in exported)
                                         + len(main["pairs"]) * len(set(exported) - {"ce"}))


def test_schema_lists_exactly_the_registered_models_and_methods():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert sorted(schema["$defs"]["arch"]["enum"]) == models.available()
    assert sorted(schema["$defs"]["loss_method"]["enum"] + ["ce"]) == losses.available()
    known = set().union(*(losses.defaults(method) for method in losses.available()))
    assert set(schema["$defs"]["param_name"]["enum"]) == known == set(catalog.PARAMETERS)
    assert schema["properties"]["teachers"]["properties"]["source"]["enum"] == ["train", *SOURCES]


BAD_CONFIGS = {
    "unknown model": ("experiments: {main: {teachers: [resnet56], methods: [kd], "
                      "pairs: [{teacher: resnet56, student: resnet999}]}}", ["resnet999", "resnet8x4"]),
    "unknown method": ("experiments: {main: {teachers: [resnet56], methods: [fitnet], "
                       "pairs: [{teacher: resnet56, student: resnet20}]}}", ["methods.fitnet", "rckd"]),
    "variant of an unknown loss": ("methods: {kd_x: {method: fitnet}}", ["fitnet", "kd_x", "rckd"]),
    "two names for one run": ("methods: {kd_again: {method: kd}}\nexperiments: {main: {teachers: [resnet56], "
                              "methods: [kd, kd_again], pairs: [{teacher: resnet56, student: resnet20}]}}",
                              ["'kd' and 'kd_again' are the same run"]),
    "sweep without a method": ("experiments: {dkd_beta: {teacher: resnet56, student: resnet20, "
                               "sweep: {beta: [1, 2]}}}", ["method", "required"]),
    "published teachers of other data": ("dataset: synthetic\nteachers: {source: mdistiller}",
                                         ["teachers.source", "synthetic"]),
    "unknown dataset": ("dataset: mnist", ["mnist", "cifar100", "imagenet"]),
    "bank of random-resized crops": ('dataset: imagenet\ntrain: {teacher_bank: "on"}',
                                     ["train.teacher_bank", "random sizes"]),
    "batch that does not divide": ("train: {processes: 3}", ["train.batch_size", "64", "processes = 3"]),
    "untrained teacher": ("experiments: {main: {teachers: [resnet56], methods: [kd], "
                          "pairs: [{teacher: vgg13, student: vgg8}]}}",
                          ["experiments.main.pairs[0].teacher", "vgg13", "resnet56"]),
    "negative epochs": ("train: {epochs: -3}", ["epochs", "-3", "minimum"]),
    "typo in a key": ("train: {epoch: 10}", ["epoch", "Additional properties"]),
    "unknown loss parameter": ("methods: {kd: {temperature: 4}}", ["temperature"]),
    "bad loss parameter value": ("methods: {rckd: {T: -1}}", ["rckd", "T", "-1"]),
    "unknown data option": ("dataset: synthetic\ndata: {options: {train_per_clas: 5}}",
                            ["data.options", "train_per_clas", "train_per_class"]),
    "squeezed schedule": ("train: {teacher_epochs: 2}", ["train.teacher_epochs", "squeeze"]),
    "bad bank policy": ("train: {teacher_bank: sometimes}", ["teacher_bank", "sometimes"]),
    "export of a method not in main": ("export: {methods: [ce, fitnet]}", ["export.methods", "fitnet"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_stops_before_any_job(tmp_path, case):
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


def test_toggling_an_experiment_leaves_the_other_runs_untouched(tmp_path):
    """main's rckd run is also the ablation's default variant: its spec must not depend on that. (Whether
    a student reads a bank may: teacher_bank auto weighs the epochs of all the teacher's students.)"""
    quick = ["--configfile", str(ROOT / "config" / "quick.yaml")]
    off = tmp_path / "off.yaml"
    off.write_text("experiments: {ablation: {enabled: false}}\n")
    both = snakemake(tmp_path, "-n", "-p", *quick)
    main_only = snakemake(tmp_path, "-n", "-p", *quick, str(off))
    assert both.returncode == 0 and main_only.returncode == 0, both.stderr + main_only.stderr
    with_ablation, without = train_commands(both), train_commands(main_only)
    shared = with_ablation.keys() & without.keys()
    assert any("/rckd/default/" in run for run in shared)
    assert {run: spec_of(with_ablation[run]) for run in shared} == {run: spec_of(without[run]) for run in shared}


def test_published_teachers_are_imported_not_trained(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar_teachers.tar").touch()  # planning only needs the archive to exist
    result = snakemake(tmp_path, "-n", "-p", "--config", "teachers={source: mdistiller}")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    imported = set(SOURCES["mdistiller"])
    assert counts["import_teacher"] == len(imported)
    assert counts["train"] == len(expected_runs(CONFIG)) - len(imported)
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


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_quick_dag_end_to_end(tmp_path):
    """The quick config, shrunk further: every output, then nothing to do, then only what changed."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "data: {options: {train_per_class: 20, test_per_class: 10}}\n"
        "train: {epochs: 2, milestones: [1], teacher_epochs: 3, teacher_bank: 'on'}\n"
        "bench: {batch_sizes: [1], warmup: 1, min_iters: 3, min_seconds: 0.0}\n"
        "export: {calibration_size: 16}\n"
    )
    configs = ["--configfile", str(ROOT / "config" / "quick.yaml"), str(tiny)]
    result = snakemake(tmp_path, *configs)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results" / "synthetic"
    quick = deep_merge(deep_merge(CONFIG, yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())),
                       yaml.safe_load(tiny.read_text()))
    for name in ("main", "capacity", "ablation"):
        rows = read_csv(results / name / "summary.csv")
        assert len(rows) == len(expected_runs({**quick, "experiments": {name: quick["experiments"][name]}}))
        assert all(0 <= float(row["best_top1"]) <= 100 for row in rows)
        assert (results / name / "table.md").read_text().strip()
    assert (results / "main" / "curves.png").stat().st_size > 1000
    main_table = (results / "main" / "table.md").read_text()
    assert all(f"| {label} " in main_table or f" {label} |" in main_table for label in ("KD+LS", "DKD+LS", "RCKD"))
    banked = [json.loads(path.read_text()) for path in (results / "runs").glob("*/*/*/*/seed*/metrics.json")]
    assert all(metrics["teacher_bank"] for metrics in banked if metrics["teacher"])  # tiny: teacher_bank on
    for metrics_file in (results / "runs").glob("*/*/*/*/seed*/metrics.json"):  # the spec the DAG resolved ran
        spec = json.loads((metrics_file.parent / "spec.json").read_text())
        assert spec == json.loads(metrics_file.read_text())["spec"]
        assert spec["epochs"] == (3 if "/none/ce/epochs=3/" in str(metrics_file) else 2)
    assert len(list((results / "runs").glob("*/none/ce/*/seed0/bank.pt"))) == len(quick["experiments"]["capacity"]
                                                                                ["teachers"])
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
    kd_runs = {run for name, run in expected_labelled_runs(quick) if name == "kd"}
    assert len(trained) == len(kd_runs) and all("/kd/T=3/" in path for path in trained)


@pytest.mark.slow
def test_imagenet_layout_dag_end_to_end_with_two_processes_per_run(tmp_path):
    """The ImageNet path of the DAG on a tiny ImageFolder of JPEGs: the index, data-parallel training
    through torchrun (2 gloo processes per run), streamed evaluation, ONNX export at the configured
    crop size, latency and the tables."""
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
        "experiments: {main: {teachers: [resnet14], methods: [kd, rckd], pairs: [{teacher: resnet14, student: resnet8}]}}\n"
        "evaluate: {device: cpu, batch_size: 50}\n"
        "bench: {batch_sizes: [1], warmup: 1, min_iters: 3, min_seconds: 0.0}\n"
        "export: {calibration_size: 16, test_images: 0}\n"
    )
    configs = ["--configfile", str(ROOT / "config" / "imagenet.yaml"), str(tiny)]
    result = snakemake(tmp_path, *configs)
    assert result.returncode == 0, result.stderr[-5000:]
    results = tmp_path / "results" / "imagenet"
    assert (tmp_path / "data" / "imagenet.pt").exists()
    rows = read_csv(results / "main" / "summary.csv")
    assert len(rows) == 4 and all(0 <= float(row["best_top1"]) <= 100 for row in rows)
    runs = list((results / "runs").glob("*/*/*/*/seed0/metrics.json"))
    assert len(runs) == 4 and all(json.loads(path.read_text())["processes"] == 2 for path in runs)
    exports = [json.loads(path.read_text()) for path in (results / "deploy").glob("**/export.json")]
    assert len(exports) == 3 and all(record["test_images"] == 24 for record in exports)
    latency = read_csv(results / "deploy" / "latency.csv")
    assert latency and all(float(row["p50_ms"]) > 0 for row in latency)
    assert "KD" in (results / "main" / "table.md").read_text()
