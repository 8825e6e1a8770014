# Shared helpers: the runs each experiment needs, their directories, and the checks the JSON schema
# cannot express (cross references between keys). Everything here is plain Python over `config`.
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

DATASET = config["dataset"]
RESULTS = f"{config['results']}/{DATASET}"
LOGS = f"{config['logs']}/{DATASET}"
DATA_CACHE = f"{config['data']['root']}/{DATASET}.pt"
# Rules run the rckd package of this workflow's checkout, whatever else is installed.
RCKD = f"PYTHONPATH={shlex.quote(str(Path(workflow.basedir).resolve()))}${{PYTHONPATH:+:$PYTHONPATH}} python -m rckd"
ON_GPU = config["train"]["device"] != "cpu"
RUN_PATTERN = r"[^/]+/[^/]+/[^/]+/[^/]+/seed\d+"


wildcard_constraints:
    run=RUN_PATTERN,
    experiment="main|capacity|ablation",


def config_error(key, message):
    raise WorkflowError(f"config error at {key}: {message}")


def value_text(value):
    """How a parameter value appears in a run's name: 0.5, 4, prob_diff (ints without '.0')."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def params_tag(params):
    """A run name from the parameters that differ from the loss defaults, e.g. 'T=8,relation=rank'."""
    if not params:
        return "default"
    return ",".join(f"{key}={value_text(value)}" for key, value in sorted(params.items()))


class Run:
    """One training run: its identity is its directory, so changed parameters mean a new run."""

    def __init__(self, student, method, teacher=None, params=None, seed=None):
        self.student = student
        self.method = method
        self.teacher = teacher
        self.params = dict(params or {})
        self.seed = config["teacher_seed"] if seed is None else seed

    @property
    def name(self):
        teacher = self.teacher or "none"
        return f"{self.student}/{teacher}/{self.method}/{params_tag(self.params)}/seed{self.seed}"

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
if config["train"]["epochs"] < 1:
    config_error("train.epochs", f"must be at least 1, got {config['train']['epochs']}")


def deploy_runs():
    """Students worth shipping: every student of `main` (distilled and vanilla), first seed only."""
    if "main" not in EXPERIMENTS or not config["export"]["enabled"]:
        return []
    spec = config["experiments"]["main"]
    students = {pair["student"] for pair in spec["pairs"]}
    return [run for run in experiment_runs("main") if run.student in students and run.seed == config["seeds"][0]]


def lr_for(arch):
    return config["train"]["lr_by_arch"].get(arch, config["train"]["lr"])


def train_args(wildcards):
    """The `rckd train` arguments of one run, all explicit so the log shows exactly what ran."""
    run = RUNS[wildcards.run]
    train = config["train"]
    args = [
        f"--arch {run.student}",
        f"--method {run.method}",
        f"--seed {run.seed}",
        f"--dataset {DATASET}",
        f"--data-root {shlex.quote(config['data']['root'])}",
        f"--epochs {train['epochs']}",
        f"--batch-size {train['batch_size']}",
        f"--lr {lr_for(run.student)}",
        f"--momentum {train['momentum']}",
        f"--weight-decay {train['weight_decay']}",
        "--milestones " + " ".join(str(m) for m in train["milestones"]),
        f"--lr-decay {train['lr_decay']}",
        f"--device {train['device']}",
        f"--precision {train['precision']}",
        f"--compile {train['compile']}",
        f"--checkpoint-every {train['checkpoint_every']}",
        f"--gpu-slots {train['jobs_per_gpu'] if ON_GPU else 0}",
    ]
    args += [f"--data-option {key}={value}" for key, value in sorted(config["data"]["options"].items())]
    args += [f"--param {key}={value}" for key, value in sorted(run.params.items())]
    if run.teacher_run:
        args.append(f"--teacher {run.teacher_run.dir}/model.pt")
    return " ".join(args)


def data_options_args():
    return " ".join(f"--option {key}={value}" for key, value in sorted(config["data"]["options"].items()))


def all_outputs():
    outputs = []
    for name in EXPERIMENTS:
        outputs += experiment_outputs(name)
    if deploy_runs():
        outputs += [f"{RESULTS}/deploy/latency.csv", f"{RESULTS}/deploy/latency.png"]
    return outputs
