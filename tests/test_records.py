"""The typed run records (rckd.records): each round-trips through its file, and a missing or unknown
key is one RckdError that names the file and the key; the trainer's, importer's and evaluator's files
read back as their records."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import toy_meta
from helpers import ROOT

from rckd.checkpoint import load_model, save_model
from rckd.errors import RckdError
from rckd.evaluate import evaluate
from rckd.records import BestScores, EvalRecord, ModelInfo, ModelMeta, Origin, RunMetrics

META = toy_meta("resnet8", ["a", "b", "c"])
METRICS = RunMetrics(
    arch="resnet8", dataset="synthetic", method="kd", params={"T": 4.0}, teacher="runs/t/model.pt",
    teacher_arch="resnet14", seed=1, epochs=4, final_top1=30.5, best_top1=31.0, best_epoch=3, num_params=1234,
    wall_seconds=2.5, teacher_bank=False, device="cpu", precision="fp32", compile="none", processes=1,
    spec={"arch": "resnet8"}, spec_hash="0123456789abcdef",
)
SCORES = dict(top1=30.0, top5=70.0, nll=2.1, ece=0.05, agreement=60.0, kl_t1=0.3, kl_tm=0.1, tau_all=0.5, tau_nt=0.4,
              top5_overlap=0.6)
EVALUATION = EvalRecord(
    model="runs/s/model.pt", arch="resnet8", dataset="synthetic", method="kd", params={"T": 4.0}, seed=1,
    num_test=400, ece_bins=15, device="cpu", teacher="runs/t/model.pt", teacher_arch="resnet14", temperature=4.0,
    teacher_top1=50.0, **SCORES, best=BestScores(model="runs/s/best.pt", epoch=3, **SCORES),
)
INFO = ModelInfo.from_meta(META, precision="fp32", top1=50.0, fp32_top1=50.0, torch_top1=50.0, rckd_version="0.1.0")


@pytest.mark.parametrize("record", [METRICS, EVALUATION, replace(METRICS, teacher=None, teacher_arch=None)],
                         ids=["metrics", "eval", "metrics without teacher"])
def test_json_records_round_trip_through_their_file(record, tmp_path):
    path = tmp_path / "record.json"
    record.write(path)
    assert type(record).read(path) == record
    assert json.loads(path.read_text()) == record.to_dict()


def test_optional_keys_are_written_only_when_set(tmp_path):
    """A trained model has no import provenance keys; an evaluation without a teacher has no fidelity
    keys (the summary leaves those cells empty); an imported teacher's keys round-trip."""
    assert not {"source", "source_file", "published_top1"} & set(METRICS.to_dict())
    alone = replace(EVALUATION, teacher=None, teacher_arch=None, temperature=None, teacher_top1=None, agreement=None,
                    kl_t1=None, kl_tm=None, tau_all=None, tau_nt=None, top5_overlap=None, best=None)
    assert set(alone.to_dict()) == {"model", "arch", "dataset", "method", "params", "seed", "num_test", "ece_bins",
                                    "device", "teacher", "top1", "top5", "nll", "ece"}
    imported = replace(META, source="mdistiller", source_file="a.tar:x.pth", source_sha256="ab", num_tensors=3)
    assert imported.to_dict()["source"] == "mdistiller" and imported.imported and not META.imported
    assert ModelMeta.from_dict(imported.to_dict(), "m.pt") == imported


def test_model_metadata_round_trips_through_model_pt(tmp_path):
    import torch

    model = torch.nn.Linear(2, 3)
    save_model(tmp_path / "model.pt", model.state_dict(), META)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["meta"] == META.to_dict()
    assert ModelMeta.from_dict(torch.load(tmp_path / "model.pt", weights_only=True)["meta"], "model.pt") == META


@pytest.mark.parametrize("record, key", [(METRICS, "wall_seconds"), (EVALUATION, "ece_bins"), (META, "classes")])
def test_a_missing_key_names_the_file_and_the_key(record, key, tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps({name: value for name, value in record.to_dict().items() if name != key}))
    with pytest.raises(RckdError) as failure:
        type(record).read(path)
    message = str(failure.value)
    assert message.startswith(f"{path}: {record.WHAT} with key '{key}' missing") and record.REWRITE in message


