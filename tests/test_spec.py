"""The run spec (rckd.spec): one resolved form per run, its digest, the checks, and its defaults as the
only ones (the workflow's config and schema agree with them)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from rckd.cli import main as cli
from rckd.errors import RckdError
from rckd.losses import catalog
from rckd.spec import RunSpec, digest, read_spec

ROOT = Path(__file__).resolve().parents[1]
BASE = {"arch": "resnet8", "dataset": "synthetic"}


def test_resolving_fills_every_default_so_equal_runs_have_equal_digests():
    implicit = RunSpec(**BASE, method="kd", teacher=Path("t/model.pt")).resolved()
    explicit = RunSpec(**BASE, method="kd", teacher="t/model.pt", params=catalog.defaults("kd"),
                       data_options={"image_size": 32}, milestones=[150, 180, 210]).resolved()
    assert implicit == explicit and digest(implicit) == digest(explicit)
    assert implicit["params"] == {"ce": 0.1, "kd": 0.9, "T": 4.0, "ls": False}
    assert implicit["data_options"]["image_size"] == 32 and implicit["teacher"] == "t/model.pt"
    assert json.loads(json.dumps(implicit)) == implicit  # plain JSON data


@pytest.mark.parametrize("change", [{"epochs": 239}, {"lr": 0.01}, {"seed": 1}, {"params": {"T": 2}},
                                    {"data_options": {"seed": 3}}, {"precision": "bf16"}, {"teacher": "u/model.pt"}])
def test_every_field_changes_the_digest(change):
    base = {**BASE, "method": "kd", "teacher": "t/model.pt"}
    assert digest(RunSpec(**{**base, **change}).resolved()) != digest(RunSpec(**base).resolved())


@pytest.mark.parametrize("change, message", [
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"batch_size": True}, "batch_size must be an integer"),
    ({"lr": -1}, r"lr must be > 0"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"milestones": (3, 3)}, "milestones must be increasing"),
    ({"compile": "max"}, "compile must be one of"),
    ({"method": "kd"}, "distils from a teacher"),
    ({"teacher": "t/model.pt"}, "trains without a teacher"),
    ({"method": "rckd", "teacher": "t.pt", "params": {"beta": 1}}, "unknown parameter.*beta.*rckd"),
    ({"data_options": {"size": 3}}, r"unknown synthetic option\(s\) \['size'\]"),
])
def test_a_bad_spec_names_the_field(change, message):
    with pytest.raises(RckdError, match=message):
        RunSpec(**{**BASE, **change}).resolved()


def test_read_spec_takes_json_text_or_a_file_and_refuses_unknown_keys(tmp_path):
    text = json.dumps({**BASE, "milestones": [2], "teacher": None})
    (tmp_path / "spec.json").write_text(text)
    assert read_spec(text) == read_spec(str(tmp_path / "spec.json")) == {**BASE, "milestones": (2,), "teacher": None}
    with pytest.raises(RckdError, match="unknown spec key.*epoch\\b"):
        read_spec(json.dumps({**BASE, "epoch": 3}))
    with pytest.raises(RckdError, match="cannot read the run spec"):
        read_spec(str(tmp_path / "missing.json"))
    with pytest.raises(RckdError, match="a JSON object"):
        (tmp_path / "list.json").write_text("[1]")
        read_spec(str(tmp_path / "list.json"))


def test_train_without_arch_or_spec_says_what_to_pass(tmp_path, capsys):
    assert cli(["train", "--dataset", "synthetic", "--data-root", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "the run needs arch: pass --arch, or --spec" in capsys.readouterr().err


def test_the_workflow_defaults_are_the_specs():
    """The schema's training defaults are the RunSpec defaults (the schema is generated from them), and
    config.yaml restates none of them (tests/test_plan.py: it restates no default at all)."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    train_schema = schema["properties"]["train"]["properties"]
    train_config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text()).get("train", {})
    defaults = RunSpec(**BASE)
    shared = [item.name for item in fields(RunSpec) if item.name in train_schema]
    assert set(shared) == {"epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "lr_decay",
                           "precision", "compile"}
    for name in shared:
        default = list(getattr(defaults, name)) if name == "milestones" else getattr(defaults, name)
        assert train_schema[name]["default"] == default, name
        assert train_config.get(name, default) == default, name
