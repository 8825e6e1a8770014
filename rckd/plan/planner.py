"""plan(config) -> Plan: every run, bank, export and output of a validated workflow config, torch-free.

The workflow (workflow/rules/common.smk) validates the config against the schema (which fills in its
defaults) and plans once; the rules only read the plan. Bad values raise RckdError naming the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rckd.data.options import crop_padding, resolve_options, view_count
from rckd.errors import RckdError
from rckd.losses import catalog
from rckd.plan.errors import config_error
from rckd.plan.kinds import KINDS
from rckd.plan.naming import DEFAULT_TAG, format_params, run_name
from rckd.plan.records import Experiment, Plan, Run, Schedule
from rckd.spec import RunSpec
from rckd.teachers import SOURCE_DATASETS, SOURCES

SPEC_KEYS = ("momentum", "weight_decay", "lr_decay", "precision", "compile")  # always the global train section's


def check_layout(config: dict[str, Any]) -> None:
    """Refuse, in one message, experiments written before kinds existed (no `kind:`)."""
    missing = {name: _likely_kind(spec) for name, spec in (config.get("experiments") or {}).items()
               if isinstance(spec, dict) and "kind" not in spec}
    if missing:
        fixes = "; ".join(f"experiments.{name}: add `kind: {kind}`" for name, kind in missing.items())
        raise config_error("experiments", f"an experiment names its kind ({', '.join(KINDS)}) with `kind:`, no "
                           f"longer by its name (this config has the old layout): {fixes}")


def _likely_kind(spec: dict) -> str:
    """The kind an old-layout experiment's keys suggest."""
    for key, kind in (("pairs", "main"), ("sweep", "sweep"), ("teachers", "capacity")):
        if key in spec:
            return kind
    return f"one of {', '.join(KINDS)}"


