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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, snakemake_command

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
# `make test-cluster` runs these (and `make test` leaves them out) by the cluster marker.
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.skipif(os.geteuid() != 0 or not Path("/etc/debian_version").exists(),
                                                    reason="starts a SLURM cluster: needs root on Debian (CI)")]

SLICE = """\
dataset: synthetic
data: {options: {num_superclasses: 2, classes_per_superclass: 3, train_per_class: 24, test_per_class: 8,
                 image_size: 16}}
train: {epochs: %(epochs)d, milestones: [%(milestone)d], teacher_epochs: 4, batch_size: %(batch)d, device: cpu, precision: fp32,
        compile: none, threads: 1, mem_mb: 1500, runtime: 10, checkpoint_every: 1, teacher_bank: "off"}
evaluate: {device: cpu}
export: {int8: false, methods: null}
experiments:
  main: {teachers: [resnet8], methods: [kd], pairs: [{teacher: resnet8, student: resnet8}]}
  capacity: {enabled: false}
  ablation: {enabled: false}
"""
QUICK = {"epochs": 3, "milestone": 2, "batch": 64}  # the slice: a few seconds per run
LONG = {"epochs": 30, "milestone": 20, "batch": 8}  # a student that trains long enough to be stopped mid-run
RUNS = ("resnet8/none/ce/epochs=4/seed0", "resnet8/none/ce/default/seed0", "resnet8/resnet8/kd/default/seed0")
TARGETS = ["results/synthetic/main/table.csv",
           *(f"results/synthetic/deploy/{run}/export.json" for run in RUNS[1:])]


def start(workdir: Path, size: dict, *args: str, extra: str = "") -> subprocess.Popen:
    """Snakemake in `workdir` on the slice config of `size` (plus `extra` YAML), with this venv's python
    on PATH for the jobs. --configfile comes last: it takes every word after it."""
    (workdir / "slice.yaml").write_text(SLICE % size)
    (workdir / "extra.yaml").write_text(extra or "{}\n")
    command = snakemake_command(workdir, *args, "--configfile", str(ROOT / "config" / "quick.yaml"),
                                *(str(workdir / name) for name in ("slice.yaml", "extra.yaml")))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir)


def snakemake(workdir: Path, *args: str, size: dict = QUICK, extra: str = "", timeout: float = 420) -> tuple[int, str]:
    """Snakemake to its end; SIGINT at the timeout (it ignores SIGTERM while polling SLURM), and the
    test fails if it has not stopped 30 s later."""
    process = start(workdir, size, *args, extra=extra)
    return finish(process, timeout)


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
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


@pytest.fixture(scope="module")
def local_long_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("local_long")
    status, output = snakemake(workdir, f"results/synthetic/runs/{RUNS[2]}/model.pt", size=LONG)
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
    # The profile's CPU and memory requests are for real nodes; this one has 2 CPUs. (A --set-resources on the
    # command line replaces the profile's list, so train runtime and memory come from the slice config.)
    args = ["--workflow-profile", str(ROOT / "profiles" / "slurm"), "--jobs", "4",
            "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=10",
            "--set-resources", "train:cpus_per_task=1", "train:mem_mb=1500", "teacher_bank:cpus_per_task=1",
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


def test_a_data_parallel_gpu_training_job_asks_slurm_for_its_gpus_on_one_node(cluster, tmp_path):
    """With train.device cuda and 2 processes the train rule requests gpu=2 on one node; this node has
    no GPU, so sbatch refuses ("Invalid generic resource"), and the plugin's log shows the request as
    SLURM expects it."""
    status, output = snakemake(tmp_path, f"results/synthetic/runs/{RUNS[0]}/model.pt", *slurm_args(cluster),
                               "--verbose", "--retries", "0", extra="train: {device: cuda, processes: 2}\n",
                               timeout=240)
    assert status != 0
    calls = [line for line in output.splitlines() if "sbatch call:" in line]
    assert calls, output[-3000:]
    train_call = next(call for call in calls if "rule_train" in call)
    for request in ("--gpus=2", "--nodes=1", "--cpus-per-task=1", "--mem 1500", "-t 10",  # runtime: train.runtime
                    "-p debug"):
        assert request in train_call, (request, train_call)


def test_a_preempted_training_job_is_resubmitted_and_ends_with_the_same_weights(cluster, local_long_run, tmp_path):
    """scancel --signal=TERM mid-run: the trainer writes resume.pt and exits 143, Snakemake resubmits
    (the profile's retries), the new job resumes, and the weights equal the local run's bit for bit."""
    student = tmp_path / "results/synthetic/runs" / RUNS[2]
    process = start(tmp_path, LONG, f"results/synthetic/runs/{RUNS[2]}/model.pt", *slurm_args(cluster))
    deadline = time.monotonic() + 300
    while not (student / "resume.pt").exists():  # the student's first epoch is done: stop it now
        if process.poll() is not None or time.monotonic() > deadline:
            finish(process, 30)
            pytest.fail("the student ended or never wrote its first checkpoint")
        time.sleep(0.2)
    running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert len(running) == 1, running  # the student's job: its teacher has finished
    subprocess.run(["scancel", "--signal=TERM", running[0]], check=True)
    status, output = finish(process, 420)
    assert status == 0, output[-6000:]
    log = (tmp_path / "logs/synthetic/train" / f"{RUNS[2]}.log").read_text()
    assert "resuming" in log and " at step " in log, log[-2000:]  # the resubmitted job continued mid-epoch
    assert same_weights(student / "model.pt", local_long_run / "results/synthetic/runs" / RUNS[2] / "model.pt")
