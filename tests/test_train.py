"""The trainer on CPU: it learns, distils with every method, resumes bit for bit, and fails clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SYNTHETIC, SYNTHETIC_CLASSES, option_args, read_history, run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rckd import curves, data
from rckd.checkpoint import load_model, load_torch
from rckd.cli import main as cli
from rckd.errors import RckdError
from rckd.spec import digest
from rckd.train import TrainConfig, _setup, lr_at, train

OPTION_ARGS = option_args(SYNTHETIC)


@pytest.fixture
def data_root(synthetic_root) -> Path:
    return synthetic_root


@pytest.fixture
def teacher(trained_teacher) -> Path:
    return trained_teacher


config = run_config


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
    chance = 100 / SYNTHETIC_CLASSES
    assert metrics["best_top1"] > 4 * chance, metrics
    assert metrics["final_top1"] == float(history[-1]["test_top1"])
    assert metrics["best_top1"] == max(float(row["test_top1"]) for row in history)
    assert [int(row["epoch"]) for row in history] == list(range(1, 7))
    assert [float(row["lr"]) for row in history] == pytest.approx([0.05] * 5 + [0.005])
    assert meta.arch == "resnet14" and meta.num_classes == 20 and meta.input_size == [3, 16, 16]
    assert meta.method == "ce" and meta.teacher is None and len(meta.classes) == 20
    assert metrics["num_params"] == sum(p.numel() for p in model.parameters())
    assert not (run / "resume.pt").exists()  # a finished run drops its resume checkpoint


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "wttm", "nkd", "ctkd", "rckd", "mlkd"])
def test_distillation_runs_for_every_method(data_root, teacher, tmp_path, method):
    metrics = train(config(data_root, tmp_path, method=method, teacher=teacher, epochs=1))
    history = read_history(tmp_path)
    terms = {"kd": {"ce", "kd"}, "dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"},
             "wttm": {"ce", "wttm"}, "nkd": {"ce", "target", "non_target"}, "ctkd": {"ce", "kd"},
             "rckd": {"ce", "rc"}, "mlkd": {"ce", "kd", "cc", "bc"}}[method]
    assert {key[5:] for key in history[0] if key.startswith("loss_")} == terms
    # CTKD's learned temperature: logged per epoch, moved from its start 1 + 20 sigmoid(1) = 15.62.
    assert ("temperature" in history[0]) == (method == "ctkd")
    if method == "ctkd":
        assert 1 < float(history[0]["temperature"]) < 21 and float(history[0]["temperature"]) != 15.621172
    assert -1 <= float(history[0]["tau_nt"]) <= 1
    assert metrics.teacher_arch == "resnet14" and metrics.method == method
    _, meta = load_model(tmp_path / "model.pt")
    assert meta.teacher == str(teacher) and meta.params == metrics.params
    assert metrics.teacher_bank is False


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


def read_curves(run: Path) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """({tag: [(step, value)]} of every scalar, the spec text) as TensorBoard's own reader shows the run
    directory's event files (restart markers applied)."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    scalars = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    [text] = events.Tensors("spec/text_summary")
    return scalars, text.tensor_proto.string_val[0].decode()


def assert_curves_equal_history(run: Path) -> None:
    """Every numeric history.csv value of every epoch is the TensorBoard scalar at step = epoch (stored
    as float32, as TensorBoard stores scalars), and nothing else is; the spec text is spec.json."""
    history = read_history(run)
    numeric = [column for column in history[0] if column != "epoch" and history[0][column] != ""]
    expected = {(f"loss/{column[5:]}" if column.startswith("loss_") else column):
                [(int(row["epoch"]), float(np.float32(row[column]))) for row in history] for column in numeric}
    scalars, spec_text = read_curves(run)
    assert scalars == expected
    assert json.loads(textwrap.dedent(spec_text)) == json.loads((run / "spec.json").read_text())


