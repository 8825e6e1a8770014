"""The trainer on CPU: it learns, distils with every method, resumes bit for bit, and fails clearly."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rckd import data
from rckd.checkpoint import load_model, load_torch
from rckd.cli import main as cli
from rckd.errors import RckdError
from rckd.spec import digest
from rckd.train import TrainConfig, _setup, lr_at, train

ROOT = Path(__file__).resolve().parents[1]
# 20 classes in 5 superclasses, 16x16 images: small enough for seconds per epoch on one core.
OPTIONS = {"num_superclasses": 5, "classes_per_superclass": 4, "train_per_class": 40, "test_per_class": 20,
           "image_size": 16, "seed": 0}
OPTION_ARGS = [arg for key, value in OPTIONS.items() for arg in ("--data-option", f"{key}={value}")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    data.prepare_cache("synthetic", root, **OPTIONS)
    return root


def config(data_root: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(arch="resnet8", dataset="synthetic", data_root=data_root, out=out, data_options=OPTIONS,
                    epochs=2, milestones=(1,), device="cpu", checkpoint_every=1)
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train(config(data_root, out, arch="resnet14", epochs=6, milestones=(5,)))
    return out / "model.pt"


def read_history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_step_schedule():
    cfg = TrainConfig(arch="resnet8", dataset="synthetic", data_root=Path(), out=Path(), lr=0.05,
                      milestones=(150, 180, 210))
    assert [lr_at(cfg, epoch) for epoch in (0, 149, 150, 179, 180, 210, 239)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.00005, 0.00005])


def test_teacher_learns_and_writes_its_run_directory(teacher):
    run = teacher.parent
    model, meta = load_model(teacher)
    metrics = json.loads((run / "metrics.json").read_text())
    history = read_history(run)
    chance = 100 / 20
    assert metrics["best_top1"] > 4 * chance, metrics
    assert metrics["final_top1"] == float(history[-1]["test_top1"])
    assert metrics["best_top1"] == max(float(row["test_top1"]) for row in history)
    assert [int(row["epoch"]) for row in history] == list(range(1, 7))
    assert [float(row["lr"]) for row in history] == pytest.approx([0.05] * 5 + [0.005])
    assert meta["arch"] == "resnet14" and meta["num_classes"] == 20 and meta["input_size"] == [3, 16, 16]
    assert meta["method"] == "ce" and meta["teacher"] is None and len(meta["classes"]) == 20
    assert metrics["num_params"] == sum(p.numel() for p in model.parameters())
    assert not (run / "resume.pt").exists()  # a finished run drops its resume checkpoint


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "wttm", "nkd", "ctkd", "rckd"])
def test_distillation_runs_for_every_method(data_root, teacher, tmp_path, method):
    metrics = train(config(data_root, tmp_path, method=method, teacher=teacher, epochs=1))
    history = read_history(tmp_path)
    terms = {"kd": {"ce", "kd"}, "dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"},
             "wttm": {"ce", "wttm"}, "nkd": {"ce", "target", "non_target"}, "ctkd": {"ce", "kd"},
             "rckd": {"ce", "rc"}}[method]
    assert {key[5:] for key in history[0] if key.startswith("loss_")} == terms
    # CTKD's learned temperature: logged per epoch, moved from its start 1 + 20 sigmoid(1) = 15.62.
    assert ("temperature" in history[0]) == (method == "ctkd")
    if method == "ctkd":
        assert 1 < float(history[0]["temperature"]) < 21 and float(history[0]["temperature"]) != 15.621172
    assert -1 <= float(history[0]["tau_nt"]) <= 1
    assert metrics["teacher_arch"] == "resnet14" and metrics["method"] == method
    _, meta = load_model(tmp_path / "model.pt")
    assert meta["teacher"] == str(teacher) and meta["params"] == metrics["params"]
    assert metrics["teacher_bank"] is False


def test_ctkd_temperature_is_trained_by_the_students_sgd_with_weight_decay(data_root, teacher, tmp_path):
    """CTKD's train_student.py puts Global_T into the student's one SGD: theta gets the student's lr,
    momentum and weight decay, so the first step from theta = 1 is theta - lr * (grad + wd * theta)."""
    session = _setup(config(data_root, tmp_path, method="ctkd", teacher=teacher, lr=0.1, weight_decay=0.5))
    theta = session.temperature.theta
    (group,) = session.optimizer.param_groups
    assert any(parameter is theta for parameter in group["params"]) and group["weight_decay"] == 0.5
    before = theta.detach().clone()
    session.step(next(iter(session.batches)), torch.tensor(12.0))
    assert float(theta.grad) != 0
    torch.testing.assert_close(theta.detach(), before - 0.1 * (theta.grad + 0.5 * before), rtol=0, atol=1e-7)


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rckd", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_to_the_same_weights(data_root, teacher, tmp_path):
    args = ["--arch", "resnet8", "--dataset", "synthetic", "--data-root", str(data_root), *OPTION_ARGS,
            "--method", "rckd", "--teacher", str(teacher), "--epochs", "6", "--milestones", "3",
            "--device", "cpu", "--threads", "1", "--checkpoint-every", "1"]
    whole = run_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    killed_dir = tmp_path / "killed"
    killed = run_cli(*args, "--out", str(killed_dir))
    deadline = time.monotonic() + 600
    while not (killed_dir / "resume.pt").exists() or load_torch(killed_dir / "resume.pt")["epoch"] < 2:
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (killed_dir / "model.pt").exists()

    resumed = run_cli(*args, "--out", str(killed_dir))
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming" in output
    expected = load_torch(tmp_path / "whole" / "model.pt")["state_dict"]
    actual = load_torch(killed_dir / "model.pt")["state_dict"]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert read_history(killed_dir) == [
        {**row, "seconds": resumed_row["seconds"]}
        for row, resumed_row in zip(read_history(tmp_path / "whole"), read_history(killed_dir))
    ]


def test_resume_refuses_a_checkpoint_of_another_run(data_root, tmp_path):
    """resume.pt holds its run's spec digest: a run of another spec (here: more epochs) refuses it and
    names what differs; a file without one is refused too."""
    train(config(data_root, tmp_path, epochs=2))
    state, spec = load_torch(tmp_path / "model.pt"), json.loads((tmp_path / "spec.json").read_text())
    identity = {"spec_hash": digest(spec), "precision": "fp32", "compile": "none", "teacher_bank": False}
    torch.save({**state, "identity": identity, "spec": spec}, tmp_path / "resume.pt")  # as an unfinished run's
    with pytest.raises(RckdError, match=r"different run \(its spec differs in \['epochs'\]\)"):
        train(config(data_root, tmp_path, epochs=3))
    torch.save(state, tmp_path / "resume.pt")
    with pytest.raises(RckdError, match="not a resume checkpoint"):
        train(config(data_root, tmp_path, epochs=3))


def test_a_runs_spec_json_reruns_it_to_the_same_weights(data_root, tmp_path):
    """spec.json is the whole run: `rckd train --spec` of it elsewhere gives bitwise the same weights,
    and command-line options override its keys."""
    first = train(config(data_root, tmp_path / "first", method="ce", lr=0.1))
    spec = tmp_path / "first" / "spec.json"
    assert json.loads(spec.read_text()) == first["spec"] and first["spec"]["lr"] == 0.1
    assert cli(["train", "--spec", str(spec), "--data-root", str(data_root), "--device", "cpu",
                "--out", str(tmp_path / "again")]) == 0
    expected = load_torch(tmp_path / "first" / "model.pt")["state_dict"]
    again = load_torch(tmp_path / "again" / "model.pt")["state_dict"]
    assert all(torch.equal(expected[name], again[name]) for name in expected)
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["spec_hash"] == first["spec_hash"]
    assert cli(["train", "--spec", str(spec), "--epochs", "1", "--milestones", "--data-root", str(data_root),
                "--device", "cpu", "--out", str(tmp_path / "shorter")]) == 0
    shorter = json.loads((tmp_path / "shorter" / "spec.json").read_text())
    assert shorter == {**first["spec"], "epochs": 1, "milestones": []}


def test_corrupt_teacher_checkpoint_is_a_clear_error(data_root, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x04not a checkpoint at all")
    status = cli(["train", "--arch", "resnet8", "--dataset", "synthetic", "--data-root", str(data_root),
                  *OPTION_ARGS, "--method", "kd", "--teacher", str(broken), "--epochs", "1", "--device", "cpu",
                  "--out", str(tmp_path / "run")])
    assert status == 2
    message = capsys.readouterr().err
    assert "corrupt" in message and str(broken) in message and "Traceback" not in message


def test_truncated_teacher_checkpoint_is_a_clear_error(data_root, teacher, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(teacher.read_bytes()[:5000])
    with pytest.raises(RckdError, match="corrupt"):
        train(config(data_root, tmp_path / "run", method="kd", teacher=truncated))


def test_missing_teacher_is_a_clear_error(data_root, tmp_path):
    with pytest.raises(RckdError, match="not found"):
        train(config(data_root, tmp_path, method="kd", teacher=tmp_path / "nope" / "model.pt"))
    with pytest.raises(RckdError, match="--teacher"):
        train(config(data_root, tmp_path, method="rckd"))


def test_teacher_of_another_data_set_is_refused(data_root, teacher, tmp_path):
    other = {**OPTIONS, "classes_per_superclass": 2}
    other_root = tmp_path / "other"
    data.prepare_cache("synthetic", other_root, **other)
    with pytest.raises(RckdError, match="does not fit this data set.*num_classes"):
        train(config(other_root, tmp_path / "run", data_options=other, method="kd", teacher=teacher))


def test_non_finite_loss_names_the_epoch_and_term(data_root, tmp_path):
    with pytest.raises(RckdError, match=r"non-finite loss in epoch 1: term\(s\) ce"):
        train(config(data_root, tmp_path, lr=1e30, milestones=()))
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("change, message", [
    ({"arch": "resnet999"}, "unknown arch"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"lr": "0.1"}, "lr must be a number"),
    ({"milestones": (5, 3)}, "milestones must be increasing"),
    ({"precision": "fp8"}, "precision must be"),
    ({"method": "fitnet"}, "fitnet"),
])
def test_bad_settings_fail_before_training(data_root, tmp_path, change, message):
    with pytest.raises(RckdError, match=message):
        train(config(data_root, tmp_path, **change))
    assert not (tmp_path / "history.csv").exists()


def test_bf16_on_cpu_autocasts_and_still_learns(data_root, tmp_path):
    metrics = train(config(data_root, tmp_path, precision="bf16", epochs=3, milestones=(2,)))
    assert metrics["precision"] == "bf16"
    assert metrics["best_top1"] > 2 * 100 / 20
    assert metrics["spec"]["precision"] == "bf16" and metrics["spec_hash"] == digest(metrics["spec"])


def test_cuda_graph_compile_is_refused_on_cpu(data_root, tmp_path):
    with pytest.raises(RckdError, match="needs CUDA"):
        train(config(data_root, tmp_path, compile="reduce-overhead"))


def test_predict_logits_keeps_order_and_is_float32(data_root):
    split = data.load("synthetic", data_root, "test", **OPTIONS)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 20)).eval()
    from rckd.inference import predict_logits

    whole = predict_logits(model, split.images, split.mean, split.std, batch_size=len(split.images))
    chunked = predict_logits(model, split.images, split.mean, split.std, batch_size=7)
    assert whole.dtype == torch.float32 and whole.shape == (len(split.images), 20)
    torch.testing.assert_close(chunked, whole)


def test_the_compiled_step_has_no_graph_breaks_and_tracks_eager(data_root, teacher, tmp_path):
    """--compile default: inductor's CPU code for the student forward + loss as one fullgraph=True graph
    (a graph break would raise), its AOTAutograd backward, and the teacher; a few steps track eager."""
    torch._dynamo.reset()
    common = dict(method="kd", teacher=teacher, epochs=1, batch_size=160)  # 5 steps of one shape
    compiled = train(config(data_root, tmp_path / "compiled", compile="default", **common))
    eager = train(config(data_root, tmp_path / "eager", **common))
    assert compiled["compile"] == "default" and eager["compile"] == "none"
    (row_compiled,), (row_eager,) = read_history(tmp_path / "compiled"), read_history(tmp_path / "eager")
    for key in ("loss_ce", "loss_kd", "train_top1"):
        assert float(row_compiled[key]) == pytest.approx(float(row_eager[key]), rel=1e-3, abs=1e-3), key


def test_sigterm_mid_epoch_writes_resume_and_the_rerun_ends_with_the_same_weights(data_root, teacher, tmp_path):
    """A CTKD run: its learned temperature (and its momentum) is part of what resumes bit for bit."""
    args = ["--arch", "resnet8", "--dataset", "synthetic", "--data-root", str(data_root), *OPTION_ARGS,
            "--method", "ctkd", "--param", "curriculum=2", "--teacher", str(teacher), "--epochs", "3", "--milestones", "2", "--batch-size", "8",
            "--device", "cpu", "--threads", "1", "--checkpoint-every", "5"]
    whole = run_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    stopped_dir = tmp_path / "stopped"
    stopped = run_cli(*args, "--out", str(stopped_dir))
    lines = []
    for line in stopped.stdout:  # wait for the first epoch's line: the second epoch is under way
        lines.append(line)
        if line.startswith("epoch=1 "):
            time.sleep(0.3)
            stopped.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + stopped.stdout.read()
    assert stopped.wait(timeout=120) == 143, output
    assert "stopped by SIGTERM in epoch 2" in output and "rerun the same command" in output
    state = load_torch(stopped_dir / "resume.pt")
    assert state["epoch"] == 1 and 0 < state["batches"]["position"] < 100 and state["partial"] is not None
    assert state["temperature"]["theta"].shape == ()
    assert not (stopped_dir / "model.pt").exists()

    resumed = run_cli(*args, "--out", str(stopped_dir))
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert f"resuming {stopped_dir} at step {state['batches']['position'] + 1} of epoch 2/3" in output
    expected = load_torch(tmp_path / "whole" / "model.pt")["state_dict"]
    actual = load_torch(stopped_dir / "model.pt")["state_dict"]
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    history = read_history(stopped_dir)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in history] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in read_history(tmp_path / "whole")]
    assert len({row["temperature"] for row in history}) == 3  # it moved in every epoch, and resumed exactly


def test_soft_targets_stay_fp32_when_the_student_runs_in_bf16(data_root, teacher):
    """The live teacher runs outside the student's autocast: its logits (the ranks RCKD matches) are the
    fp32 ones, not bf16-rounded, while the student computes in bf16."""
    from rckd.data.augment import TrainBatch
    from rckd.train import _live_teacher, _make_step

    teacher_model, _ = load_model(teacher)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 20))
    seen = {}

    class Spy:
        def __call__(self, logits_s, logits_t, target, epoch):
            seen.update(student=logits_s.dtype, teacher=logits_t)
            return {"ce": torch.nn.functional.cross_entropy(logits_s.float(), target)}

    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    step = _make_step(student, Spy(), _live_teacher(teacher_model, "none"), optimizer, torch.device("cpu"),
                      "bf16", "none")
    x = torch.randn(8, 3, 16, 16)
    step(TrainBatch(x, torch.arange(8), torch.arange(8), torch.zeros(8, dtype=torch.long)), torch.tensor(1.0))
    with torch.no_grad():
        expected = teacher_model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = teacher_model(x).float()
    assert seen["student"] == torch.bfloat16 and seen["teacher"].dtype == torch.float32
    assert torch.equal(seen["teacher"], expected) and not torch.equal(expected, rounded)
