"""The Snakemake workflow: lint, dry-run job counts, config validation, and the quick DAG end to end."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rckd import losses, models

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
               "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {match[1]: int(match[2]) for match in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def canonical(method: str, params: dict) -> frozenset:
    """Parameters that differ from the loss defaults: two runs with the same are the same run."""
    defaults = losses.defaults(method)
    return frozenset((key, value) for key, value in params.items() if defaults.get(key) != value)


def expected_runs(config: dict) -> set[tuple]:
    """Every training run the experiments need, counted from the config on its own."""
    seeds, teacher_seed = config.get("seeds", [0]), config.get("teacher_seed", 0)
    method_params = config.get("methods", {})
    ce = lambda arch, seed: (arch, None, "ce", frozenset(), seed)  # noqa: E731
    runs = set()
    for name, spec in config["experiments"].items():
        teachers = spec.get("teachers", [spec.get("teacher")])
        runs |= {ce(teacher, teacher_seed) for teacher in teachers}
        for seed in seeds:
            if name == "main":
                for pair in spec["pairs"]:
                    runs.add(ce(pair["student"], seed))
                    for method in spec["methods"]:
                        params = {**method_params.get(method, {}), **pair.get("params", {}).get(method, {})}
                        runs.add((pair["student"], pair["teacher"], method, canonical(method, params), seed))
            elif name == "capacity":
                runs.add(ce(spec["student"], seed))
                runs |= {(spec["student"], teacher, method, canonical(method, method_params.get(method, {})), seed)
                         for teacher in spec["teachers"] for method in spec["methods"]}
            else:
                runs.add(ce(spec["student"], seed))
                base = {**method_params.get("rckd", {}), **spec.get("base", {})}
                for key, values in spec["sweep"].items():
                    for value in values:
                        params = canonical("rckd", {**base, key: value})
                        runs.add((spec["student"], spec["teacher"], "rckd", params, seed))
    return runs


def test_lint_is_clean(tmp_path):
    result = snakemake(ROOT, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_default_config_plans_every_job_once(tmp_path):
    result = snakemake(tmp_path, "-n")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    runs = expected_runs(CONFIG)
    assert len(runs) == 81  # the paper DAG: 81 training runs per seed (issue tracker)
    main = CONFIG["experiments"]["main"]
    students = {pair["student"] for pair in main["pairs"]}
    assert counts == {
        "prepare_data": 1, "train": len(runs), "evaluate": len(runs), "summarize": 3, "table": 3, "plot": 3,
        # every main student, vanilla and distilled by each method, first seed only
        "export_onnx": len(students) + len(main["pairs"]) * len(main["methods"]),
        "bench": 1, "all": 1, "total": counts["total"],
    }


@pytest.mark.parametrize("configfile", ["quick.yaml", "fashion.yaml"])
def test_other_configs_dry_run(tmp_path, configfile):
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / configfile))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((ROOT / "config" / configfile).read_text())
    merged_experiments = {name: {**CONFIG["experiments"][name], **spec}
                          for name, spec in config["experiments"].items() if spec.get("enabled", True)}
    merged = {**CONFIG, **config, "methods": {**CONFIG["methods"], **config.get("methods", {})},
              "experiments": merged_experiments}
    assert job_counts(result.stdout)["train"] == len(expected_runs(merged))


def test_schema_lists_exactly_the_registered_models_and_methods():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert sorted(schema["$defs"]["arch"]["enum"]) == models.available()
    assert sorted(schema["$defs"]["method"]["enum"] + ["ce"]) == losses.available()
    known = set().union(*(losses.defaults(method) for method in losses.available()))
    assert set(schema["$defs"]["loss_params"]["propertyNames"]["enum"]) == known


BAD_CONFIGS = {
    "unknown model": ("experiments: {main: {teachers: [resnet56], methods: [kd], "
                      "pairs: [{teacher: resnet56, student: resnet999}]}}", ["resnet999", "resnet8x4"]),
    "unknown method": ("experiments: {main: {teachers: [resnet56], methods: [fitnet], "
                       "pairs: [{teacher: resnet56, student: resnet20}]}}", ["fitnet", "rckd"]),
    "unknown dataset": ("dataset: imagenet", ["imagenet", "cifar100"]),
    "untrained teacher": ("experiments: {main: {teachers: [resnet56], methods: [kd], "
                          "pairs: [{teacher: vgg13, student: vgg8}]}}",
                          ["experiments.main.pairs[0].teacher", "vgg13", "resnet56"]),
    "negative epochs": ("train: {epochs: -3}", ["epochs", "-3", "minimum"]),
    "typo in a key": ("train: {epoch: 10}", ["epoch", "Additional properties"]),
    "unknown loss parameter": ("methods: {kd: {temperature: 4}}", ["temperature"]),
    "bad loss parameter value": ("methods: {rckd: {T: -1}}", ["rckd", "T", "-1"]),
    "unknown data option": ("dataset: synthetic\ndata: {options: {train_per_clas: 5}}",
                            ["data.options", "train_per_clas", "train_per_class"]),
    "squeezed schedule": ("train: {epochs_by_arch: {resnet20: 2}}", ["train.epochs_by_arch.resnet20"]),
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


def test_toggling_an_experiment_leaves_the_other_runs_untouched(tmp_path):
    """main's rckd run is also the ablation's default variant: its command must not depend on that."""
    quick = ["--configfile", str(ROOT / "config" / "quick.yaml")]
    off = tmp_path / "off.yaml"
    off.write_text("experiments: {ablation: {enabled: false}}\n")
    both = snakemake(tmp_path, "-n", "-p", *quick)
    main_only = snakemake(tmp_path, "-n", "-p", *quick, str(off))
    assert both.returncode == 0 and main_only.returncode == 0, both.stderr + main_only.stderr
    with_ablation, without = train_commands(both), train_commands(main_only)
    shared = with_ablation.keys() & without.keys()
    assert any("/rckd/default/" in run for run in shared)
    assert {run: with_ablation[run] for run in shared} == {run: without[run] for run in shared}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_quick_dag_end_to_end(tmp_path):
    """The quick config, shrunk further: every output, then nothing to do, then only what changed."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "data: {options: {train_per_class: 20, test_per_class: 10}}\n"
        "train: {epochs: 2, milestones: [1], epochs_by_arch: {resnet8x4: 3}}\n"
        "bench: {batch_sizes: [1], warmup: 1, min_iters: 3, min_seconds: 0.0}\n"
        "export: {calibration_size: 16}\n"
    )
    configs = ["--configfile", str(ROOT / "config" / "quick.yaml"), str(tiny)]
    result = snakemake(tmp_path, *configs)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results" / "synthetic"
    quick = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    for name in ("main", "capacity", "ablation"):
        rows = read_csv(results / name / "summary.csv")
        assert len(rows) == len(expected_runs({**quick, "experiments": {name: quick["experiments"][name]}}))
        assert all(0 <= float(row["best_top1"]) <= 100 for row in rows)
        assert (results / name / "table.md").read_text().strip()
    assert (results / "main" / "curves.png").stat().st_size > 1000
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
    kd_runs = [run for run in expected_runs(quick) if run[2] == "kd"]
    assert len(trained) == len(kd_runs) and all("/kd/T=3/" in path for path in trained)
