"""Training speed of rckd's trainer against the classic CIFAR distillation loop, and of concurrent runs.

    python benchmarks/train_speed.py [--device auto|cpu|cuda] [--part all|steps|concurrency] [--steps N] [--smoke]
                                     [--out results.json]

In one process, on the same device and the same synthetic CIFAR-shaped data (32x32 RGB, 100
classes), resnet32x4 -> resnet8x4, batch 64, and each of the losses kd and rckd:

(a) classic: the loop of the usual CIFAR KD code bases: a Dataset of PIL images with torchvision
    transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), a
    DataLoader with 2 worker processes, fp32 eager, cudnn.benchmark on, the teacher under no_grad,
    and `loss.item()` plus a top-1 accuracy read back to the host every step;
(b) trainer: `rckd.train.train` itself (on CUDA: bf16, channels_last, CUDA graphs), its ms/step
    taken from history.csv: the median epoch time of every epoch but the first (compilation and
    warm-up) over the steps per epoch. The test split is 100 images, so the per-epoch evaluation
    adds at most about one step's time to an epoch. Three trainer rows: the vanilla student (ce,
    no teacher: the floor), the live teacher, and the teacher logit bank (`rckd.bank`; the lookup
    costs the same whatever the teacher, so on the CPU the bank is one of a resnet8 teacher, built
    in seconds, and the ratio bank / vanilla is the number of interest).

Then 1, 2 and 4 trainer runs (`rckd`, each its own process, all on the one device) are started
together; their epoch lines are timestamped as they are printed, and the aggregate throughput is
the steps all runs complete in the window where every run is past its first epoch and none has
finished.

On the CPU (or with --smoke) a smoke version runs: 400 images, fewer steps, 1 and 2 concurrent
runs, 1 torch thread per process. Times are wall-clock. Prints markdown tables; --out also writes
them as JSON, rewritten after every row, so a run cut short keeps the rows it finished. `--part steps`
and `--part concurrency` run one half each (the GPU check runs them as two parts, in order of value).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from rckd import __version__, bank, data, losses, models
from rckd.checkpoint import load_model, save_model
from rckd.io import write_json
from rckd.records import ModelMeta
from rckd.train import TrainConfig, train

BATCH_SIZE = 64
METHODS = ("kd", "rckd")
CONCURRENCY_METHOD = "rckd"
EPOCH_LINE = re.compile(r"^epoch=(\d+) ")  # the per-epoch line rckd.train prints


@dataclass(frozen=True)
class Setup:
    """What one benchmark run trains; `train_per_class` x 100 classes images per epoch."""

    name: str
    teacher_arch: str
    student_arch: str
    train_per_class: int
    steps: int  # timed steps of the classic loop; the trainer times at least this many
    warmup_steps: int  # untimed steps of the classic loop (the first spawns its DataLoader workers)
    concurrency: tuple[int, ...]
    concurrency_seconds: float  # timed training wanted per concurrent run, so that their windows overlap
    assumed_ms: float  # the trainer's ms/step that sizes the concurrent runs when none was measured

    @property
    def steps_per_epoch(self) -> int:
        return 100 * self.train_per_class // BATCH_SIZE  # the trainer drops a short last batch

    @property
    def data_options(self) -> dict[str, int]:
        return {"train_per_class": self.train_per_class, "test_per_class": 1}


# 12800 images: 200 full batches per epoch, so the per-epoch evaluation of the 100 test images is
# under 1% of an epoch.
GPU = Setup("gpu", "resnet32x4", "resnet8x4", 128, 600, 20, (1, 2, 4), 20.0, 10.0)
# 400 images: 6 batches per epoch of about a second each on one CPU thread.
SMOKE = Setup("cpu smoke", "resnet32x4", "resnet8x4", 4, 12, 2, (1, 2), 8.0, 2500.0)
BANK_TEACHER_ON_CPU = "resnet8"  # a cheap teacher to bank on the CPU: lookups cost the same for any teacher


class PilImages(Dataset):
    """CIFAR as torchvision serves it: HWC uint8 arrays, a PIL image made per item, then transforms."""

    def __init__(self, split: data.Split) -> None:
        self.arrays = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = split.labels.tolist()
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(split.mean, split.std),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.arrays[index])), self.labels[index]


def save_fresh_teacher(path: Path, arch: str, split: data.Split, options: dict[str, Any]) -> None:
    """A randomly initialised teacher in a model.pt the trainer accepts (its speed is that of a trained one)."""
    torch.manual_seed(0)
    model = models.build(arch, num_classes=len(split.classes), in_channels=split.images.shape[1])
    meta = ModelMeta(
        arch=arch, num_classes=len(split.classes), in_channels=split.images.shape[1],
        input_size=list(split.images.shape[1:]), dataset="synthetic",
        data_options=data.options.resolve_options("synthetic", options), mean=list(split.mean),
        std=list(split.std), classes=list(split.classes), method="ce", params={}, teacher=None,
        teacher_arch=None, seed=0, epochs=0, final_top1=0.0, best_top1=0.0, best_epoch=0,
        rckd_version=__version__,
    )
    save_model(path, model.state_dict(), meta)


def classic_ms_per_step(setup: Setup, method: str, split: data.Split, teacher_path: Path,
                        device: torch.device) -> float:
    """Wall ms per step of the classic loop over `setup.steps` steps after `setup.warmup_steps`;
    epochs restart the (non-persistent) DataLoader workers as in the reference code."""
    torch.manual_seed(0)
    teacher, _ = load_model(teacher_path, device)
    student = models.build(setup.student_arch, num_classes=len(split.classes)).to(device).train()
    loss_fn = losses.build(method)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(PilImages(split), batch_size=BATCH_SIZE, shuffle=True, num_workers=2)
    benchmark_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        done, epoch, began = 0, 0, None
        while done < setup.warmup_steps + setup.steps:
            epoch += 1
            for images, labels in loader:
                if done == setup.warmup_steps:
                    began = time.perf_counter()
                images, labels = images.to(device), labels.to(device)
                logits_s = student(images)
                with torch.no_grad():
                    logits_t = teacher(images)
                loss = sum(loss_fn(logits_s, logits_t, labels, epoch).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()  # the per-step metric reads of AverageMeter-style logging
                (logits_s.argmax(1) == labels).float().mean().item()
                done += 1
                if done == setup.warmup_steps + setup.steps:
                    break
        return 1e3 * (time.perf_counter() - began) / setup.steps
    finally:
        torch.backends.cudnn.benchmark = benchmark_before


def trainer_config(setup: Setup, method: str, data_root: Path, teacher_path: Path | None, out: Path,
                   device: torch.device, epochs: int, teacher_bank: Path | None = None) -> TrainConfig:
    return TrainConfig(
        arch=setup.student_arch, dataset="synthetic", data_root=data_root, out=out, method=method,
        teacher=teacher_path, data_options=setup.data_options, epochs=epochs, batch_size=BATCH_SIZE,
        milestones=(), device=str(device), checkpoint_every=epochs, teacher_bank=teacher_bank, tensorboard=False,
    )


def timed_epochs(setup: Setup) -> int:
    return max(2, math.ceil(setup.steps / setup.steps_per_epoch))


def history_ms_per_step(history_csv: Path, steps_per_epoch: int) -> float:
    """Median epoch seconds after the first epoch, in ms per step."""
    with open(history_csv, newline="") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)][1:]
    return 1e3 * statistics.median(seconds) / steps_per_epoch


def run_worker(config_path: Path) -> int:
    """--worker mode: one trainer run from a JSON TrainConfig; its epoch lines go to stdout."""
    fields = json.loads(config_path.read_text())
    torch.set_num_threads(fields.pop("threads"))
    for key in ("data_root", "out", "teacher", "teacher_bank"):
        fields[key] = Path(fields[key]) if fields[key] is not None else None
    fields["milestones"] = tuple(fields["milestones"])
    train(TrainConfig(**fields))
    return 0


def start_workers(configs: list[TrainConfig], threads: int, workdir: Path) -> list[list[tuple[int, float]]]:
    """Run one worker process per config, all at once; per worker, (epoch, perf_counter time) at
    which each of its epoch lines arrived."""
    processes = []
    for index, config in enumerate(configs):
        fields = {**asdict(config), "threads": threads}
        fields.update({key: str(fields[key]) if fields[key] is not None else None
                       for key in ("data_root", "out", "teacher", "teacher_bank")})
        path = workdir / f"worker{index}.json"
        path.write_text(json.dumps(fields))
        processes.append(subprocess.Popen([sys.executable, __file__, "--worker", str(path)],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    timelines: list[list[tuple[int, float]]] = [[] for _ in processes]
    outputs: list[list[str]] = [[] for _ in processes]

    def follow(index: int) -> None:
        for line in processes[index].stdout:
            outputs[index].append(line)
            match = EPOCH_LINE.match(line)
            if match:
                timelines[index].append((int(match.group(1)), time.perf_counter()))

    readers = [threading.Thread(target=follow, args=(index,)) for index in range(len(processes))]
    for reader in readers:
        reader.start()
    for index, (process, reader) in enumerate(zip(processes, readers)):
        reader.join()
        if process.wait() != 0:
            raise RuntimeError(f"worker {index} failed:\n{''.join(outputs[index][-30:])}")
    return timelines


def aggregate_steps_per_second(timelines: list[list[tuple[int, float]]], steps_per_epoch: int) -> float:
    """Steps per second summed over runs, within the window where every run has finished its
    first epoch and none has finished its last; progress is interpolated linearly within an epoch."""
    window_start = max(times[0][1] for times in timelines)
    window_end = min(times[-1][1] for times in timelines)
    if window_end <= window_start:
        raise RuntimeError("the concurrent runs' timed epochs do not overlap; raise concurrency_seconds")
    steps = 0.0
    for times in timelines:
        moments = [moment for _, moment in times]
        done = [epoch * steps_per_epoch for epoch, _ in times]
        steps += np.interp(window_end, moments, done) - np.interp(window_start, moments, done)
    return steps / (window_end - window_start)


def concurrency_rows(setup: Setup, data_root: Path, teacher_path: Path, device: torch.device,
                     one_run_ms: float, threads: int, workdir: Path, save) -> list[dict[str, Any]]:
    """Aggregate throughput of 1, 2, 4 ... simultaneous trainer runs; each run's timed epochs last
    about `setup.concurrency_seconds` alone (longer when sharing the device). `save(rows)` records
    the rows so far after each count of runs."""
    epoch_seconds = one_run_ms * setup.steps_per_epoch / 1e3
    epochs = 1 + max(2, math.ceil(setup.concurrency_seconds / epoch_seconds))
    rows = []
    for runs in setup.concurrency:
        configs = [trainer_config(setup, CONCURRENCY_METHOD, data_root, teacher_path,
                                  workdir / f"concurrent{runs}_{index}", device, epochs) for index in range(runs)]
        timelines = start_workers(configs, threads, workdir)
        per_run_ms = [1e3 * statistics.median(b - a for (_, a), (_, b) in zip(times[:-1], times[1:]))
                      / setup.steps_per_epoch for times in timelines]
        rows.append({"runs": runs, "epochs": epochs,
                     "aggregate_steps_per_s": aggregate_steps_per_second(timelines, setup.steps_per_epoch),
                     "per_run_ms_per_step": statistics.median(per_run_ms)})
        rows[-1]["vs_one_run"] = rows[-1]["aggregate_steps_per_s"] / rows[0]["aggregate_steps_per_s"]
        save(rows)
    return rows


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{os.cpu_count()}-core {platform.machine()} {cpu}{gpu}, torch {torch.__version__}, {date.today()}"


def speed_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| loop | teacher | method | ms/step | speed-up vs classic | vs vanilla student |", "|---|---|---|---:|---:|---:|"]
    classic = {row["method"]: row["ms_per_step"] for row in rows if row["loop"] == "classic"}
    vanilla = next(row["ms_per_step"] for row in rows if row["method"] == "ce")
    for row in rows:
        versus = f"{classic[row['method']] / row['ms_per_step']:.2f}" if row["method"] in classic else ""
        lines.append(f"| {row['loop']} | {row['teacher']} | {row['method']} | {row['ms_per_step']:.1f} | {versus} | "
                     f"{row['ms_per_step'] / vanilla:.2f} |")
    return "\n".join(lines)


def concurrency_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| concurrent runs | aggregate steps/s | vs one run | per-run ms/step |", "|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['runs']} | {row['aggregate_steps_per_s']:.2f} | {row['vs_one_run']:.2f} | "
                     f"{row['per_run_ms_per_step']:.1f} |")
    return "\n".join(lines)


def steps_part(setup: Setup, device: torch.device, workdir: Path, data_root: Path, split: data.Split,
               teacher_path: Path, save) -> float:
    """The per-step rows, in order of value; `save(key, value)` records each as soon as it is measured.
    Returns the rckd trainer's ms/step with the live teacher."""
    rows: list[dict[str, Any]] = []
    epochs = 1 + timed_epochs(setup)

    def trainer_row(method: str, teacher: Path | None, logits_bank: Path | None, label: str) -> float:
        out = workdir / f"trainer_{method}_{label}"
        metrics = train(trainer_config(setup, method, data_root, teacher, out, device, epochs, logits_bank))
        ms = history_ms_per_step(out / "history.csv", setup.steps_per_epoch)
        rows.append({"loop": f"trainer ({metrics.precision}, compile {metrics.compile})",
                     "teacher": label, "method": method, "ms_per_step": ms})
        save("speed", rows)
        print(f"trainer {method} ({label}): {ms:.1f} ms/step", flush=True)
        return ms

    vanilla = trainer_row("ce", None, None, "none")
    ratios, live_ms = {}, {}
    bank_teacher = teacher_path
    if device.type == "cpu":
        bank_teacher = workdir / "bank_teacher.pt"
        save_fresh_teacher(bank_teacher, BANK_TEACHER_ON_CPU, split, setup.data_options)
    bank_path, built = workdir / "bank.pt", None
    for method in METHODS:
        classic = classic_ms_per_step(setup, method, split, teacher_path, device)
        rows.append({"loop": "classic", "teacher": "live", "method": method, "ms_per_step": classic})
        save("speed", rows)
        print(f"classic {method}: {classic:.1f} ms/step", flush=True)
        live_ms[method] = trainer_row(method, teacher_path, None, "live")
        if built is None:
            built = bank.build(bank_teacher, "synthetic", data_root, setup.data_options, bank_path, str(device))
            save("bank_build_seconds", built["seconds"])
            print(f"bank of {bank_teacher.stem} ({built['shape']}): built in {built['seconds']:.1f}s", flush=True)
        banked = trainer_row(method, bank_teacher, bank_path, "bank")
        ratios[method] = {"bank_over_vanilla": banked / vanilla, "bank_over_live": banked / live_ms[method],
                          "classic_over_bank": classic / banked}
        save("ratios", ratios)
    save("rckd_over_kd", live_ms["rckd"] / live_ms["kd"])
    print(f"\n{speed_table(rows)}\n")
    for method, values in ratios.items():
        print(f"{method}: bank / vanilla {values['bank_over_vanilla']:.3f}, bank / live {values['bank_over_live']:.3f}, "
              f"classic / bank {values['classic_over_bank']:.2f}")
    print(f"trainer rckd / kd (live teacher): {live_ms['rckd'] / live_ms['kd']:.3f}")
    return live_ms[CONCURRENCY_METHOD]