def test_the_curves_in_tensorboard_equal_the_history(data_root, tmp_path):
    train(config(data_root, tmp_path, epochs=3, milestones=(2,)))  # the shared fixtures write no curves
    assert_curves_equal_history(tmp_path)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_tensorboard_off_writes_no_event_files_and_a_fresh_start_drops_stale_ones(data_root, tmp_path):
    (tmp_path / "events.out.tfevents.1.stale").write_bytes(b"")
    args = ["train", "--arch", "resnet8", "--dataset", "synthetic", "--data-root", str(data_root), *OPTION_ARGS,
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert cli([*args, "--tensorboard", "off"]) == 0
    assert (tmp_path / "model.pt").exists() and not list(tmp_path.glob("events.out.tfevents.*"))
    with pytest.raises(SystemExit):
        cli([*args, "--tensorboard", "no"])


def test_without_the_tensorboard_package_the_run_stops_before_training_and_names_the_switch(data_root, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(curves.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RckdError, match="--tensorboard off"):
        train(config(data_root, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow(15)
def test_a_killed_run_resumes_to_the_same_weights_and_curves(data_root, teacher, tmp_path):
    """Killed after epoch 3 with resume.pt at epoch 2: the rerun repeats epoch 3 and ends with the
    whole run's weights, and TensorBoard shows each epoch once, from the rerun's history."""
    args = ["--arch", "resnet8", "--dataset", "synthetic", "--data-root", str(data_root), *OPTION_ARGS,
            "--method", "rckd", "--teacher", str(teacher), "--epochs", "4", "--milestones", "3",
            "--device", "cpu", "--threads", "1", "--checkpoint-every", "2"]
    assert cli(["train", *args, "--out", str(tmp_path / "whole")]) == 0  # in this process: the same command
    assert_curves_equal_history(tmp_path / "whole")

    killed_dir = tmp_path / "killed"
    killed = run_cli(*args, "--out", str(killed_dir))
    for line in killed.stdout:  # epoch 3's curves are in its event file once its line is printed
        if line.startswith("epoch=3 "):
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert load_torch(killed_dir / "resume.pt")["epoch"] == 2 and not (killed_dir / "model.pt").exists()
    orphaned, _ = read_curves(killed_dir)
    assert [step for step, _ in orphaned["test_top1"]] == [1, 2, 3]

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
    assert_curves_equal_history(killed_dir)
    assert len(list(killed_dir.glob("events.out.tfevents.*"))) == 2


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
    assert json.loads(spec.read_text()) == first.spec and first.spec["lr"] == 0.1
    assert cli(["train", "--spec", str(spec), "--data-root", str(data_root), "--device", "cpu",
                "--out", str(tmp_path / "again")]) == 0
    expected = load_torch(tmp_path / "first" / "model.pt")["state_dict"]
    again = load_torch(tmp_path / "again" / "model.pt")["state_dict"]
    assert all(torch.equal(expected[name], again[name]) for name in expected)
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["spec_hash"] == first.spec_hash
    assert cli(["train", "--spec", str(spec), "--epochs", "1", "--milestones", "--data-root", str(data_root),
                "--device", "cpu", "--out", str(tmp_path / "shorter")]) == 0
    shorter = json.loads((tmp_path / "shorter" / "spec.json").read_text())
    assert shorter == {**first.spec, "epochs": 1, "milestones": []}


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
    other = {**SYNTHETIC, "classes_per_superclass": 2}
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
    ({"method": "mlkd", "teacher": Path("t.pt"), "teacher_bank": Path("bank.pt")},
     r"mlkd runs its teacher on a strong view .* drop --teacher-bank"),
])
def test_bad_settings_fail_before_training(data_root, tmp_path, change, message):
    with pytest.raises(RckdError, match=message):
        train(config(data_root, tmp_path, **change))
    assert not (tmp_path / "history.csv").exists()


def test_bf16_on_cpu_autocasts_and_still_learns(data_root, tmp_path):
    metrics = train(config(data_root, tmp_path, precision="bf16", epochs=3, milestones=(2,)))
    assert metrics.precision == "bf16"
    assert metrics.best_top1 > 2 * 100 / SYNTHETIC_CLASSES
    assert metrics.spec["precision"] == "bf16" and metrics.spec_hash == digest(metrics.spec)


def test_cuda_graph_compile_is_refused_on_cpu(data_root, tmp_path):
    with pytest.raises(RckdError, match="needs CUDA"):
        train(config(data_root, tmp_path, compile="reduce-overhead"))


def test_predict_logits_keeps_order_and_is_float32(data_root):
    split = data.load("synthetic", data_root, "test", **SYNTHETIC)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 20)).eval()
    from rckd.inference import predict_logits

    whole = predict_logits(model, split.images, split.mean, split.std, batch_size=len(split.images))
    chunked = predict_logits(model, split.images, split.mean, split.std, batch_size=7)
    assert whole.dtype == torch.float32 and whole.shape == (len(split.images), 20)
    torch.testing.assert_close(chunked, whole)


