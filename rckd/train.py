"""The trainer: teachers and vanilla students (`ce`) and distilled students (any `rckd.losses` method).

One short loop. Data and augmentation live on the device; loss terms and accuracy accumulate on the
device, so an epoch has no host synchronisation until its end. On CUDA: bf16 autocast, channels_last,
CUDA graphs through torch.compile(mode="reduce-overhead"), fused SGD. On CPU: eager fp32, same loop.
Resumable: `resume.pt` (model, optimizer, epoch, data RNG, history) is written every few epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rckd import __version__, data, losses, models
from rckd.checkpoint import load_model, load_torch, save_model, save_torch
from rckd.data.augment import TrainBatches, eval_inputs
from rckd.data.prepare import parse_option
from rckd.errors import RckdError
from rckd.device import add_threads_argument, resolve_device, set_threads
from rckd.gpu import DEFAULT_LOCK_DIR, GpuSlot, claim, try_claim
from rckd.io import write_csv, write_json
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
        for name, ok, rule in (("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                               ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1]")):
            if not ok:
                raise RckdError(f"{name} must be {rule}, got {getattr(self, name)}")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise RckdError(f"milestones must be increasing positive epochs, got {list(self.milestones)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise RckdError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.compile not in ("auto", "none", "reduce-overhead"):
            raise RckdError(f"compile must be auto, none or reduce-overhead, got {self.compile!r}")
        resolve_device(self.device)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step schedule: lr * lr_decay ** (number of milestones passed); `epoch` counts from 0."""
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.milestones)


def _pick_device(config: TrainConfig) -> tuple[torch.device, GpuSlot | None]:
    """The training device, and the GPU slot claimed for it (held until the process exits)."""
    device = resolve_device(config.device)
    # Under SLURM the scheduler already gave this job its GPU; slots are for sharing one machine.
    if device != torch.device("cuda") or config.gpu_slots < 1 or "SLURM_JOB_ID" in os.environ:
        return device, None
    slot = try_claim(torch.cuda.device_count(), config.gpu_slots)
    if slot is None:
        print(f"waiting for a free GPU slot ({config.gpu_slots} per GPU, locks in {DEFAULT_LOCK_DIR})", flush=True)
        slot = claim(torch.cuda.device_count(), config.gpu_slots)
    print(f"claimed GPU {slot.gpu} slot {slot.slot}", flush=True)
    torch.cuda.set_device(slot.gpu)
    return torch.device(f"cuda:{slot.gpu}"), slot


def _load_teacher(config: TrainConfig, train: data.Split, device: torch.device) -> tuple[nn.Module, dict]:
    if config.teacher is None:
        raise RckdError(f"method {config.method!r} distils from a teacher: pass --teacher PATH/model.pt")
    teacher, meta = load_model(config.teacher, device)
    expected = {"dataset": config.dataset, "data_options": train_data_options(config),
                "num_classes": len(train.classes), "in_channels": train.images.shape[1],
                "input_size": list(train.images.shape[1:])}
    wrong = {key: meta.get(key) for key, value in expected.items() if meta.get(key) != value}
    if wrong:
        raise RckdError(
            f"teacher {config.teacher} does not fit this data set: it has {wrong}, expected "
            f"{ {key: expected[key] for key in wrong} }; train the teacher on {config.dataset} first"
        )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher, meta


def train_data_options(config: TrainConfig) -> dict[str, Any]:
    """The data set's options with defaults filled in: two runs on the same data have the same."""
    return data.datasets.resolve_options(config.dataset, config.data_options)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   batch_size: int, channels_last: bool = False) -> torch.Tensor:
    """float32 logits of unaugmented uint8 images, in order; meant for an eager model in eval mode."""
    return torch.cat([model(x).float() for x in eval_inputs(images, batch_size, mean, std,
                                                             channels_last=channels_last)])