def one_run_ms(steps_json: Path | None, setup: Setup) -> float:
    """The trainer's rckd ms/step with the live teacher, from the steps part's JSON when it has it."""
    if steps_json is not None and steps_json.exists():
        rows = json.loads(steps_json.read_text()).get("speed", [])
        found = [row["ms_per_step"] for row in rows if row["method"] == CONCURRENCY_METHOD and row["teacher"] == "live"
                 and row["loop"] != "classic"]
        if found:
            return found[0]
    print(f"no measured step time in {steps_json}: the epochs are sized for {setup.assumed_ms} ms/step", flush=True)
    return setup.assumed_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--part", choices=("all", "steps", "concurrency"), default="all",
                        help="the per-step rows, the concurrent runs, or both (default)")
    parser.add_argument("--steps", type=int, help=f"timed steps of the classic loop (default {GPU.steps} on a GPU, "
                        f"{SMOKE.steps} smoke); the trainer times whole epochs, at least 2 and this many steps")
    parser.add_argument("--steps-json", type=Path, help="--part concurrency: the steps part's --out, whose rckd "
                        "trainer step time sizes the concurrent runs' epochs")
    parser.add_argument("--smoke", action="store_true", help="the tiny CPU version (implied on the CPU)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: 1 on the CPU)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON (rewritten after every row)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one concurrent run
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.worker:
        return run_worker(args.worker)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    device = torch.device(args.device)
    setup = SMOKE if args.smoke or device.type == "cpu" else GPU
    if args.steps is not None:
        setup = replace(setup, steps=args.steps)
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    print(f"{setup.name}: {setup.teacher_arch} -> {setup.student_arch}, batch {BATCH_SIZE}, synthetic "
          f"{100 * setup.train_per_class} train images (100 classes, 32x32), {setup.steps_per_epoch} steps/epoch, "
          f"{threads} torch thread(s) per process; {machine(device)}", flush=True)
    record: dict[str, Any] = {"setup": asdict(setup), "machine": machine(device), "threads": threads}

    def save(key: str, value: Any) -> None:
        record[key] = value
        if args.out:
            write_json(args.out, record)

    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        workdir = Path(tmp)
        data_root = workdir / "data"
        data.prepare_cache("synthetic", data_root, **setup.data_options)
        split = data.load("synthetic", data_root, "train", **setup.data_options)
        teacher_path = workdir / "teacher.pt"
        save_fresh_teacher(teacher_path, setup.teacher_arch, split, setup.data_options)
        measured = (steps_part(setup, device, workdir, data_root, split, teacher_path, save)
                    if args.part in ("all", "steps") else None)
        if args.part in ("all", "concurrency"):
            ms = measured or one_run_ms(args.steps_json, setup)
            concurrency = concurrency_rows(setup, data_root, teacher_path, device, ms, threads, workdir,
                                           lambda rows: save("concurrency", rows))
            print(f"\nconcurrent `{CONCURRENCY_METHOD}` trainer runs on one {device.type} device "
                  f"({concurrency[0]['epochs']} epochs each, first epoch excluded):\n")
            print(concurrency_table(concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
