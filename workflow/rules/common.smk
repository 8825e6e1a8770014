# Shared helpers: the runs each experiment needs, their directories and specs, and the checks the JSON
# schema cannot express (cross references between keys). Planning imports only rckd's torch-free modules
# (the loss catalogue, the data options, the run spec, the run-name format), so the DAG and the jobs
# agree on them.
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, str(Path(workflow.basedir).resolve()))  # planning reads the checkout's rckd
from rckd.data.options import crop_padding, resolve_options, view_count
from rckd.errors import RckdError
from rckd.losses import catalog
from rckd.report.summary import format_params
from rckd.spec import RunSpec
from rckd.teachers import SOURCE_DATASETS, SOURCES

DATASET = config["dataset"]
RESULTS = f"{config['results']}/{DATASET}"
LOGS = f"{config['logs']}/{DATASET}"
DATA_CACHE = f"{config['data']['root']}/{DATASET}.pt"
# Rules run `python -m rckd` of this checkout, installed into their environment: under --use-conda
# envs/rckd.post-deploy.sh installs it into the conda env when snakemake creates that; otherwise the
# python running snakemake runs the jobs (a venv that `make` or `pip install -e .` set up). Each job
# checks that the rckd it imports is this checkout's (rckd.cli), so no other copy runs unnoticed.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
CHECKOUT = str(Path(workflow.basedir).resolve())
# For the post-deploy script, which snakemake runs from this process. (Set here, not asked of the user:
# so no `envvars:` directive, which would make it a required input.)
os.environ.update(RCKD_WORKFLOW=CHECKOUT)
_python_dir = "" if USE_CONDA else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
shell.prefix(f"set -euo pipefail; {_python_dir}export RCKD_WORKFLOW={shlex.quote(CHECKOUT)}; ")
ON_GPU = config["train"]["device"] != "cpu"
EVAL_ON_GPU = config["evaluate"]["device"] != "cpu"
RUN_PATTERN = r"[^/]+/[^/]+/[^/]+/[^/]+/seed\d+"
# Runs that training makes (all but imported teachers, whose tag is their source's name).
TRAINED_RUN_PATTERN = rf"[^/]+/[^/]+/[^/]+/(?!(?:{'|'.join(SOURCES)})/)[^/]+/seed\d+"
TEACHER_SOURCE = config["teachers"]["source"]
TEACHER_EPOCHS = config["train"]["teacher_epochs"] or config["train"]["epochs"]
# The main table and the capacity study are one experiment each; every other experiment is a sweep.
KINDS = {"main": "main", "capacity": "capacity"}
PLOT_KINDS = {"main": "curves", "capacity": "capacity", "sweep": "ablation"}


def config_error(key, message):
    raise WorkflowError(f"config error at {key}: {message}")


def kind_of(experiment):
    return KINDS.get(experiment, "sweep")


class Run:
    """One training run: its identity is its directory, so changed parameters mean a new run.

    A teacher is a run of its own: it may train longer (train.teacher_epochs) or be imported
    (teachers.source), so the vanilla student of the same architecture never stands in for it.
    """

    def __init__(self, student, method="ce", teacher=None, params=None, seed=None, role="student"):
        self.student = student
        self.method = method
        self.teacher = teacher
        self.params = catalog.changed(method, params or {})
        self.seed = config["teacher_seed"] if seed is None else seed
        self.role = role
        self.epochs = TEACHER_EPOCHS if role == "teacher" else config["train"]["epochs"]
        self.imported = role == "teacher" and self.student in SOURCES.get(TEACHER_SOURCE, {})

    @property
    def name(self):
        if self.imported:
            tag = TEACHER_SOURCE  # no parameter string looks like this: it holds no "="
        else:
            longer = {"epochs": self.epochs} if self.epochs != config["train"]["epochs"] else {}
            tag = format_params({**longer, **self.params}) or "default"
        return f"{self.student}/{self.teacher or 'none'}/{self.method}/{tag}/seed{self.seed}"

    @property
    def dir(self):
        return f"{RESULTS}/runs/{self.name}"

    @property
    def teacher_run(self):
        return teacher_run(self.teacher) if self.teacher else None


def teacher_run(arch):
    return Run(arch, role="teacher")


def method_variant(name, overrides=None):
    """(loss method, parameters) of a configured method name (config `methods`) with a pair's own."""
    spec = dict(config["methods"].get(name, {}))
    loss = spec.pop("method", name)
    if loss not in catalog.METHODS or loss == "ce":
        config_error(f"methods.{name}", f"{loss!r} is not a distillation loss; set method: to one of "
                     f"{', '.join(m for m in catalog.available() if m != 'ce')}")
    return loss, {**spec, **(overrides or {})}


def distilled(name, student, teacher, seed, overrides=None):
    loss, params = method_variant(name, overrides)
    return Run(student, loss, teacher, params, seed)


def sweep_variants(spec):
    """One-factor-at-a-time sweep around `base`: each swept key takes each value, others stay at base."""
    variants = []
    for key, values in spec["sweep"].items():
        for value in values:
            params = {**spec.get("base", {}), key: value}
            if params not in variants:
                variants.append(params)
    return variants


