"""The planner (rckd.plan): configs to runs, banks, exports and outputs; every bad config to its message;
the generated schema; all without a snakemake process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, config_file, planned, workflow_config
from snakemake.exceptions import WorkflowError

from rckd import models
from rckd.errors import RckdError
from rckd.losses import catalog
from rckd.models.names import ARCHS
from rckd.plan import check_layout, format_params, plan, train_args
from rckd.plan import schema as config_schema
from rckd.plan.kinds import KINDS
from rckd.spec import COMPILE_MODES, PRECISIONS
from rckd.teachers import SOURCES

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def names(runs) -> set[str]:
    return {run.name for run in runs}


def test_format_params_is_canonical():
    assert format_params({"beta": 8, "T": 4.0, "relation": "rank", "warm": True, "alpha": 0.5}) == \
        "T=4,alpha=0.5,beta=8,relation=rank,warm=true"
    assert format_params({"milestones": (3, 5)}) == "milestones=3/5"
    assert format_params({}) == ""


def test_the_paper_config_plans_each_run_once_with_its_role_arch_and_spec():
    paper = planned()
    # Per seed: main 6 teachers + 9 vanilla students + 11 pairs x 8 methods = 103, capacity 15 more (its
    # resnet20 and resnet32 teachers are the vanilla students of main), the RCKD ablation 7 more.
    assert len(paper.runs) == 125
    roles = {role: [run for run in paper.runs.values() if run.role == role]
             for role in ("teacher", "vanilla", "student")}
    assert {run.arch for run in roles["teacher"]} == {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13",
                                                       "resnet50"}
    # students: main 88, capacity 18 less main's 3 resnet56 -> resnet20 runs, ablation 8 less main's rckd run
    assert len(roles["vanilla"]) == 9 and len(roles["student"]) == 88 + 15 + 7
    assert all(run.method == "ce" and run.teacher is None for run in roles["teacher"] + roles["vanilla"])
    dkd = paper.runs["resnet20/resnet56/dkd/beta=2/seed0"]  # the pair's own beta over the catalogue's 8
    assert (dkd.role, dkd.arch, dkd.teacher, dkd.params) == ("student", "resnet20", "resnet56", {"beta": 2.0})
    assert dkd.teacher_run.name == "resnet56/none/ce/default/seed0" and dkd.teacher_run.role == "teacher"
    assert dkd.dir == "results/cifar100/runs/resnet20/resnet56/dkd/beta=2/seed0"
    assert dkd.spec["teacher"] == "results/cifar100/runs/resnet56/none/ce/default/seed0/model.pt"
    assert dkd.spec["params"]["beta"] == 2.0 and dkd.spec["epochs"] == 240 and dkd.spec["lr"] == 0.05
    assert paper.runs["mobilenetv2/vgg13/kd/T=3,kd=9,ls=true/seed0"].spec["lr"] == 0.01  # lr_by_arch
    assert dkd.bank == "results/cifar100/runs/resnet56/none/ce/default/seed0/bank.pt"
    # auto: every teacher has more student epochs (>= 240) than the bank has views (162)
    assert all(paper.banks.values()) and len(paper.banks) == 8
    # resnet56's students: main's 8 runs of resnet20 (capacity's 3 with resnet56 are among them)
    assert paper.priority["resnet56/none/ce/default/seed0"] == 240 * 8


def test_experiments_have_their_kinds_outputs_and_labelled_runs():
    paper = planned()
    assert {name: experiment.kind for name, experiment in paper.experiments.items()} == {
        "main": "main", "capacity": "capacity", "ablation": "sweep"}
    assert paper.experiments["capacity"].outputs == tuple(
        f"results/cifar100/capacity/{name}" for name in ("summary.csv", "table.md", "table.csv", "capacity.png"))
    assert paper.experiments["ablation"].outputs[-1].endswith("/ablation/ablation.png")
    ablation = paper.experiments["ablation"].runs
    assert [label for label, _ in ablation] == ["ce", "ce"] + ["rckd"] * 8  # teacher, vanilla, 8 settings
    assert "resnet8x4/resnet32x4/rckd/default/seed0" in names(run for _, run in ablation)  # main's run too
    assert paper.outputs()[-2:] == ["results/cifar100/deploy/latency.csv", "results/cifar100/deploy/latency.png"]


def test_the_demo_config_trains_its_teacher_longer_and_banks_only_where_it_pays():
    quick = planned(config_file("quick"))
    teacher = quick.runs["resnet14/none/ce/epochs=18/seed0"]
    assert teacher.role == "teacher" and teacher.schedule.epochs == 18
    assert teacher.schedule.milestones == (11, 16)  # 5 and 7 of 8 epochs, stretched to 18
    assert quick.runs["resnet8/none/ce/default/seed0"].spec["milestones"] == [5, 7]
    # resnet14's 11 students have 88 epochs, more than its 50 views; resnet8 teaches 2 students, 16 epochs
    assert quick.banks == {"resnet14/none/ce/epochs=18/seed0": True, "resnet8/none/ce/epochs=18/seed0": False}
    assert [run.name for run in quick.exports] == ["resnet8/none/ce/default/seed0", "resnet8/resnet14/kd/default/seed0",
                                                   "resnet8/resnet14/rckd/default/seed0"]


def test_an_imported_teacher_has_its_source_as_tag_and_no_spec(tmp_path):
    paper = planned("teachers: {source: mdistiller}")
    imported = [run for run in paper.runs.values() if run.imported]
    assert {run.arch for run in imported} == set(SOURCES["mdistiller"]) == set(paper.imports)
    assert all(run.name.endswith("/none/ce/mdistiller/seed0") and run.spec is None for run in imported)
    assert paper.runs["resnet20/none/ce/default/seed0"].spec is not None  # capacity's small teachers train


def test_two_experiments_of_one_kind_get_two_tables_and_export_picks_one():
    second = ("experiments: {wide: {kind: main, teachers: [wrn_40_2], methods: [kd, rckd], "
              "pairs: [{teacher: wrn_40_2, student: wrn_16_2}]}}")
    both = planned(second)
    assert {name for name, experiment in both.experiments.items() if experiment.kind == "main"} == {"main", "wide"}
    assert "results/cifar100/wide/table.md" in both.outputs() and "results/cifar100/main/table.md" in both.outputs()
    assert "results/cifar100/wide/curves.png" in both.outputs()
    assert {run.arch for run in both.exports} == {"resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1",
                                                  "vgg8", "shufflenetv1", "shufflenetv2", "mobilenetv2"}  # main's
    chosen = planned(second, "export: {experiment: wide}")
    assert names(chosen.exports) == {"wrn_16_2/none/ce/default/seed0", "wrn_16_2/wrn_40_2/kd/default/seed0",
                                     "wrn_16_2/wrn_40_2/rckd/default/seed0"}
    with pytest.raises(RckdError, match="export.experiment: 'ablation' is not an enabled experiment of a kind that "
                                        "exports"):
        planned("export: {experiment: ablation}")


def test_schedule_overrides_enter_the_run_name_so_runs_never_collide():
    short = ("experiments: {short: {kind: main, train: {epochs: 120, batch_size: 128}, teachers: [resnet56], "
             "methods: [kd], pairs: [{teacher: resnet56, student: resnet20}, "
             "{teacher: resnet56, student: resnet20, train: {lr: 0.1, milestones: [50, 100]}}]}}")
    paper = planned(short)
    short_runs = {run.name: run for _, run in paper.experiments["short"].runs}
    assert set(short_runs) == {
        "resnet56/none/ce/default/seed0",  # teachers keep the global schedule: main's teacher
        "resnet20/none/ce/batch_size=128,epochs=120/seed0",
        "resnet20/resnet56/kd/batch_size=128,epochs=120/seed0",
        "resnet20/none/ce/batch_size=128,epochs=120,lr=0.1,milestones=50/100/seed0",
        "resnet20/resnet56/kd/batch_size=128,epochs=120,lr=0.1,milestones=50/100/seed0",
    }
    stretched = short_runs["resnet20/resnet56/kd/batch_size=128,epochs=120/seed0"].spec
    assert (stretched["epochs"], stretched["milestones"], stretched["batch_size"], stretched["lr"]) == (
        120, [75, 90, 105], 128, 0.05)
    own = short_runs["resnet20/resnet56/kd/batch_size=128,epochs=120,lr=0.1,milestones=50/100/seed0"].spec
    assert (own["epochs"], own["milestones"], own["lr"]) == (120, [50, 100], 0.1)
    assert paper.runs["resnet20/resnet56/kd/default/seed0"].spec["epochs"] == 240  # main's run, untouched
    # A value equal to the global one changes nothing: the run is main's.
    same = planned("experiments: {main: {train: {epochs: 240, lr_by_arch: {mobilenetv2: 0.01}}}}")
    assert set(same.runs) == set(planned().runs)


def test_a_loss_that_needs_the_live_teacher_never_reads_a_bank(monkeypatch):
    monkeypatch.setitem(catalog.METHODS, "dist", catalog.Method(catalog.METHODS["dist"].defaults, True, "two views",
                                                                views=2))
    assert catalog.needs_live_teacher("dist") and not catalog.needs_live_teacher("kd")
    paper = planned()
    students = [run for run in paper.runs.values() if run.teacher]
    assert all(run.bank is None for run in students if run.method == "dist")
    assert all(run.bank for run in students if run.method != "dist")
    # resnet32's only students distil with dist in the capacity study: nothing is left to read its bank
    only_dist = planned("experiments: {main: {enabled: false}, ablation: {enabled: false}, "
                        "capacity: {teachers: [resnet56], methods: [dist]}}")
    assert only_dist.banks == {"resnet56/none/ce/default/seed0": False}
    with pytest.raises(RckdError, match="train.teacher_bank: dist needs the live teacher, not a bank; use auto"):
        planned('train: {teacher_bank: "on"}')


def test_toggling_an_experiment_leaves_the_other_runs_untouched():
    """main's rckd run is also the ablation's default variant: its spec must not depend on that. (Whether
    a student reads a bank may: teacher_bank auto weighs the epochs of all the teacher's students.)"""
    both = planned(config_file("quick"))
    main_only = planned(config_file("quick"), "experiments: {ablation: {enabled: false}}")
    shared = both.runs.keys() & main_only.runs.keys()
    assert "resnet8/resnet14/rckd/default/seed0" in shared and len(shared) == len(main_only.runs)
    assert {name: both.runs[name].spec for name in shared} == {name: main_only.runs[name].spec for name in shared}


def test_train_arguments_pass_the_spec_the_bank_and_the_tensorboard_switch():
    config = workflow_config(config_file("quick"))
    run = plan(config).runs["resnet8/resnet14/kd/default/seed0"]
    args = train_args(config, run)
    assert args.startswith("--spec '{") and '"method": "kd"' in args and "--tensorboard on" in args
    assert args.endswith("--teacher-bank results/synthetic/runs/resnet14/none/ce/epochs=18/seed0/bank.pt "
                         "--bank-fallback")
    quiet = workflow_config(config_file("quick"), "train: {tensorboard: false}")
    assert "--tensorboard off" in train_args(quiet, plan(quiet).runs[run.name])


def test_an_old_layout_gets_one_message_saying_how_to_write_it():
    config = yaml.safe_load(
        "experiments: {main: {teachers: [resnet56], methods: [kd], pairs: [{teacher: resnet56, student: resnet20}]},"
        " dkd_beta: {method: dkd, teacher: resnet56, student: resnet20, sweep: {beta: [1, 2]}}}")
    with pytest.raises(RckdError) as error:
        check_layout(config)
    assert str(error.value).count("\n") == 0
    assert "experiments.main: add `kind: main`" in str(error.value)
    assert "experiments.dkd_beta: add `kind: sweep`" in str(error.value)


BAD_CONFIGS = {
    "unknown model": ("experiments: {main: {teachers: [resnet56], methods: [kd], "
                      "pairs: [{teacher: resnet56, student: resnet999}]}}", ["resnet999", "resnet8x4"]),
    "unknown method": ("experiments: {main: {teachers: [resnet56], methods: [fitnet], "
                       "pairs: [{teacher: resnet56, student: resnet20}]}}", ["methods.fitnet", "rckd"]),
    "variant of an unknown loss": ("methods: {kd_x: {method: fitnet}}", ["fitnet", "kd_x", "rckd"]),
    "two names for one run": ("methods: {kd_again: {method: kd}}\nexperiments: {main: {teachers: [resnet56], "
                              "methods: [kd, kd_again], pairs: [{teacher: resnet56, student: resnet20}]}}",
                              ["'kd' and 'kd_again' are the same run"]),
    "sweep without a method": ("experiments: {dkd_beta: {kind: sweep, teacher: resnet56, student: resnet20, "
                               "sweep: {beta: [1, 2]}}}", ["method", "required"]),
    "experiment without a kind": ("experiments: {dkd_beta: {method: dkd, teacher: resnet56, student: resnet20, "
                                  "sweep: {beta: [1, 2]}}}", ["experiments.dkd_beta: add `kind: sweep`"]),
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
    "bad pair parameter value": ("experiments: {main: {pairs: [{teacher: resnet56, student: resnet20, "
                                 "params: {kd: {T: 0}}}]}}", ["experiments.main.pairs[0].params.kd", "T", "> 0"]),
    "unknown data option": ("dataset: synthetic\ndata: {options: {train_per_clas: 5}}",
                            ["data.options", "train_per_clas", "train_per_class"]),
    "squeezed schedule": ("train: {teacher_epochs: 2}", ["train.teacher_epochs", "squeeze"]),
    "squeezed experiment schedule": ("experiments: {ablation: {train: {epochs: 2}}}",
                                     ["experiments.ablation.train", "squeeze"]),
    "bad experiment milestones": ("experiments: {ablation: {train: {milestones: [9, 3]}}}",
                                  ["milestones must be increasing", "[9, 3]"]),
    "bad bank policy": ("train: {teacher_bank: sometimes}", ["teacher_bank", "sometimes"]),
    "export of a method not in main": ("export: {methods: [ce, fitnet]}", ["export.methods", "fitnet"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_raises_its_message(case):
    text, expected = BAD_CONFIGS[case]
    with pytest.raises((RckdError, WorkflowError)) as error:
        planned(text)
    message = str(error.value)
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in:\n{message[-3000:]}"


def test_planning_imports_no_torch():
    code = ("import sys; from pathlib import Path; from helpers import planned; "
            "assert planned(Path(sys.argv[1])).runs; assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code, str(config_file("quick"))], capture_output=True, text=True,
                            cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr


# --- the generated schema -----------------------------------------------------------------------


def test_the_checked_in_schema_is_the_generated_one():
    assert SCHEMA.read_text() == config_schema.render(), "run `python -m rckd schema` and commit the schema"


def test_the_schema_lists_come_from_their_owners():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["arch"]["enum"] == list(ARCHS)
    assert sorted(schema["$defs"]["loss_method"]["enum"] + ["ce"]) == catalog.available()
    known = set().union(*(catalog.defaults(method) for method in catalog.available()))
    assert set(schema["$defs"]["param_name"]["enum"]) == known == set(catalog.PARAMETERS)
    train = schema["properties"]["train"]["properties"]
    assert train["compile"]["enum"] == list(COMPILE_MODES) and "default" in COMPILE_MODES
    assert train["precision"]["enum"] == list(PRECISIONS)
    assert (train["tensorboard"]["type"], train["tensorboard"]["default"]) == ("boolean", True)
    assert schema["properties"]["teachers"]["properties"]["source"]["enum"] == ["train", *SOURCES]
    experiment = schema["properties"]["experiments"]["additionalProperties"]
    assert experiment["properties"]["kind"]["enum"] == list(KINDS)
    assert [branch["if"]["properties"]["kind"]["const"] for branch in experiment["allOf"]] == list(KINDS)


def test_the_torch_free_arch_names_are_the_registered_models():
    assert sorted(ARCHS) == models.available()


def test_the_config_states_no_default():
    """config/config.yaml sets only what it means to: no key equal to its schema default."""
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    restated = [f"{section}.{key}" for section, values in config.items() if isinstance(values, dict)
                for key, value in values.items()
                if schema.get(section, {}).get("properties", {}).get(key, {}).get("default", object()) == value]
    restated += [key for key, value in config.items() if schema[key].get("default", object()) == value]
    assert restated == []
