"""The trainer: teachers and vanilla students (`ce`) and distilled students (any `rckd.losses` method).

One short loop. Data and augmentation live on the device; loss terms and accuracy accumulate on the
device, so an epoch has no host synchronisation until its end. On CUDA: bf16 autocast, channels_last,
CUDA graphs through torch.compile(mode="reduce-overhead"), fused SGD. On CPU: eager fp32, same loop.
Resumable: `resume.pt` (model, optimizer, epoch, data RNG, history) is written every few epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rckd import __version__, data, losses, models
from rckd.checkpoint import load_model, load_torch, save_model, save_torch
from rckd.data.augment import TrainBatches, eval_batches
from rckd.data.prepare import parse_option
from rckd.errors import RckdError
from rckd.io import write_json, write_text
from rckd.metrics import kendall_tau

TAU_SUBSET = 1000  # fixed test images on which the per-epoch rank fidelity to the teacher is logged
TAU_SUBSET_SEED = 1234  # the same subset for every run, so curves of different runs are comparable


@dataclass
class TrainConfig:
    arch: str
    dataset: str
    data_root: Path
    out: Path
    method: str = "ce"
    params: dict[str, Any] = field(default_factory=dict)
    teacher: Path | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (150, 180, 210)
    lr_decay: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA)
    compile: str = "auto"  # none | reduce-overhead | auto (reduce-overhead on CUDA)
    checkpoint_every: int = 5
    eval_batch_size: int = 1000
    gpu_slots: int = 0  # >0: claim one of this many job slots per visible GPU (rckd.gpu)

    def validate(self) -> None:
        if self.arch not in models.available():
            raise RckdError(f"unknown arch {self.arch!r}; available: {', '.join(models.available())}")
        if self.dataset not in data.DATASETS:
            raise RckdError(f"unknown dataset {self.dataset!r}; available: {', '.join(data.DATASETS)}")
        for name in ("epochs", "batch_size", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise RckdError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 < self.lr_decay <= 1:
            raise RckdError("need lr > 0, weight_decay >= 0, 0 <= momentum < 1 and 0 < lr_decay <= 1")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise RckdError(f"milestones must be increasing positive epochs, got {list(self.milestones)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise RckdError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.compile not in ("auto", "none", "reduce-overhead"):
            raise RckdError(f"compile must be auto, none or reduce-overhead, got {self.compile!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise RckdError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step schedule: lr * lr_decay ** (number of milestones passed); `epoch` counts from 0."""
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.milestones)


def _pick_device(config: TrainConfig) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RckdError(f"--device {config.device} asked for CUDA but torch sees no GPU; use --device cpu")
    if config.device.startswith("cuda:"):
        return torch.device(config.device)
    # Under SLURM the scheduler already gave this job its GPU; slots are for sharing one machine.
    if config.gpu_slots > 0 and "SLURM_JOB_ID" not in os.environ:
        from rckd.gpu import claim

        slot = claim(torch.cuda.device_count(), config.gpu_slots)
        print(f"claimed GPU {slot.gpu} slot {slot.slot}", flush=True)
        _HELD_SLOTS.append(slot)  # held until the process exits
        return torch.device(f"cuda:{slot.gpu}")
    return torch.device("cuda")


_HELD_SLOTS: list[Any] = []


def _load_teacher(config: TrainConfig, train: data.Split, device: torch.device) -> tuple[nn.Module, dict]:
    if config.teacher is None:
        raise RckdError(f"method {config.method!r} distils from a teacher: pass --teacher PATH/model.pt")
    teacher, meta = load_model(config.teacher, device)
    expected = {"dataset": config.dataset, "num_classes": len(train.classes), "in_channels": train.images.shape[1]}
    wrong = {key: meta.get(key) for key, value in expected.items() if meta.get(key) != value}
    if wrong:
        raise RckdError(
            f"teacher {config.teacher} does not fit this data set: it has {wrong}, expected "
            f"{ {key: expected[key] for key in wrong} }; train the teacher on {config.dataset} first"
        )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher, meta