def labelled_runs(name):
    """[(method label, run)] of every run an experiment's tables need: teachers and vanilla students
    ("ce"), and the distilled students under each configured method name."""
    spec = config["experiments"][name]
    seeds = config["seeds"]
    kind = kind_of(name)
    teachers = spec["teachers"] if kind in ("main", "capacity") else [spec["teacher"]]
    runs = [("ce", teacher_run(teacher)) for teacher in teachers]
    for seed in seeds:
        if kind == "main":
            for index, pair in enumerate(spec["pairs"]):
                if pair["teacher"] not in teachers:
                    config_error(f"experiments.main.pairs[{index}].teacher", f"{pair['teacher']!r} is not one of "
                                 f"experiments.main.teachers {teachers}; add it there")
                runs.append(("ce", Run(pair["student"], seed=seed)))
                pair_params = pair.get("params", {})
                for method in spec["methods"]:
                    runs.append((method, distilled(method, pair["student"], pair["teacher"], seed,
                                                   pair_params.get(method))))
        elif kind == "capacity":
            runs.append(("ce", Run(spec["student"], seed=seed)))
            runs += [(method, distilled(method, spec["student"], teacher, seed))
                     for teacher in teachers for method in spec["methods"]]
        else:
            runs.append(("ce", Run(spec["student"], seed=seed)))
            runs += [(spec["method"], distilled(spec["method"], spec["student"], spec["teacher"], seed, params))
                     for params in sweep_variants(spec)]
    labels = {}
    for label, run in runs:
        if labels.setdefault(run.name, label) != label:
            config_error(f"experiments.{name}", f"methods {labels[run.name]!r} and {label!r} are the same run "
                         f"{run.name}; give one of them other parameters or drop it")
    unique = {run.name: (label, run) for label, run in runs}
    return list(unique.values())


def experiment_runs(name):
    return [run for _, run in labelled_runs(name)]


EXPERIMENTS = [name for name, spec in config["experiments"].items() if spec.get("enabled", True)]
try:
    resolve_options(DATASET, config["data"]["options"])
    RUNS = {run.name: run for name in EXPERIMENTS for run in experiment_runs(name)}
except RckdError as err:  # bad data options or loss parameters stop the DAG here, not hours later in a job
    config_error("data.options or methods", str(err))
if TEACHER_SOURCE != "train" and DATASET != SOURCE_DATASETS[TEACHER_SOURCE]:
    config_error("teachers.source", f"{TEACHER_SOURCE} teachers are {SOURCE_DATASETS[TEACHER_SOURCE]} models; "
                 f"use source: train for {DATASET}")
PROCESSES = config["train"]["processes"]
if PROCESSES > 1 and config["train"]["batch_size"] % PROCESSES:
    config_error("train.batch_size", f"{config['train']['batch_size']} (the total) does not divide among "
                 f"train.processes = {PROCESSES}")
# A data-parallel run is one job that starts its processes itself, one per GPU of its node.
TRAIN_COMMAND = ("python -m rckd train" if PROCESSES == 1 else
                 f"python -m torch.distributed.run --standalone --nproc_per_node {PROCESSES} -m rckd train")


def deploy_runs():
    """Students worth shipping: the students of `main` (distilled and vanilla, or those of
    export.methods), first seed only."""
    if "main" not in EXPERIMENTS or not config["export"]["enabled"]:
        return []
    spec = config["experiments"]["main"]
    students = {pair["student"] for pair in spec["pairs"]}
    methods = config["export"]["methods"] or ["ce", *spec["methods"]]
    unknown = sorted(set(methods) - {"ce", *spec["methods"]})
    if unknown:
        config_error("export.methods", f"{unknown} are not methods of experiments.main ({', '.join(spec['methods'])}) "
                     f"nor ce (the vanilla students)")
    return [run for label, run in labelled_runs("main")
            if label in methods and run.role == "student" and run.student in students
            and run.seed == config["seeds"][0]]


def lr_for(arch):
    return config["train"]["lr_by_arch"].get(arch, config["train"]["lr"])


def schedule_for(run):
    """(epochs, milestones) of a run: the milestones stretch in proportion to its epochs."""
    train = config["train"]
    milestones = [round(m * run.epochs / train["epochs"]) for m in train["milestones"]]
    if any(m < 1 for m in milestones) or len(set(milestones)) != len(milestones):
        config_error("train.teacher_epochs", f"{run.epochs} epochs squeeze the milestones {train['milestones']} "
                     f"into {milestones}; give it more epochs or fewer milestones")
    return run.epochs, milestones


def run_spec(run):
    """The run's resolved spec (rckd.spec): everything `rckd train` computes from, checked here."""
    train = config["train"]
    epochs, milestones = schedule_for(run)
    spec = RunSpec(arch=run.student, dataset=DATASET, data_options=config["data"]["options"], method=run.method,
                   params=run.params, teacher=f"{run.teacher_run.dir}/model.pt" if run.teacher_run else None,
                   seed=run.seed, epochs=epochs, milestones=tuple(milestones), lr=lr_for(run.student),
                   **{key: train[key] for key in ("batch_size", "momentum", "weight_decay", "lr_decay", "precision",
                                                  "compile")})
    return spec.resolved()