@pytest.mark.slow(25)
def test_the_compiled_step_has_no_graph_breaks_and_tracks_eager(data_root, teacher, tmp_path, monkeypatch):
    """--compile default: inductor's CPU code for the student forward + loss as one fullgraph=True graph
    (a graph break would raise), its AOTAutograd backward, and the teacher; a few steps track eager."""
    # Scalar C++ kernels: the same graphs to capture and check, compiled in a third less time from a
    # cold cache (where CI starts) than with their SIMD variants; CUDA's: tests/test_cuda.py.
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor.cpp, "vec_isa_ok", False)
    torch._dynamo.reset()
    common = dict(method="kd", teacher=teacher, epochs=1, batch_size=160)  # 5 steps of one shape
    compiled = train(config(data_root, tmp_path / "compiled", compile="default", **common))
    eager = train(config(data_root, tmp_path / "eager", **common))
    assert compiled.compile == "default" and eager.compile == "none"
    (row_compiled,), (row_eager,) = read_history(tmp_path / "compiled"), read_history(tmp_path / "eager")
    for key in ("loss_ce", "loss_kd", "train_top1"):
        assert float(row_compiled[key]) == pytest.approx(float(row_eager[key]), rel=1e-3, abs=1e-3), key


@pytest.mark.slow(15)
def test_sigterm_mid_epoch_writes_resume_and_the_rerun_ends_with_the_same_weights(data_root, teacher, tmp_path):
    """A CTKD run: its learned temperature (and its momentum) is part of what resumes bit for bit."""
    args = ["--arch", "resnet8", "--dataset", "synthetic", "--data-root", str(data_root), *OPTION_ARGS,
            "--method", "ctkd", "--param", "curriculum=2", "--teacher", str(teacher), "--epochs", "3", "--milestones", "2", "--batch-size", "8",
            "--device", "cpu", "--threads", "1", "--checkpoint-every", "5"]
    assert cli(["train", *args, "--out", str(tmp_path / "whole")]) == 0  # in this process: the same command

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
    assert_curves_equal_history(stopped_dir)


@pytest.mark.slow(5)
def test_an_mlkd_run_stopped_mid_epoch_resumes_to_the_same_weights(data_root, teacher, tmp_path, monkeypatch):
    """The strong views' draws live in the batch source's generator: a run stopped after step 3 of epoch 2
    and resumed from resume.pt ends with the weights and history of one run straight through."""
    from rckd import train as trainer

    common = dict(method="mlkd", teacher=teacher, epochs=2, milestones=(1,), batch_size=32)
    train(config(data_root, tmp_path / "whole", **common))
    stopped_dir = tmp_path / "stopped"
    stops = []

    def stop_once(session, stop, position):
        stops.append(position)
        return len(stops) == 24 + 3  # asked after each of the 25 steps of an epoch but its last: step 3 of epoch 2

    monkeypatch.setattr(trainer, "_stopping", stop_once)
    with pytest.raises(trainer.Preempted, match="in epoch 2"):
        train(config(data_root, stopped_dir, **common))
    state = load_torch(stopped_dir / "resume.pt")
    assert state["epoch"] == 1 and state["batches"]["position"] == 3 and state["partial"] is not None
    train(config(data_root, stopped_dir, **common))
    expected = load_torch(tmp_path / "whole" / "model.pt")["state_dict"]
    actual = load_torch(stopped_dir / "model.pt")["state_dict"]
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in read_history(stopped_dir)] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in read_history(tmp_path / "whole")]


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