def _resolved_modes(config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """(precision, compile mode) with "auto" decided: bf16 and CUDA graphs on CUDA, fp32 eager on CPU."""
    on_cuda = device.type == "cuda"
    precision = config.precision if config.precision != "auto" else ("bf16" if on_cuda else "fp32")
    compile_mode = config.compile if config.compile != "auto" else ("reduce-overhead" if on_cuda else "none")
    if compile_mode != "none" and not on_cuda:
        raise RckdError("compile reduce-overhead captures CUDA graphs and needs CUDA; use --compile none on CPU")
    return precision, compile_mode


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run into `config.out`; resumes from `resume.pt` there. Returns the metrics dict."""
    config.validate()
    loss_fn = losses.build(config.method, **config.params)
    if not loss_fn.needs_teacher and config.teacher is not None:
        raise RckdError(f"method {config.method!r} trains without a teacher; drop --teacher")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device, _slot = _pick_device(config)  # the slot's lock is held while `_slot` lives
    precision, compile_mode = _resolved_modes(config, device)
    identity = _config_identity(config, precision, compile_mode)
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format

    splits = data.load_splits(config.dataset, config.data_root, **config.data_options)
    train_split, test_split = splits["train"], splits["test"]
    num_classes, in_channels = len(train_split.classes), train_split.images.shape[1]

    torch.manual_seed(config.seed)
    student = models.build(config.arch, num_classes=num_classes, in_channels=in_channels)
    student = student.to(device, memory_format=memory_format)
    teacher, teacher_meta = (None, None)
    if loss_fn.needs_teacher:
        teacher, teacher_meta = _load_teacher(config, train_split, device)
        teacher = teacher.to(memory_format=memory_format)

    optimizer = torch.optim.SGD(student.parameters(), lr=lr_at(config, 0), momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=on_cuda)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batches = TrainBatches(train_split.images.to(device), train_split.labels.to(device), config.batch_size,
                           train_split.mean, train_split.std, generator=generator, channels_last=on_cuda)
    test_images, test_labels = test_split.images.to(device), test_split.labels.to(device)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    # Shapes are fixed (batch_size, and one more graph for a short last batch): no dynamic shapes.
    compiled = (lambda model: torch.compile(model, mode=compile_mode, dynamic=False)) if compile_mode != "none" \
        else (lambda model: model)
    run_student = compiled(student)
    run_teacher = compiled(teacher) if teacher is not None else None

    def evaluate_test() -> torch.Tensor:
        """Test logits from the eager student in fp32, so accuracy and tau do not depend on bf16 ties."""
        student.eval()
        logits = predict_logits(student, test_images, test_split.mean, test_split.std, config.eval_batch_size,
                                channels_last=on_cuda)
        student.train()
        return logits

    # Teacher logits on a fixed test subset, for the per-epoch non-target Kendall tau.
    subset = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(TAU_SUBSET_SEED))
    subset = subset[:TAU_SUBSET].to(device)
    teacher_subset_logits = None
    if teacher is not None:
        teacher_subset_logits = predict_logits(teacher, test_images[subset], test_split.mean, test_split.std,
                                               config.eval_batch_size, channels_last=on_cuda)

    start_epoch, history, elapsed = 0, [], 0.0
    resume_path = out / "resume.pt"
    if resume_path.exists():
        state = load_torch(resume_path, "resume checkpoint")
        saved = state.get("config") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            raise RckdError(f"{resume_path} is not an rckd resume checkpoint; delete it to start afresh")
        if saved != identity:
            changed = sorted(key for key in identity.keys() | saved.keys() if identity.get(key) != saved.get(key))
            raise RckdError(f"{resume_path} belongs to a different run configuration (differs in {changed}); "
                            f"delete it to start afresh")
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
        epoch_number = epoch + 1  # losses count epochs from 1 (DKD's warm-up, as in mdistiller)
        term_sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device, dtype=torch.long)
        show_bar = sys.stderr.isatty()
        for x, y in tqdm(batches, total=len(batches), disable=not show_bar, leave=False,
                         desc=f"epoch {epoch_number}/{config.epochs}"):
            if compile_mode != "none":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
            with autocast():
                logits_t = None
                if run_teacher is not None:
                    with torch.inference_mode():
                        logits_t = run_teacher(x)
                    logits_t = logits_t.clone()  # a normal tensor autograd may save (and safe from graph replay)
                logits_s = run_student(x)
            terms = loss_fn(logits_s, logits_t, y, epoch_number)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0) + value.detach() * len(y)
            correct += (logits_s.detach().argmax(1) == y).sum()

        # End of epoch: the one host synchronisation (every term and the accuracy in one transfer).
        seen = len(train_split.labels)  # every sample once per epoch (the last batch may be short)
        *term_means, train_top1 = (torch.stack([*term_sums.values(), correct.float()]) / seen).tolist()
        mean_terms = dict(zip(term_sums, term_means))
        bad = [name for name, value in mean_terms.items() if not math.isfinite(value)]
        if bad:
            raise RckdError(
                f"non-finite loss in epoch {epoch_number}: term(s) {', '.join(bad)} = "
                f"{[mean_terms[name] for name in bad]}; lower the lr or check the data and teacher"
            )
        test_logits = evaluate_test()
        test_top1 = (test_logits.argmax(1) == test_labels).float().mean().item() * 100
        tau_nt = ""
        if teacher_subset_logits is not None:
            tau = kendall_tau(test_logits[subset].double(), teacher_subset_logits.double(), exclude=test_labels[subset])
            tau_nt = round(torch.nanmean(tau).item(), 6)
        elapsed += time.perf_counter() - began
        row = {"epoch": epoch_number, "lr": float(f"{lr:.6g}"),  # 0.005, not 0.005000000000000001
               **{f"loss_{k}": round(v, 6) for k, v in mean_terms.items()},
               "train_top1": round(train_top1 * 100, 4), "test_top1": round(test_top1, 4),
               "tau_nt": tau_nt, "seconds": round(time.perf_counter() - began, 3)}
        history.append(row)
        print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)

        if epoch_number % config.checkpoint_every == 0 or epoch_number == config.epochs:
            save_torch(resume_path, {
                "config": identity, "epoch": epoch_number, "history": history,
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
        "compile": compile_mode, "train_config": identity,
    }
    meta = {
        "arch": config.arch, "num_classes": num_classes, "in_channels": in_channels,
        "input_size": list(train_split.images.shape[1:]), "dataset": config.dataset,
        "data_options": train_data_options(config),
        "mean": list(train_split.mean), "std": list(train_split.std), "classes": list(train_split.classes),
        "method": config.method, "params": loss_fn.params, "teacher": metrics["teacher"],
        "teacher_arch": metrics["teacher_arch"], "seed": config.seed, "epochs": config.epochs,
        "final_top1": metrics["final_top1"], "best_top1": metrics["best_top1"], "best_epoch": metrics["best_epoch"],
        "rckd_version": __version__,
    }
    # history and metrics first, model.pt last: model.pt is what marks the run complete.
    write_csv(out / "history.csv", history)
    write_json(out / "metrics.json", metrics)
    save_model(out / "model.pt", student, meta)
    resume_path.unlink(missing_ok=True)  # the finished run no longer needs it (it holds 2-3x the weights)
    return metrics


def _config_identity(config: TrainConfig, precision: str, compile_mode: str) -> dict[str, Any]:
    """What must match for a resume to be valid (paths and device choice may differ; the resolved
    precision and compile mode may not: a bf16 run must not silently continue in fp32)."""
    identity = asdict(config) | {"precision": precision, "compile": compile_mode}
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
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
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