def train_args(wildcards):
    """`rckd train` arguments of one run: its spec as JSON (what it computes, also in the log and the
    run's spec.json), then where and how it runs."""
    run = RUNS[wildcards.run]
    train = config["train"]
    args = [
        f"--spec {shlex.quote(json.dumps(SPECS[run.name], sort_keys=True))}",
        f"--data-root {shlex.quote(config['data']['root'])}",
        f"--device {train['device']}",
        f"--checkpoint-every {train['checkpoint_every']}",
        f"--gpu-slots {train['jobs_per_gpu'] if ON_GPU and PROCESSES == 1 else 0}",
        f"--workers {train['workers']}",
    ]
    if bank_path(run):
        args.append(f"--teacher-bank {bank_path(run)}")
        args += ["--bank-fallback"] if config["train"]["teacher_bank"] == "auto" else []
    return " ".join(args)


def import_args(wildcards, input):
    """`rckd import-teacher` source arguments: mdistiller's archive, or torchvision's weight folder
    when there is one (else the job downloads the weights), and the data options for its metadata."""
    archive = config["teachers"]["archive"]
    if TEACHER_SOURCE == "mdistiller":
        return f"--archive {shlex.quote(input.archive)}"
    folder = f"--archive {shlex.quote(archive)} " if os.path.isdir(archive) else ""
    return folder + data_options_args()


def import_inputs(wildcards):
    return {"archive": config["teachers"]["archive"]} if TEACHER_SOURCE == "mdistiller" else {}


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


def teacher_inputs(wildcards):
    """The data cache and, for a distilled student, its teacher's model."""
    run = RUNS[wildcards.run]
    inputs = {"data": DATA_CACHE}
    if run.teacher_run:
        inputs["teacher"] = f"{run.teacher_run.dir}/model.pt"
    return inputs


def train_inputs(wildcards):
    """teacher_inputs and, for a banked student, its teacher's logit bank."""
    bank = bank_path(RUNS[wildcards.run])
    return {**teacher_inputs(wildcards), **({"bank": bank} if bank else {})}


def evaluate_inputs(wildcards):
    """teacher_inputs, the run's final weights and, for a trained run, its best epoch's (best.pt)."""
    run = RUNS[wildcards.run]
    return {**teacher_inputs(wildcards), "model": f"{run.dir}/model.pt",
            **({} if run.imported else {"best": f"{run.dir}/best.pt"})}


def experiment_outputs(name):
    folder = f"{RESULTS}/{name}"
    plot = PLOT_KINDS[kind_of(name)]
    return [f"{folder}/summary.csv", f"{folder}/table.md", f"{folder}/table.csv", f"{folder}/{plot}.png"]


def summary_inputs(wildcards):
    runs = experiment_runs(wildcards.experiment)
    return [f"{run.dir}/{name}" for run in runs for name in ("metrics.json", "eval.json")]


try:  # every spec is resolved and checked up front, not hours later in a job
    SPECS = {run.name: run_spec(run) for run in RUNS.values() if not run.imported}
except RckdError as err:
    config_error("train", str(err))
IMPORTS = sorted({run.student for run in RUNS.values() if run.imported})


def student_epochs():
    """{teacher run name: the epochs of all its students together}."""
    epochs = {}
    for run in RUNS.values():
        if run.teacher_run:
            epochs[run.teacher_run.name] = epochs.get(run.teacher_run.name, 0) + run.epochs
    return epochs


STUDENT_EPOCHS = student_epochs()


def teacher_priority(wildcards):
    """Scheduling priority of a run's job (or its bank's): the epochs of the students waiting for it, so
    that the teacher most students wait for starts first (it heads the DAG's critical path)."""
    return STUDENT_EPOCHS.get(wildcards.run, 0)


def bank_plan():
    """{teacher run name: whether its students read a logit bank}. train.teacher_bank auto weighs cost:
    a bank is BANK_VIEWS teacher passes over the training set, once; the live teacher is one pass per
    epoch of each of its students. (Whether the bank fits in memory is decided by each job: --bank-fallback.)"""
    policy = config["train"]["teacher_bank"]
    return {name: policy == "on" or (policy == "auto" and epochs > BANK_VIEWS)
            for name, epochs in STUDENT_EPOCHS.items()}


_PADDING = crop_padding(DATASET, config["data"]["options"])  # None: random-resized crops, no finite views
if _PADDING is None and config["train"]["teacher_bank"] == "on":
    config_error("train.teacher_bank", f"{DATASET} is cropped at random sizes: a bank cannot hold every view; "
                 f"use auto or off")
BANK_VIEWS = view_count(_PADDING) if _PADDING is not None else None  # crop offsets x flips
BANKED = bank_plan() if _PADDING is not None else {run.teacher_run.name: False for run in RUNS.values() if run.teacher}


def bank_path(run):
    """The logit bank a distilled run reads, or None when it runs its teacher live."""
    return f"{run.teacher_run.dir}/bank.pt" if run.teacher_run and BANKED[run.teacher_run.name] else None