class Planner:
    """Makes the run records the kinds ask for (teacher, vanilla, distilled), from one config."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.train = config["train"]
        self.seeds = config["seeds"]
        self.dataset = config["dataset"]
        self.results = f"{config['results']}/{self.dataset}"
        self.source = config["teachers"]["source"]

    def teacher(self, arch: str) -> Run:
        """A teacher is a run of its own: it may train longer (train.teacher_epochs) or be imported."""
        source = self.source if arch in SOURCES.get(self.source, {}) else None
        epochs = self.train["teacher_epochs"] or self.train["epochs"]
        schedule, tag = self._schedule(arch, [("train.teacher_epochs", {"epochs": epochs})])
        return self._run("teacher", arch, "ce", {}, None, self.config["teacher_seed"], schedule,
                         source or format_params(tag) or DEFAULT_TAG, source)

    def vanilla(self, arch: str, seed: int, train: list) -> Run:
        schedule, tag = self._schedule(arch, train)
        return self._run("vanilla", arch, "ce", {}, None, seed, schedule, format_params(tag) or DEFAULT_TAG)

    def distilled(self, name: str, student: str, teacher: str, seed: int, train: list,
                  overrides: dict | None = None, key: str | None = None) -> Run:
        """The student of `teacher` under method name `name` (config `methods`), with its own overrides."""
        loss, params = self.method_variant(name)
        try:
            changed = catalog.changed(loss, {**params, **(overrides or {})})
        except RckdError as err:
            raise config_error(key if overrides else f"methods.{name}", str(err)) from None
        schedule, tag = self._schedule(student, train)
        return self._run("student", student, loss, changed, self.teacher(teacher), seed, schedule,
                         format_params({**tag, **changed}) or DEFAULT_TAG)

    def method_variant(self, name: str) -> tuple[str, dict]:
        """(loss method, parameters) of a configured method name."""
        spec = dict(self.config["methods"].get(name, {}))
        loss = spec.pop("method", name)
        if loss not in catalog.METHODS or loss == "ce":
            raise config_error(f"methods.{name}", f"{loss!r} is not a distillation loss; set method: to one of "
                               f"{', '.join(m for m in catalog.available() if m != 'ce')}")
        return loss, spec

    def _schedule(self, arch: str, blocks: list) -> tuple[Schedule, dict]:
        """(schedule, its values that differ from the global train section and enter the run's tag).
        `blocks` are (key, train overrides), later over earlier. Milestones not given stretch in
        proportion to the epochs; being implied by them, they enter no tag."""
        train, merged, where = self.train, {}, {}
        for key, block in blocks:
            for name, value in block.items():
                merged[name] = {**merged.get(name, {}), **value} if name == "lr_by_arch" else value
                where[name] = key
        epochs = merged.get("epochs", train["epochs"])
        stretched = [round(m * epochs / train["epochs"]) for m in train["milestones"]]
        if "milestones" not in merged and (any(m < 1 for m in stretched) or len(set(stretched)) != len(stretched)):
            raise config_error(where.get("epochs", "train.milestones"), f"{epochs} epochs squeeze the milestones {train['milestones']} into "
                               f"{stretched}; give it more epochs or fewer milestones")
        milestones = merged.get("milestones", stretched)
        lr_by_arch = {**train["lr_by_arch"], **merged.get("lr_by_arch", {})}
        schedule = Schedule(epochs, tuple(milestones), lr_by_arch.get(arch, merged.get("lr", train["lr"])),
                            merged.get("batch_size", train["batch_size"]))
        base = {"epochs": train["epochs"], "milestones": tuple(stretched),
                "lr": train["lr_by_arch"].get(arch, train["lr"]), "batch_size": train["batch_size"]}
        return schedule, {name: value for name, value in dataclasses.asdict(schedule).items() if base[name] != value}

    def _run(self, role: str, arch: str, method: str, params: dict, teacher: Run | None, seed: int,
             schedule: Schedule, tag: str, source: str | None = None) -> Run:
        name = run_name(arch, teacher.arch if teacher else None, method, tag, seed)
        return Run(role=role, arch=arch, method=method, params=params, teacher=teacher.arch if teacher else None,
                   seed=seed, schedule=schedule, name=name, dir=f"{self.results}/runs/{name}", source=source,
                   teacher_run=teacher)

    def spec(self, run: Run) -> dict[str, Any]:
        """The run's resolved RunSpec: everything `rckd train` computes from, checked now."""
        train = self.train
        try:
            return RunSpec(arch=run.arch, dataset=self.dataset, data_options=self.config["data"]["options"],
                           method=run.method, params=run.params,
                           teacher=f"{run.teacher_run.dir}/model.pt" if run.teacher_run else None, seed=run.seed,
                           epochs=run.schedule.epochs, milestones=run.schedule.milestones, lr=run.schedule.lr,
                           batch_size=run.schedule.batch_size, **{key: train[key] for key in SPEC_KEYS}).resolved()
        except RckdError as err:
            raise config_error(f"train (run {run.name})", str(err)) from None


def labelled_runs(planner: Planner, name: str, spec: dict) -> list[tuple[str, Run]]:
    """The experiment's (method label, run), one per run directory (the last role of a repeated run)."""
    unique: dict[str, tuple[str, Run]] = {}
    for label, run in KINDS[spec["kind"]].runs(planner, name, spec):
        if unique.setdefault(run.name, (label, run))[0] != label:
            raise config_error(f"experiments.{name}", f"methods {unique[run.name][0]!r} and {label!r} are the same "
                               f"run {run.name}; give one of them other parameters or drop it")
        unique[run.name] = (label, run)
    return list(unique.values())


def bank_plan(config: dict, runs: dict[str, Run]) -> tuple[dict[str, bool], dict[str, int]]:
    """({teacher run name: whether its students read a logit bank}, {teacher run name: its students'
    epochs}). train.teacher_bank auto weighs cost: a bank is one teacher pass per augmentation view, once;
    the live teacher is one pass per epoch of each student that could read the bank. (Whether the bank
    fits in memory is decided by each job: --bank-fallback.) A loss that needs the live teacher
    (catalog.needs_live_teacher) never reads a bank."""
    policy = config["train"]["teacher_bank"]
    padding = crop_padding(config["dataset"], config["data"]["options"])  # None: random-resized crops
    students = [run for run in runs.values() if run.teacher_run]
    live = sorted({run.method for run in students if catalog.needs_live_teacher(run.method)})
    if policy == "on" and padding is None:
        raise config_error("train.teacher_bank", f"{config['dataset']} is cropped at random sizes: a bank cannot "
                           f"hold every view; use auto or off")
    if policy == "on" and live:
        raise config_error("train.teacher_bank", f"{', '.join(live)} needs the live teacher, not a bank; use auto "
                           f"(its students then run the teacher) or off")
    priority: dict[str, int] = {}
    bankable: dict[str, int] = {}
    for run in students:
        teacher = run.teacher_run.name
        priority[teacher] = priority.get(teacher, 0) + run.schedule.epochs
        bankable[teacher] = bankable.get(teacher, 0) + (0 if catalog.needs_live_teacher(run.method)
                                                        else run.schedule.epochs)
    views = view_count(padding) if padding is not None else None
    banks = {teacher: views is not None and epochs > 0 and (policy == "on" or (policy == "auto" and epochs > views))
             for teacher, epochs in bankable.items()}
    return banks, priority


def export_runs(config: dict, experiments: dict[str, Experiment]) -> tuple[Run, ...]:
    """The students worth shipping, first seed only: those of export.experiment (default: the first enabled
    experiment of a kind that exports, i.e. main), vanilla and distilled, or those of export.methods."""
    export = config["export"]
    name = export["experiment"] or next((name for name, experiment in experiments.items()
                                         if KINDS[experiment.kind].exports), None)
    if export["experiment"] and (name not in experiments or not KINDS[experiments[name].kind].exports):
        raise config_error("export.experiment", f"{name!r} is not an enabled experiment of a kind that exports "
                           f"({', '.join(kind for kind, value in KINDS.items() if value.exports)})")
    if name is None or not export["enabled"]:
        return ()
    labels = {label for label, _ in experiments[name].runs}
    methods = export["methods"] or sorted(labels)
    unknown = sorted(set(methods) - labels)
    if unknown:
        raise config_error("export.methods", f"{unknown} are not methods of experiments.{name} "
                           f"({', '.join(sorted(labels - {'ce'}))}) nor ce (the vanilla students)")
    return tuple(run for label, run in experiments[name].runs
                 if label in methods and run.role != "teacher" and run.seed == config["seeds"][0])


def plan(config: dict[str, Any]) -> Plan:
    """The plan of a config validated against workflow/schemas/config.schema.yaml (defaults filled in)."""
    check_layout(config)
    planner = Planner(config)
    dataset, source = config["dataset"], planner.source
    if source != "train" and dataset != SOURCE_DATASETS[source]:
        raise config_error("teachers.source", f"{source} teachers are {SOURCE_DATASETS[source]} models; use "
                           f"source: train for {dataset}")
    try:
        resolve_options(dataset, config["data"]["options"])
    except RckdError as err:
        raise config_error("data.options", str(err)) from None
    drafts = {name: labelled_runs(planner, name, spec) for name, spec in config["experiments"].items()
              if spec.get("enabled", True)}
    runs: dict[str, Run] = {}
    for labelled in drafts.values():
        for _, run in labelled:
            if run.name not in runs or runs[run.name].role == "teacher":  # a vanilla run that also teaches
                runs[run.name] = run
    processes = config["train"]["processes"]
    for run in runs.values():
        if processes > 1 and run.schedule.batch_size % processes:
            raise config_error("train.batch_size", f"{run.schedule.batch_size} (the total) does not divide among "
                               f"train.processes = {processes}")
    banks, priority = bank_plan(config, runs)
    specs = {name: planner.spec(run) for name, run in runs.items() if not run.imported}

    def final(run: Run) -> Run:
        reads_bank = run.teacher_run and banks[run.teacher_run.name] and not catalog.needs_live_teacher(run.method)
        return dataclasses.replace(run, spec=specs.get(run.name),
                                   bank=f"{run.teacher_run.dir}/bank.pt" if reads_bank else None)

    experiments = {}
    for name, labelled in drafts.items():
        kind = KINDS[config["experiments"][name]["kind"]]
        folder = f"{planner.results}/{name}"
        experiments[name] = Experiment(name, kind.name, tuple((label, final(run)) for label, run in labelled),
                                       tuple(f"{folder}/{output}" for output in kind.outputs))
    return Plan(dataset=dataset, results=planner.results, logs=f"{config['logs']}/{dataset}",
                data_cache=f"{config['data']['root']}/{dataset}.pt",
                runs={name: final(run) for name, run in runs.items()}, experiments=experiments,
                exports=export_runs(config, experiments), banks=banks, priority=priority,
                imports=tuple(sorted({run.arch for run in runs.values() if run.imported})))