@pytest.mark.parametrize("record", [METRICS, EVALUATION, META])
def test_an_unknown_key_names_the_file_and_the_key(record, tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps({**record.to_dict(), "student": "resnet8"}))
    with pytest.raises(RckdError, match=rf"^{path}: {record.WHAT} with key 'student' unknown "):
        type(record).read(path)


def test_several_bad_keys_are_one_error_naming_them_all(tmp_path):
    values = {key: value for key, value in METRICS.to_dict().items() if key not in ("seed", "epochs")}
    with pytest.raises(RckdError, match=r"^m.json: run metrics with keys 'seed', 'epochs' missing and keys "
                                        r"'colour', 'size' unknown "):
        RunMetrics.from_dict({**values, "size": 1, "colour": 2}, "m.json")


def test_a_bad_key_in_the_best_scores_names_the_file_and_the_key(tmp_path):
    values = EVALUATION.to_dict()
    del values["best"]["epoch"]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(values))
    with pytest.raises(RckdError, match=rf"^{path} \(best\): best-epoch evaluation with key 'epoch' missing"):
        EvalRecord.read(path)


def test_a_missing_or_non_json_file_says_so(tmp_path):
    with pytest.raises(RckdError, match=r"metrics.json not found \(run metrics\)"):
        RunMetrics.read(tmp_path / "metrics.json")
    (tmp_path / "eval.json").write_text("{")
    with pytest.raises(RckdError, match="eval.json is not valid JSON"):
        EvalRecord.read(tmp_path / "eval.json")
    (tmp_path / "eval.json").write_text("[]")
    with pytest.raises(RckdError, match=r"should hold a JSON object \(evaluation\), not list"):
        EvalRecord.read(tmp_path / "eval.json")


def test_onnx_metadata_round_trips_and_names_a_missing_or_unknown_key():
    props = INFO.to_metadata()
    assert ModelInfo.from_metadata(props, "m.onnx") == INFO
    without = {key: value for key, value in props.items() if key != "rckd.classes"}
    with pytest.raises(RckdError, match=r"^m.onnx: rckd metadata with key 'classes' missing"):
        ModelInfo.from_metadata(without, "m.onnx")
    with pytest.raises(RckdError, match=r"^m.onnx: rckd metadata with key 'colour' unknown"):
        ModelInfo.from_metadata({**props, "rckd.colour": '"red"', "other.key": "kept"}, "m.onnx")


def test_the_records_module_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, rckd.records; print('torch' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "False", done.stderr


def test_the_trainers_files_read_back_as_their_records(trained_student, trained_teacher, synthetic_root):
    """metrics.json and model.pt of a real run hold exactly the records' keys, and agree."""
    run = trained_student.parent
    metrics = RunMetrics.read(run / "metrics.json")
    _, meta = load_model(trained_student)
    assert metrics.teacher_arch == meta.teacher_arch == "resnet14" and metrics.arch == meta.arch == "resnet8"
    assert (metrics.best_top1, metrics.best_epoch, metrics.params) == (meta.best_top1, meta.best_epoch, meta.params)
    record = evaluate(trained_student, synthetic_root, trained_teacher, device="cpu", data_options=meta.data_options, best_path=run / "best.pt")
    assert record.best is not None and record.best.epoch == meta.best_epoch and record.teacher_arch == "resnet14"


def test_an_imported_teachers_files_are_records(tmp_path):
    import torch

    from rckd.teachers.output import save_teacher

    data = {"dataset": "cifar100", "data_options": {}, "input_size": [3, 32, 32], "mean": [0.5] * 3,
            "std": [0.2] * 3, "classes": ["a", "b"]}
    origin = Origin(source="mdistiller", source_file="x.tar:y.pth", source_sha256="ab", num_tensors=2)
    save_teacher(tmp_path / "model.pt", torch.nn.Linear(2, 2), "resnet8", data, origin, tmp_path / "metrics.json", 240)
    metrics = RunMetrics.read(tmp_path / "metrics.json")
    assert metrics.imported and metrics.source_file == "x.tar:y.pth" and metrics.num_params == 6
    assert metrics.final_top1 is None and metrics.spec is None
    meta = ModelMeta.from_dict(torch.load(tmp_path / "model.pt", weights_only=True)["meta"], "model.pt")
    assert meta.source == "mdistiller" and meta.classes == ["a", "b"] and meta.arch == "resnet8"
