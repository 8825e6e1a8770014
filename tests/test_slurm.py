"""The workflow on a real one-node SLURM cluster (tests/slurm/cluster.sh), with and without accounting.

A reduced but complete slice of the DAG (prepare, a teacher, a vanilla and a distilled student,
evaluation, summary, table, ONNX export) runs through `--executor slurm` with profiles/slurm and must
give the same outputs as a local run; a training job stopped by `scancel --signal=TERM` is resubmitted
and ends with the same weights. Needs root on Debian (CI is) to install and start the daemons; every
Snakemake call runs under a timeout that sends SIGINT, so a hang fails the test instead of CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0 or not Path("/etc/debian_version").exists(),
                                                    reason="starts a SLURM cluster: needs root on Debian (CI)")]

SLICE = """\
dataset: synthetic
data: {options: {num_superclasses: 2, classes_per_superclass: 3, train_per_class: 24, test_per_class: 8,
                 image_size: 16}}
train: {epochs: 3, milestones: [2], teacher_epochs: 4, device: cpu, precision: fp32, compile: none,
        threads: 1, mem_mb: 1500, runtime: 10, checkpoint_every: 1, teacher_bank: "off"}
evaluate: {device: cpu}
export: {int8: false}
experiments:
  main: {teachers: [resnet8], methods: [kd], pairs: [{teacher: resnet8, student: resnet8}]}
  capacity: {enabled: false}
  ablation: {enabled: false}
"""
RUNS = ("resnet8/none/ce/epochs=4/seed0", "resnet8/none/ce/default/seed0", "resnet8/resnet8/kd/default/seed0")
TARGETS = ["results/synthetic/main/table.csv",
           *(f"results/synthetic/deploy/{run}/export.json" for run in RUNS[1:])]


def snakemake(workdir: Path, *args: str, timeout: float = 420) -> tuple[int, str]:
    """Snakemake in `workdir` with the slice config; SIGINT at the timeout (it ignores SIGTERM while
    polling SLURM), and the test fails if it has not stopped 30 s later."""
    (workdir / "slice.yaml").write_text(SLICE)
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2",
               "--configfile", str(ROOT / "config" / "quick.yaml"), str(workdir / "slice.yaml"), *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=workdir)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"snakemake hung for {timeout}s:\n{output[-4000:]}")
    return process.returncode, output


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("local")
    status, output = snakemake(workdir, *TARGETS)
    assert status == 0, output[-4000:]
    return workdir


@pytest.fixture(scope="module", params=["without accounting", "with accounting"])
def cluster(request):
    accounting = ["--accounting"] if request.param == "with accounting" else []
    started = subprocess.run(["bash", str(CLUSTER), "start", *accounting], capture_output=True, text=True,
                             timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    yield request.param
    stopped = subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def slurm_args(kind: str) -> list[str]:
    args = ["--workflow-profile", str(ROOT / "profiles" / "slurm"), "--jobs", "4",
            "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=10",
            "--slurm-init-seconds-before-status-checks", "1"]
    return args + (["--slurm-no-account"] if kind == "without accounting" else ["--slurm-status-command", "sacct"])


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    left, right = state_dict(a), state_dict(b)
    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


def test_the_slice_runs_on_slurm_and_equals_the_local_run(cluster, local_run, tmp_path):
    status, output = snakemake(tmp_path, *TARGETS, *slurm_args(cluster), "--verbose")
    assert status == 0, output[-6000:]
    for run in RUNS:
        assert same_weights(tmp_path / "results/synthetic/runs" / run / "model.pt",
                            local_run / "results/synthetic/runs" / run / "model.pt"), run
        ours = json.loads((tmp_path / "results/synthetic/runs" / run / "eval.json").read_text())
        theirs = json.loads((local_run / "results/synthetic/runs" / run / "eval.json").read_text())
        assert ours["top1"] == theirs["top1"] and ours["nll"] == pytest.approx(theirs["nll"], rel=1e-6)
    table = "results/synthetic/main/table.csv"
    assert (tmp_path / table).read_text() == (local_run / table).read_text()
    # Training went to SLURM as CPU jobs; the tables were made on the submitting host (localrules).
    sbatch_calls = [line for line in output.splitlines() if "sbatch call:" in line]
    assert any("rule_train" in call or "train" in call for call in sbatch_calls), output[-3000:]
    assert all("--gpus" not in call for call in sbatch_calls)
    assert not any("rule_table" in call or "_table_" in call for call in sbatch_calls)


def test_a_gpu_training_job_asks_slurm_for_one_gpu(cluster, tmp_path):
    """With train.device cuda the train rule requests gpu=1; this node has none, so sbatch refuses,
    and the plugin's verbose log shows the request as SLURM expects it."""
    (tmp_path / "gpu.yaml").write_text("train: {device: cuda}\n")
    status, output = snakemake(tmp_path, "results/synthetic/runs/resnet8/none/ce/epochs=4/seed0/model.pt",
                               "--configfile", str(ROOT / "config" / "quick.yaml"), str(tmp_path / "slice.yaml"),
                               str(tmp_path / "gpu.yaml"), *slurm_args(cluster), "--verbose", "--retries", "0",
                               timeout=240)
    assert status != 0
    calls = [line for line in output.splitlines() if "sbatch call:" in line]
    assert calls, output[-3000:]
    train_call = next(call for call in calls if "train" in call)
    assert "--gpus=1" in train_call or "--gres=gpu:1" in train_call, train_call
    assert "--mem 16000" in train_call or "--mem=16000" in train_call, train_call
    assert "-t 720" in train_call or "--time=720" in train_call or "-t 10" in train_call, train_call


def test_a_preempted_training_job_is_resubmitted_and_ends_with_the_same_weights(cluster, local_run, tmp_path):
    """scancel --signal=TERM mid-run: the trainer writes resume.pt and exits 143, Snakemake resubmits
    (retries), the new job resumes, and the weights equal the local run's bit for bit."""
    student = tmp_path / "results/synthetic/runs" / RUNS[2]
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores",
               "2", "--configfile", str(ROOT / "config" / "quick.yaml"), str(tmp_path / "slice.yaml"),
               f"{student}/model.pt", *slurm_args(cluster)]
    (tmp_path / "slice.yaml").write_text(SLICE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not (student / "resume.pt").exists():  # the student's first epoch is done: stop it now
            assert process.poll() is None, process.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "the student never wrote its first checkpoint"
            time.sleep(0.2)
        jobs = subprocess.run(["squeue", "-h", "-o", "%i %j", "-t", "R"], capture_output=True, text=True).stdout
        running = [line.split()[0] for line in jobs.splitlines()]
        assert running, "no running SLURM job to preempt"
        for job in running:
            subprocess.run(["scancel", "--signal=TERM", job], check=True)
        output, _ = process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"snakemake hung:\n{output[-4000:]}")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-6000:]
    log = (tmp_path / "logs/synthetic/train" / f"{RUNS[2]}.log").read_text()
    assert "resuming" in log, log[-2000:]
    assert same_weights(student / "model.pt", local_run / "results/synthetic/runs" / RUNS[2] / "model.pt")
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