def _history_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, split: data.Split, batch_size: int,
                   autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """Logits of a whole (unaugmented) split, concatenated in order, in float32."""
    outputs = []
    for x, _ in eval_batches(images, torch.zeros(len(images), dtype=torch.long, device=images.device),
                             batch_size, split.mean, split.std):
        with autocast or contextlib.nullcontext():
            outputs.append(model(x).float())
    return torch.cat(outputs)


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run into `config.out`; resumes from `resume.pt` there. Returns the metrics dict."""
    config.validate()
    loss_fn = losses.build(config.method, **config.params)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _pick_device(config)
    on_cuda = device.type == "cuda"
    precision = config.precision if config.precision != "auto" else ("bf16" if on_cuda else "fp32")
    compile_mode = config.compile if config.compile != "auto" else ("reduce-overhead" if on_cuda else "none")
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format

    train_split = data.load(config.dataset, config.data_root, "train", **config.data_options)
    test_split = data.load(config.dataset, config.data_root, "test", **config.data_options)
    num_classes, in_channels = len(train_split.classes), train_split.images.shape[1]

    torch.manual_seed(config.seed)
    student = models.build(config.arch, num_classes=num_classes, in_channels=in_channels)
    student = student.to(device, memory_format=memory_format)
    teacher, teacher_meta = (None, None)
    if loss_fn.needs_teacher:
        teacher, teacher_meta = _load_teacher(config, train_split, device)
        teacher = teacher.to(memory_format=memory_format)
    elif config.teacher is not None:
        raise RckdError(f"method {config.method!r} trains without a teacher; drop --teacher")

    optimizer = torch.optim.SGD(student.parameters(), lr=lr_at(config, 0), momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=on_cuda)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batches = TrainBatches(train_split.images.to(device), train_split.labels.to(device), config.batch_size,
                           train_split.mean, train_split.std, generator=generator, channels_last=on_cuda)
    test_images, test_labels = test_split.images.to(device), test_split.labels.to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    run_student = torch.compile(student, mode=compile_mode) if compile_mode != "none" else student
    run_teacher = teacher
    if teacher is not None and compile_mode != "none":
        run_teacher = torch.compile(teacher, mode=compile_mode)

    # Teacher logits on a fixed test subset, for the per-epoch non-target Kendall tau.
    subset = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(TAU_SUBSET_SEED))
    subset = subset[:TAU_SUBSET].to(device)
    teacher_subset_logits = None
    if teacher is not None:
        teacher_subset_logits = predict_logits(teacher, test_images[subset], test_split, config.eval_batch_size)

    start_epoch, history, elapsed = 0, [], 0.0
    resume_path = out / "resume.pt"
    if resume_path.exists():
        state = load_torch(resume_path, "resume checkpoint")
        if state.get("config") != _config_identity(config):
            raise RckdError(f"{resume_path} belongs to a different run configuration; delete it to start afresh")
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["cpu_rng"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state["elapsed"]
        print(f"resuming {out} at epoch {start_epoch + 1}/{config.epochs}", flush=True)

    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        lr = lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        student.train()
        term_sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device, dtype=torch.long)
        show_bar = sys.stderr.isatty()
        for x, y in tqdm(batches, total=len(batches), disable=not show_bar, leave=False,
                         desc=f"epoch {epoch + 1}/{config.epochs}"):
            with autocast():
                logits_s = run_student(x)
                logits_t = None
                if run_teacher is not None:
                    with torch.inference_mode():
                        logits_t = run_teacher(x)
                    logits_t = logits_t.clone()  # a normal tensor autograd may save (and safe from graph replay)
            terms = loss_fn(logits_s, logits_t, y, epoch + 1)  # epochs count from 1 inside losses (DKD warm-up)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0) + value.detach() * len(y)
            correct += (logits_s.detach().argmax(1) == y).sum()

        # End of epoch: the one host synchronisation.
        seen = len(train_split.labels)  # every sample once per epoch (the last batch may be short)
        mean_terms = {name: (value / seen).item() for name, value in term_sums.items()}
        bad = [name for name, value in mean_terms.items() if not math.isfinite(value)]
        if bad:
            raise RckdError(
                f"non-finite loss in epoch {epoch + 1}: term(s) {', '.join(bad)} = "
                f"{[mean_terms[name] for name in bad]}; lower the lr or check the data and teacher"
            )
        student.eval()
        test_logits = predict_logits(run_student, test_images, test_split, config.eval_batch_size, autocast())
        test_top1 = (test_logits.argmax(1) == test_labels).float().mean().item() * 100
        tau_nt = ""
        if teacher_subset_logits is not None:
            tau = kendall_tau(test_logits[subset].double(), teacher_subset_logits.double(), exclude=test_labels[subset])
            tau_nt = round(torch.nanmean(tau).item(), 6)
        elapsed += time.perf_counter() - began
        row = {"epoch": epoch + 1, "lr": lr, **{f"loss_{k}": round(v, 6) for k, v in mean_terms.items()},
               "train_top1": round(correct.item() / seen * 100, 4), "test_top1": round(test_top1, 4),
               "tau_nt": tau_nt, "seconds": round(time.perf_counter() - began, 3)}
        history.append(row)
        print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)

        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
            save_torch(resume_path, {
                "config": _config_identity(config), "epoch": epoch + 1, "history": history,
                "elapsed": elapsed, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "batches": batches.state_dict(), "cpu_rng": torch.get_rng_state(),
            })

    best = max(history, key=lambda row: row["test_top1"])
    metrics = {
        "arch": config.arch, "dataset": config.dataset, "method": config.method, "params": loss_fn.params,
        "teacher": str(config.teacher) if config.teacher else None,
        "teacher_arch": teacher_meta["arch"] if teacher_meta else None,
        "seed": config.seed, "epochs": config.epochs, "num_params": sum(p.numel() for p in student.parameters()),
        "final_top1": history[-1]["test_top1"], "best_top1": best["test_top1"], "best_epoch": best["epoch"],
        "wall_seconds": round(elapsed, 2), "device": str(device), "precision": precision,
        "compile": compile_mode, "train_config": _config_identity(config),
    }
    meta = {
        "arch": config.arch, "num_classes": num_classes, "in_channels": in_channels,
        "input_size": list(train_split.images.shape[1:]), "dataset": config.dataset,
        "mean": list(train_split.mean), "std": list(train_split.std), "classes": list(train_split.classes),
        "method": config.method, "params": loss_fn.params, "teacher": metrics["teacher"],
        "teacher_arch": metrics["teacher_arch"], "seed": config.seed, "epochs": config.epochs,
        "final_top1": metrics["final_top1"], "best_top1": metrics["best_top1"], "best_epoch": metrics["best_epoch"],
        "rckd_version": __version__,
    }
    # history and metrics first, model.pt last: model.pt is what marks the run complete.
    write_text(out / "history.csv", _history_csv(history))
    write_json(out / "metrics.json", metrics)
    save_model(out / "model.pt", student, meta)
    resume_path.unlink(missing_ok=True)  # the finished run no longer needs it (it holds 2-3x the weights)
    return metrics


def _config_identity(config: TrainConfig) -> dict[str, Any]:
    """What must match for a resume to be valid (paths and device choice may differ)."""
    identity = asdict(config)
    for key in ("out", "data_root", "device", "gpu_slots", "checkpoint_every", "eval_batch_size"):
        identity.pop(key)
    identity["teacher"] = str(config.teacher) if config.teacher else None
    identity["milestones"] = list(config.milestones)
    return identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(arch="", dataset="", data_root=Path(), out=Path())
    parser.add_argument("--arch", required=True, help="model name (rckd.models.available())")
    parser.add_argument("--dataset", required=True, help="data set name (rckd.data.DATASETS)")
    parser.add_argument("--data-root", required=True, type=Path, help="directory of the prepared data cache")
    parser.add_argument("--data-option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                        help="data set option (synthetic sizes, seed, difficulty); repeatable")
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--method", default="ce", help="loss: ce, kd, dkd, dist, rckd")
    parser.add_argument("--param", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                        help="loss parameter, e.g. T=4 or beta=8; repeatable")
    parser.add_argument("--teacher", type=Path, help="teacher model.pt (distillation methods)")
    for name in ("epochs", "batch_size", "seed", "checkpoint_every", "eval_batch_size", "gpu_slots"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "momentum", "weight_decay", "lr_decay"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--milestones", type=int, nargs="*", default=list(defaults.milestones),
                        help="epochs at which the lr is multiplied by --lr-decay")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", default="auto", choices=["auto", "none", "reduce-overhead"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        arch=args.arch, dataset=args.dataset, data_root=args.data_root, out=args.out, method=args.method,
        params=dict(args.param), teacher=args.teacher, data_options=dict(args.data_option),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, milestones=tuple(args.milestones), lr_decay=args.lr_decay,
        seed=args.seed, device=args.device, precision=args.precision, compile=args.compile,
        checkpoint_every=args.checkpoint_every, eval_batch_size=args.eval_batch_size, gpu_slots=args.gpu_slots,
    )
    metrics = train(config)
    print(f"done: {config.out} best_top1={metrics['best_top1']:.2f} final_top1={metrics['final_top1']:.2f} "
          f"({metrics['wall_seconds']:.1f}s)", flush=True)
    return 0
