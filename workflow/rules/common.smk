# Shared helpers: the runs each experiment needs, their directories, and the checks the JSON schema
# cannot express (cross references between keys). It imports rckd for the loss defaults, the data
# options and the run-name format, so that the DAG and the jobs agree on them.
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir).resolve()))
from rckd import losses  # the loss defaults decide which runs are the same run
from rckd.data.datasets import resolve_options
from rckd.errors import RckdError
from rckd.report.summary import format_params

DATASET = config["dataset"]
RESULTS = f"{config['results']}/{DATASET}"
LOGS = f"{config['logs']}/{DATASET}"
DATA_CACHE = f"{config['data']['root']}/{DATASET}.pt"
# Rules run `python -m rckd` from this workflow's checkout, whatever else is installed: under
# --use-conda with the conda env's python, otherwise with the python running snakemake (a venv's).
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_checkout = shlex.quote(str(Path(workflow.basedir).resolve()))
_python_dir = "" if USE_CONDA else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
# (braces doubled twice: once for this f-string, once for snakemake's own formatting of the prefix)
shell.prefix(f"set -euo pipefail; {_python_dir}export PYTHONPATH={_checkout}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
ON_GPU = config["train"]["device"] != "cpu"
RUN_PATTERN = r"[^/]+/[^/]+/[^/]+/[^/]+/seed\d+"


wildcard_constraints:
    run=RUN_PATTERN,
    experiment="main|capacity|ablation",


def config_error(key, message):
    raise WorkflowError(f"config error at {key}: {message}")


def changed_params(method, params):
    """The parameters that differ from the loss defaults: they alone make a run differ."""
    defaults = losses.defaults(method)
    return {key: value for key, value in params.items() if defaults.get(key) != value}


class Run:
    """One training run: its identity is its directory, so changed parameters mean a new run."""

    def __init__(self, student, method, teacher=None, params=None, seed=None):
        self.student = student
        self.method = method
        self.teacher = teacher
        self.params = changed_params(method, params or {})
        self.seed = config["teacher_seed"] if seed is None else seed

    @property
    def name(self):
        teacher = self.teacher or "none"
        tag = format_params(self.params) or "default"
        return f"{self.student}/{teacher}/{self.method}/{tag}/seed{self.seed}"

    @property
    def dir(self):
        return f"{RESULTS}/runs/{self.name}"

    @property
    def teacher_run(self):
        return Run(self.teacher, "ce") if self.teacher else None


def method_params(method, overrides=None):
    """Global parameters of a method (config `methods`) updated by a pair's own."""
    return {**config["methods"].get(method, {}), **(overrides or {})}


def ablation_variants(spec):
    """One-factor-at-a-time sweep around `base`: each swept key takes each value, others stay at base."""
    variants = []
    for key, values in spec["sweep"].items():
        for value in values:
            params = {**method_params("rckd"), **spec["base"], key: value}
            if params not in variants:
                variants.append(params)
    return variants


def experiment_runs(name):
    """Every run an experiment's tables need: teachers, vanilla students and distilled students."""
    spec = config["experiments"][name]
    seeds = config["seeds"]
    runs = []
    if name == "main":
        teachers = spec["teachers"]
        runs += [Run(teacher, "ce") for teacher in teachers]
        for index, pair in enumerate(spec["pairs"]):
            if pair["teacher"] not in teachers:
                config_error(
                    f"experiments.main.pairs[{index}].teacher",
                    f"{pair['teacher']!r} is not one of experiments.main.teachers {teachers}; add it there",
                )
            for seed in seeds:
                runs.append(Run(pair["student"], "ce", seed=seed))
                for method in spec["methods"]:
                    params = method_params(method, pair.get("params", {}).get(method))
                    runs.append(Run(pair["student"], method, pair["teacher"], params, seed))
    elif name == "capacity":
        runs += [Run(teacher, "ce") for teacher in spec["teachers"]]
        for seed in seeds:
            runs.append(Run(spec["student"], "ce", seed=seed))
            for teacher in spec["teachers"]:
                for method in spec["methods"]:
                    runs.append(Run(spec["student"], method, teacher, method_params(method), seed))
    elif name == "ablation":
        runs += [Run(spec["teacher"], "ce")]
        for seed in seeds:
            runs.append(Run(spec["student"], "ce", seed=seed))
            for params in ablation_variants(spec):
                runs.append(Run(spec["student"], "rckd", spec["teacher"], params, seed))
    unique = {run.name: run for run in runs}
    return list(unique.values())


EXPERIMENTS = [name for name, spec in config["experiments"].items() if spec.get("enabled", True)]
RUNS = {run.name: run for name in EXPERIMENTS for run in experiment_runs(name)}
try:
    resolve_options(DATASET, config["data"]["options"])
except RckdError as err:
    config_error("data.options", str(err))
for _run in RUNS.values():  # bad parameter values stop the DAG here, not hours later in a job
    try:
        losses.build(_run.method, **_run.params)
    except RckdError as err:
        config_error(f"the {_run.method} parameters of run {_run.name}", str(err))


def deploy_runs():
    """Students worth shipping: every student of `main` (distilled and vanilla), first seed only."""
    if "main" not in EXPERIMENTS or not config["export"]["enabled"]:
        return []
    spec = config["experiments"]["main"]
    students = {pair["student"] for pair in spec["pairs"]}
    return [run for run in experiment_runs("main") if run.student in students and run.seed == config["seeds"][0]]


def lr_for(arch):
    return config["train"]["lr_by_arch"].get(arch, config["train"]["lr"])


def schedule_for(arch):
    """(epochs, milestones) of an arch: epochs_by_arch stretches the milestones proportionally."""
    train = config["train"]
    epochs = train["epochs_by_arch"].get(arch, train["epochs"])
    milestones = [round(m * epochs / train["epochs"]) for m in train["milestones"]]
    if any(m < 1 for m in milestones) or len(set(milestones)) != len(milestones):
        config_error(f"train.epochs_by_arch.{arch}", f"{epochs} epochs squeeze the milestones "
                     f"{train['milestones']} into {milestones}; give it more epochs or fewer milestones")
    return epochs, milestones


def train_args(wildcards):
    """The `rckd train` arguments of one run, all explicit so the log shows exactly what ran."""
    run = RUNS[wildcards.run]
    train = config["train"]
    epochs, milestones = schedule_for(run.student)
    args = [
        f"--arch {run.student}",
        f"--method {run.method}",
        f"--seed {run.seed}",
        f"--dataset {DATASET}",
        f"--data-root {shlex.quote(config['data']['root'])}",
        f"--epochs {epochs}",
        f"--batch-size {train['batch_size']}",
        f"--lr {lr_for(run.student)}",
        f"--momentum {train['momentum']}",
        f"--weight-decay {train['weight_decay']}",
        "--milestones " + " ".join(str(m) for m in milestones),
        f"--lr-decay {train['lr_decay']}",
        f"--device {train['device']}",
        f"--precision {train['precision']}",
        f"--compile {train['compile']}",
        f"--checkpoint-every {train['checkpoint_every']}",
        f"--gpu-slots {train['jobs_per_gpu'] if ON_GPU else 0}",
    ]
    args.append(data_options_args())
    args += [f"--param {key}={value}" for key, value in sorted(run.params.items())]
    if run.teacher_run:
        args.append(f"--teacher {run.teacher_run.dir}/model.pt")
    return " ".join(args)


def data_options_args():
    """The data set options every rule that loads data passes, so all load the same cache."""
    return " ".join(f"--data-option {key}={value}" for key, value in sorted(config["data"]["options"].items()))


def all_outputs():
    outputs = []
    for name in EXPERIMENTS:
        outputs += experiment_outputs(name)
    if deploy_runs():
        outputs += [f"{RESULTS}/deploy/latency.csv", f"{RESULTS}/deploy/latency.png"]
    return outputs


def train_inputs(wildcards):
    """The data cache and, for a distilled student, its teacher's model."""
    run = RUNS[wildcards.run]
    inputs = {"data": DATA_CACHE}
    if run.teacher_run:
        inputs["teacher"] = f"{run.teacher_run.dir}/model.pt"
    return inputs


def evaluate_inputs(wildcards):
    return {**train_inputs(wildcards), "model": f"{RUNS[wildcards.run].dir}/model.pt"}


PLOT_KINDS = {"main": "curves", "capacity": "capacity", "ablation": "ablation"}


def experiment_outputs(name):
    folder = f"{RESULTS}/{name}"
    return [f"{folder}/summary.csv", f"{folder}/table.md", f"{folder}/table.csv", f"{folder}/{PLOT_KINDS[name]}.png"]


def summary_inputs(wildcards):
    runs = experiment_runs(wildcards.experiment)
    return [f"{run.dir}/{name}" for run in runs for name in ("metrics.json", "eval.json")]


for _arch in sorted({run.student for run in RUNS.values()}):  # stretched schedules are checked up front
    schedule_for(_arch)
