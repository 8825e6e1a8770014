"""The trainer: teachers and vanilla students (`ce`) and distilled students (any `rckd.losses` method).

One short loop (`train`), with its setup, resume, epoch and finish as named functions beside it.
Data and augmentation live on the device; loss terms and accuracy accumulate on the device, so an
epoch has no host synchronisation until its end. Teacher logits are always fp32: the teacher runs
outside the student's autocast, or its logits come from a precomputed bank (`rckd.bank`). On CUDA:
bf16 autocast, channels_last, the student's forward and loss compiled as one graph (CUDA graphs with
reduce-overhead), fused SGD. On CPU: eager fp32, same loop. Resumable: `resume.pt` is written every
few epochs and, mid-epoch, on SIGTERM (a SLURM time limit or preemption), after which the run exits
with status 143; rerunning the same command continues it to the same weights. Data-parallel under
torchrun (`rckd.distributed`): batch_size is the total over the processes, each trains its part of
every batch, and the same number of processes or any other continues a run. Each epoch's history row
also goes to TensorBoard event files in the run directory (`rckd.curves`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rckd import __version__, bank, curves, data, distributed, losses, models
from rckd.checkpoint import load_model, load_torch, save_model, save_torch
from rckd.ctkd import LearnedTemperature, learned_temperature
from rckd.data.augment import TrainBatch, TrainBatches
from rckd.data.imagefolder import StreamBatches
from rckd.data.options import STREAMED, add_data_option_argument, crop_padding, resolve_options
from rckd.data.strong import strong_views
from rckd.device import add_threads_argument, resolve_device, set_threads
from rckd.errors import RckdError
from rckd.gpu import GpuSlot, claim_device
from rckd.inference import check_fits, predict_logits, split_logits
from rckd.io import write_csv, write_json
from rckd.losses.catalog import needs_live_teacher, parse_param
from rckd.metrics import kendall_tau
from rckd.records import ModelMeta, RunMetrics
from rckd.spec import COMPILE_MODES, PRECISIONS, RunSpec, digest, read_spec

TAU_SUBSET = 1000  # fixed test images on which the per-epoch rank fidelity to the teacher is logged
TAU_SUBSET_SEED = 1234  # the same subset for every run, so curves of different runs are comparable
PREEMPTED_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process it ended
STOP_POLL_STEPS = 20  # data-parallel processes agree on SIGTERM every this many steps (one tiny all-reduce)


@dataclass(kw_only=True)
class TrainConfig(RunSpec):
    """A run's spec and where and how to run it. None of the fields added here changes what the run
    computes, so a resume may change them (another device, more workers, another bank file)."""

    data_root: Path
    out: Path
    device: str = "auto"
    teacher_bank: Path | None = None  # logits of the teacher under every view (rckd.bank), instead of running it
    bank_fallback: bool = False  # run the teacher live when the bank does not fit in memory (teacher_bank: auto)
    checkpoint_every: int = 5
    eval_batch_size: int = 1000
    gpu_slots: int = 0  # >0: claim one of this many job slots per visible GPU (rckd.gpu)
    workers: int = 0  # DataLoader processes decoding a streamed data set's images (0: in this process)
    tensorboard: bool = True  # event files of the curves in the run directory (rckd.curves)

    def validate(self) -> None:
        self.check()
        if self.arch not in models.available():
            raise RckdError(f"unknown arch {self.arch!r}; available: {', '.join(models.available())}")
        for name in ("checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise RckdError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.workers < 0:
            raise RckdError(f"workers must be >= 0, got {self.workers}")
        if self.teacher_bank is not None and self.dataset in STREAMED:
            raise RckdError(f"{self.dataset} is cropped at random sizes, not from a finite set of views: it has "
                            f"no teacher bank; drop --teacher-bank (config train.teacher_bank: off)")
        if needs_live_teacher(self.method) and self.teacher_bank is not None:
            raise RckdError(f"{self.method} runs its teacher on a strong view made by random ops (rckd.data.strong), "
                            f"which no bank can hold: drop --teacher-bank (config train.teacher_bank: auto or off)")
        if needs_live_teacher(self.method) and self.dataset in STREAMED:
            raise RckdError(f"{self.method}'s strong view is made from in-memory images; {self.dataset} is streamed")
        if self.teacher_bank is not None and self.teacher is None:
            raise RckdError("--teacher-bank holds a teacher's logits: pass --teacher too (the bank is checked "
                            "against it)")
        resolve_device(self.device)
        if self.tensorboard:
            curves.check_available()


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step schedule: lr * lr_decay ** (number of milestones passed); `epoch` counts from 0."""
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.milestones)


class Preempted(Exception):
    """SIGTERM arrived; the resume checkpoint holds the run up to the last finished step."""


@dataclass
class Session:
    """Everything one run's epochs need, built once by `_setup`."""

    config: TrainConfig
    spec: dict[str, Any]  # config's RunSpec, resolved (rckd.spec): what spec.json holds
    device: torch.device
    precision: str
    compile_mode: str
    # What a resume must match: the spec's digest and the resolved numerics and teacher-logit source (a
    # bf16 run must not silently continue in fp32, nor a banked one with the live teacher).
    identity: dict[str, Any]
    student: nn.Module
    step: Callable[[TrainBatch, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]
    optimizer: torch.optim.Optimizer
    batches: TrainBatches | StreamBatches
    test: data.Split | data.FileSplit
    test_shard: torch.Tensor  # this process's test images (every one with one process)
    subset: torch.Tensor  # the fixed test images of the rank fidelity (tau_nt)
    subset_images: torch.Tensor  # uint8 test views on the device, for the rank fidelity
    teacher_subset_logits: torch.Tensor | None
    teacher_meta: ModelMeta | None
    classes: list[str]
    params: dict[str, Any]  # the loss parameters, defaults filled in
    used_bank: bool
    slot: GpuSlot | None  # its lock is held while the session lives
    group: distributed.Group
    best_weights: dict[str, torch.Tensor] | None = None  # host copy of the best test top-1 epoch's (best.pt)
    temperature: LearnedTemperature | None = None  # CTKD's, trained with the student (rckd.ctkd)


def train(config: TrainConfig) -> RunMetrics:
    """Train one run into `config.out`; resumes from `resume.pt` there. Returns its metrics.json record."""
    session = _setup(config)
    out = Path(config.out)
    start_epoch, history, elapsed, partial = _resume(session, out / "resume.pt")
    resume_path = out / "resume.pt"
    stop = _TermFlag()
    board = curves.writer(out, start_epoch, session.spec, on=config.tensorboard, main=session.group.main)
    with stop.installed(), board as log_curves:
        for epoch in range(start_epoch, config.epochs):
            began = time.perf_counter()
            sums, complete = _train_epoch(session, epoch, partial, stop)
            partial = None
            sums = _summed(session, sums)
            if not complete:  # SIGTERM mid-epoch: keep the steps done so far
                _save_resume(session, resume_path, epoch, history, elapsed + time.perf_counter() - began, sums)
                raise Preempted(f"stopped by SIGTERM in epoch {epoch + 1}; {resume_path} holds the run")
            elapsed += time.perf_counter() - began
            history.append(_epoch_row(session, epoch, sums, time.perf_counter() - began))
            _keep_if_best(session, history)
            log_curves(history[-1])
            if session.group.main:
                print(" ".join(f"{key}={value}" for key, value in history[-1].items()), flush=True)
            interrupted = distributed.anyone(stop.raised, session.group, session.device) and epoch + 1 < config.epochs
            if interrupted or (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                _save_resume(session, resume_path, epoch + 1, history, elapsed, None)
            if interrupted:
                raise Preempted(f"stopped by SIGTERM after epoch {epoch + 1}; {resume_path} holds the run")
    return _finish(session, out, history, elapsed)


def _setup(config: TrainConfig) -> Session:
    config.validate()
    loss_fn = losses.build(config.method, **config.params)
    spec = config.resolved()
    Path(config.out).mkdir(parents=True, exist_ok=True)
    group, device = distributed.join(config.device)
    if group.main:
        write_json(Path(config.out) / "spec.json", spec)  # `rckd train --spec` of it reruns the run
    if config.batch_size % group.world:
        raise RckdError(f"batch_size {config.batch_size} (the total) must divide among {group.world} processes")
    device, slot = (device, None) if group.world > 1 else claim_device(config.device, config.gpu_slots)
    precision, compile_mode = _resolved_modes(config, device, group.world)
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest kernels are found once

    splits = data.load_splits(config.dataset, config.data_root, **config.data_options)
    train_split, test_split = splits["train"], splits["test"]
    torch.manual_seed(config.seed)
    student = models.build(config.arch, num_classes=len(train_split.classes), in_channels=train_split.input_size[0])
    student = student.to(device, memory_format=memory_format)
    temperature = learned_temperature(config.method, loss_fn.params, device, group)
    trained_parameters = [*student.parameters(), *(temperature.parameters() if temperature is not None else ())]
    optimizer = torch.optim.SGD(trained_parameters, lr=lr_at(config, 0), momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=on_cuda)
    batches = _batches(config, train_split, device, group, two_views=loss_fn.views == 2)
    subset = torch.randperm(len(test_split), generator=torch.Generator().manual_seed(TAU_SUBSET_SEED))[:TAU_SUBSET]
    subset_images = test_split.eval_images(subset).to(device)

    teacher_logits, teacher_meta, teacher_subset_logits, used_bank = None, None, None, False
    if loss_fn.needs_teacher:
        teacher, teacher_meta = load_model(config.teacher, device)
        check_fits(config.teacher, teacher_meta, config.dataset, config.data_options, train_split)
        teacher = teacher.to(memory_format=memory_format).requires_grad_(False)
        teacher_subset_logits = predict_logits(teacher, subset_images, test_split.mean, test_split.std,
                                               config.eval_batch_size, channels_last=on_cuda)
        used_bank = _use_bank(config, train_split, batches.padding, device)
        teacher_logits = (bank.load(config.teacher_bank, config.teacher, train_split, batches.padding, device,
                                    config.dataset, config.data_options) if used_bank
                          else _live_teacher(teacher, compile_mode))
    model = _TwoViews(student) if loss_fn.views == 2 else student
    trained = model if group.world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if on_cuda else None)
    step = _make_step(trained, loss_fn, teacher_logits, optimizer, device, precision, compile_mode,
                      fullgraph=group.world == 1, temperature=temperature)  # DDP's buckets split the graph
    identity = {"spec_hash": digest(spec), "precision": precision, "compile": compile_mode, "teacher_bank": used_bank}
    test_shard = torch.arange(group.rank, len(test_split), group.world)
    return Session(config, spec, device, precision, compile_mode, identity, student, step, optimizer, batches,
                   test_split, test_shard, subset, subset_images, teacher_subset_logits, teacher_meta,
                   list(train_split.classes), loss_fn.params, used_bank, slot, group, temperature=temperature)


def _batches(config: TrainConfig, split: data.Split | data.FileSplit, device: torch.device,
             group: distributed.Group, two_views: bool = False) -> TrainBatches | StreamBatches:
    """This process's training batches, all full (the short last one is dropped): one compiled shape."""
    per_process, on_cuda = config.batch_size // group.world, device.type == "cuda"
    if config.dataset in STREAMED:
        return StreamBatches(split, per_process, seed=config.seed, device=device, rank=group.rank,
                             world=group.world, workers=config.workers, channels_last=on_cuda)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if two_views and split.images.shape[1] != 3:
        raise RckdError(f"{config.method}'s strong view (RandAugment, rckd.data.strong) is defined for RGB images; "
                        f"{config.dataset} has {split.images.shape[1]} channel(s)")
    return TrainBatches(split.images.to(device), split.labels.to(device), per_process, split.mean, split.std,
                        generator=generator, channels_last=on_cuda, drop_last=True, rank=group.rank,
                        world=group.world, padding=crop_padding(config.dataset, config.data_options),
                        second_view=strong_views if two_views else None)


def _use_bank(config: TrainConfig, train_split: data.Split, padding: int, device: torch.device) -> bool:
    """Whether the run reads its teacher logits from config.teacher_bank; says why in one log line."""
    if config.teacher_bank is None:
        return False
    size = bank.size_bytes(len(train_split), len(train_split.classes), padding)
    fits, line = bank.fits_in_memory(size, device)
    use = fits or not config.bank_fallback
    print(f"{line}: {'using it' if use else 'running the teacher live instead'}", flush=True)
    return use


def _live_teacher(teacher: nn.Module, compile_mode: str) -> Callable[[TrainBatch], torch.Tensor]:
    """The teacher's fp32 logits of each batch: run outside any autocast, so soft targets keep their
    ranks (bf16 would round them to 8 mantissa bits)."""
    run_teacher = torch.compile(teacher, mode=compile_mode, dynamic=False) if compile_mode != "none" else teacher

    def logits(batch: TrainBatch) -> torch.Tensor:
        with torch.inference_mode():
            values = run_teacher(batch.x).float()
        return values.clone()  # a normal tensor autograd may save (and safe from CUDA-graph replay)

    return logits


class _TwoViews(nn.Module):
    """The student on both views of a batch in one forward call, since a DistributedDataParallel forward
    must precede each backward once; each view still has its own BatchNorm batch statistics."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor, x_strong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student(x), self.student(x_strong)


def _make_step(student: nn.Module, loss_fn: losses.DistillLoss,
               teacher_logits: Callable[[TrainBatch], torch.Tensor] | None, optimizer: torch.optim.Optimizer,
               device: torch.device, precision: str, compile_mode: str, fullgraph: bool = True,
               temperature: LearnedTemperature | None = None):
    """One optimisation step: (batch, epoch tensor) -> (weighted loss terms, student logits). A two-view
    loss also gets the strong view's logits: the student's from a second forward (its own BatchNorm batch
    statistics, as in MLKD's source) and the live teacher's. A learned temperature (CTKD) is computed
    inside the graph, so its gradient flows through the terms."""

    def forward_loss(x: torch.Tensor, y: torch.Tensor, logits_t: torch.Tensor | None, epoch: torch.Tensor,
                     x_strong: torch.Tensor | None = None, logits_t_strong: torch.Tensor | None = None):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if x_strong is None:  # a one-view loss is called as it always was
                logits_s, second_view = student(x), {}
            else:  # a _TwoViews student
                logits_s, logits_s_strong = student(x, x_strong)
                second_view = {"strong": (logits_s_strong, logits_t_strong)}
        learned = {"temperature": temperature(epoch)} if temperature is not None else {}
        terms = loss_fn(logits_s, logits_t, y, epoch, **second_view, **learned)
        return terms, logits_s

    # Student forward and loss are one graph (and so is their backward, through AOTAutograd).
    compiled = (torch.compile(forward_loss, mode=compile_mode, dynamic=False, fullgraph=fullgraph)
                if compile_mode != "none" else forward_loss)

    def step(batch: TrainBatch, epoch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits_t = teacher_logits(batch) if teacher_logits is not None else None
        strong = () if batch.strong is None else (batch.strong, teacher_logits(batch._replace(x=batch.strong)))
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        terms, logits_s = compiled(batch.x, batch.y, logits_t, epoch, *strong)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}, logits_s.detach()

    return step


def _train_epoch(session: Session, epoch: int, partial: dict[str, torch.Tensor] | None,
                 stop: _TermFlag) -> tuple[dict[str, torch.Tensor], bool]:
    """(device-side sums of every loss term and of correct predictions, whether the epoch is complete):
    it continues `partial` after a mid-epoch resume and stops early, after a whole step, on SIGTERM."""
    config = session.config
    for group in session.optimizer.param_groups:
        group["lr"] = lr_at(config, epoch)
    session.student.train()
    # Losses count epochs from 1 (DKD's warm-up, as in mdistiller); a tensor, so graphs are not rebuilt.
    epoch_number = torch.tensor(float(epoch + 1), device=session.device)
    sums: dict[str, torch.Tensor] = dict(partial) if partial else {}
    batches = session.batches
    for batch in tqdm(batches, total=len(batches), initial=batches.position, disable=not sys.stderr.isatty(),
                      leave=False, desc=f"epoch {epoch + 1}/{config.epochs}"):
        terms, logits_s = session.step(batch, epoch_number)
        weight = len(batch.y)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value * weight
        sums["correct"] = sums.get("correct", 0) + (logits_s.argmax(1) == batch.y).sum()
        if batches.position < len(batches) and _stopping(session, stop, batches.position):
            return sums, False
    return sums, True


def _stopping(session: Session, stop: _TermFlag, position: int) -> bool:
    """Whether to stop after this step: at once with one process; data-parallel processes poll
    together every STOP_POLL_STEPS steps, so that all stop after the same one."""
    if session.group.world == 1:
        return stop.raised
    return position % STOP_POLL_STEPS == 0 and distributed.anyone(stop.raised, session.group, session.device)


def _summed(session: Session, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's sums added up (one all-reduce of them all); unchanged with one process."""
    if session.group.world == 1:
        return sums
    names = sorted(sums)
    stacked = distributed.total(torch.stack([torch.as_tensor(sums[name], device=session.device).float()
                                             for name in names]), session.group)
    return dict(zip(names, stacked))


def _epoch_row(session: Session, epoch: int, sums: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
    """End of epoch: the one host synchronisation (every term and the accuracy in one transfer),
    then test accuracy and rank fidelity of the eager fp32 student."""
    seen = len(session.batches) * session.config.batch_size  # the total batch: summed over processes
    names = [name for name in sums if name != "correct"]
    *term_means, train_top1 = (torch.stack([sums[name].float() for name in [*names, "correct"]]) / seen).tolist()
    mean_terms = dict(zip(names, term_means))
    bad = [name for name, value in mean_terms.items() if not math.isfinite(value)]
    if bad:
        raise RckdError(f"non-finite loss in epoch {epoch + 1}: term(s) {', '.join(bad)} = "
                        f"{[mean_terms[name] for name in bad]}; lower the lr or check the data and teacher")
    test_top1, tau_nt = _test_metrics(session)
    lr = lr_at(session.config, epoch)
    learned = {"temperature": round(session.temperature.value(), 6)} if session.temperature is not None else {}
    return {"epoch": epoch + 1, "lr": float(f"{lr:.6g}"),  # 0.005, not 0.005000000000000001
            **learned,  # CTKD's temperature at the end of the epoch
            **{f"loss_{name}": round(value, 6) for name, value in mean_terms.items()},
            "train_top1": round(train_top1 * 100, 4), "test_top1": round(test_top1, 4), "tau_nt": tau_nt,
            "seconds": round(seconds, 3)}


def _keep_if_best(session: Session, history: list[dict[str, Any]]) -> None:
    """A host copy of the weights when the last epoch has the first highest test top-1 (best.pt, the
    weights of the best-epoch accuracy that the tables report)."""
    if max(history, key=lambda row: row["test_top1"]) is history[-1]:
        session.best_weights = {name: value.detach().to("cpu", copy=True)
                                for name, value in session.student.state_dict().items()}


def _test_metrics(session: Session) -> tuple[float, float | str]:
    """(test top-1 over the whole test set, mean tau_nt on the fixed subset or "" without a teacher)
    from the eager student in fp32, so neither depends on bf16 ties. Each process scores its shard of
    the test set; the correct counts are summed over all of them."""
    config, test, channels_last = session.config, session.test, session.device.type == "cuda"
    session.student.eval()
    logits = split_logits(session.student, test, config.eval_batch_size, session.test_shard, workers=config.workers,
                          channels_last=channels_last)
    correct = (logits.argmax(1).cpu() == test.labels[session.test_shard]).sum()
    counts = distributed.total(torch.stack([correct, torch.tensor(len(session.test_shard))]).to(session.device),
                               session.group).tolist()
    tau_nt: float | str = ""
    if session.teacher_subset_logits is not None:  # one process has every test logit already
        subset_logits = (logits[session.subset.to(logits.device)] if session.group.world == 1 else
                         predict_logits(session.student, session.subset_images, test.mean, test.std,
                                        config.eval_batch_size, channels_last=channels_last))
        subset_labels = test.labels[session.subset].to(session.device)
        tau = kendall_tau(subset_logits.double(), session.teacher_subset_logits.double(), exclude=subset_labels)
        tau_nt = round(torch.nanmean(tau).item(), 6)
    session.student.train()
    return 100 * counts[0] / counts[1], tau_nt


def _save_resume(session: Session, path: Path, epoch: int, history: list, elapsed: float,
                 partial: dict[str, torch.Tensor] | None) -> None:
    """resume.pt after `epoch` whole epochs, plus the sums of the unfinished one (`partial`, summed over
    the processes), whose position the batches' state holds. Written by the main process only."""
    if not session.group.main:
        return
    save_torch(path, {
        "identity": session.identity, "spec": session.spec, "epoch": epoch, "history": history, "elapsed": elapsed,
        "partial": partial, "model": session.student.state_dict(), "optimizer": session.optimizer.state_dict(),
        "batches": session.batches.state_dict(), "cpu_rng": torch.get_rng_state(), "best_weights": session.best_weights,
        "temperature": session.temperature.state_dict() if session.temperature is not None else None,
    })


def _resume(session: Session, path: Path) -> tuple[int, list, float, dict[str, torch.Tensor] | None]:
    """(first epoch to run, history, elapsed seconds, partial sums of that epoch) from resume.pt, if any."""
    if not path.exists():
        return 0, [], 0.0, None
    state = load_torch(path, "resume checkpoint")
    saved = state.get("identity") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise RckdError(f"{path} is not a resume checkpoint of this rckd version; delete it to start afresh")
    if saved != session.identity:
        mine, theirs = {**session.spec, **session.identity}, {**state.get("spec", {}), **saved}
        changed = sorted(key for key in mine.keys() - {"spec_hash"} if mine.get(key) != theirs.get(key))
        raise RckdError(f"{path} belongs to a different run (its spec differs in {changed or 'spec_hash'}); "
                        f"delete it to start afresh")
    session.student.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.batches.load_state_dict(state["batches"])
    torch.set_rng_state(state["cpu_rng"])
    session.best_weights = state["best_weights"]
    if session.temperature is not None:
        session.temperature.load_state_dict(state["temperature"])
    partial = state.get("partial")
    where = f"step {session.batches.position + 1} of " if partial is not None else ""
    if session.group.main:
        print(f"resuming {session.config.out} at {where}epoch {state['epoch'] + 1}/{session.config.epochs}",
              flush=True)
    if partial is not None:  # the sums of every process so far: the main process carries them on
        partial = {name: value.to(session.device) * session.group.main for name, value in partial.items()}
    return state["epoch"], state["history"], state["elapsed"], partial


def _finish(session: Session, out: Path, history: list[dict[str, Any]], elapsed: float) -> RunMetrics:
    """history.csv, metrics.json, best.pt (the best epoch's weights) and model.pt (the last's), from the
    main process; model.pt last, since it marks the run complete."""
    config, test = session.config, session.test
    best = max(history, key=lambda row: row["test_top1"])
    run = dict(arch=config.arch, dataset=config.dataset, method=config.method, params=session.params,
               teacher=str(config.teacher) if config.teacher else None,
               teacher_arch=session.teacher_meta.arch if session.teacher_meta else None, seed=config.seed,
               epochs=config.epochs, final_top1=history[-1]["test_top1"], best_top1=best["test_top1"],
               best_epoch=best["epoch"])
    metrics = RunMetrics(
        **run, teacher_bank=session.used_bank, num_params=sum(p.numel() for p in session.student.parameters()),
        wall_seconds=round(elapsed, 2), device=str(session.device), precision=session.precision,
        compile=session.compile_mode, processes=session.group.world, spec=session.spec,
        spec_hash=session.identity["spec_hash"],
    )
    meta = ModelMeta(
        **run, num_classes=len(session.classes), in_channels=test.input_size[0], input_size=test.input_size,
        data_options=resolve_options(config.dataset, config.data_options), mean=list(test.mean),
        std=list(test.std), classes=session.classes, rckd_version=__version__,
    )
    if not session.group.main:
        return metrics
    write_csv(out / "history.csv", history)
    metrics.write(out / "metrics.json")
    save_model(out / "best.pt", session.best_weights, meta)
    save_model(out / "model.pt", session.student.state_dict(), meta)
    (out / "resume.pt").unlink(missing_ok=True)  # the finished run no longer needs it (2-3x the weights)
    return metrics


def _resolved_modes(config: TrainConfig, device: torch.device, world: int = 1) -> tuple[str, str]:
    """(precision, compile mode) with "auto" decided: bf16 and CUDA graphs on CUDA (inductor without
    CUDA graphs for data-parallel runs, whose gradient all-reduces run inside the backward), fp32
    eager on CPU."""
    on_cuda = device.type == "cuda"
    precision = config.precision if config.precision != "auto" else ("bf16" if on_cuda else "fp32")
    cuda_mode = "reduce-overhead" if world == 1 else "default"
    compile_mode = config.compile if config.compile != "auto" else (cuda_mode if on_cuda else "none")
    if compile_mode == "reduce-overhead" and not on_cuda:
        raise RckdError("compile reduce-overhead captures CUDA graphs and needs CUDA; on CPU use --compile none "
                        "(or default, inductor's CPU code)")
    return precision, compile_mode


class _TermFlag:
    """Turns SIGTERM into a flag the loop reads between steps (the step in flight completes)."""

    def __init__(self) -> None:
        self.raised = False

    @contextlib.contextmanager
    def installed(self):
        try:
            previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (an embedding program): leave SIGTERM alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.raised = True
        print("SIGTERM: saving resume.pt after the current step", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RunSpec(arch="", dataset="")
    parser.add_argument("--spec", help="the run spec (rckd.spec): JSON text, or a file such as a run's spec.json "
                        "(which reruns that run); the spec options below override its keys")
    spec = parser.add_argument_group("run spec: what the run computes (defaults: rckd.spec.RunSpec)")
    spec.add_argument("--arch", help="model name (rckd.models.available())")
    spec.add_argument("--dataset", help="data set name (rckd.data.DATASETS)")
    add_data_option_argument(spec, "data set option (synthetic sizes, seed, difficulty); repeatable")
    spec.add_argument("--method", help=f"loss: {', '.join(losses.available())} (default {defaults.method})")
    spec.add_argument("--param", action="append", default=[], type=parse_param, metavar="KEY=VALUE",
                      help="loss parameter, e.g. T=4, beta=8 or ls=true; repeatable")
    spec.add_argument("--teacher", type=Path, help="teacher model.pt (distillation methods)")
    for item in fields(RunSpec):
        if item.type in ("int", "float"):
            spec.add_argument(f"--{item.name.replace('_', '-')}", type=int if item.type == "int" else float,
                              help=f"default {getattr(defaults, item.name)}")
    spec.add_argument("--milestones", type=int, nargs="*", help="epochs at which the lr is multiplied by "
                      f"--lr-decay (default {' '.join(map(str, defaults.milestones))})")
    spec.add_argument("--precision", choices=PRECISIONS, help=f"default {defaults.precision}")
    spec.add_argument("--compile", choices=COMPILE_MODES, help=f"default {defaults.compile}")
    where = parser.add_argument_group("where and how it runs (a resume may change these)")
    where.add_argument("--data-root", required=True, type=Path, help="directory of the prepared data cache")
    where.add_argument("--out", required=True, type=Path, help="run directory")
    where.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    where.add_argument("--teacher-bank", type=Path, help="the teacher's logit bank (rckd bank) instead of running it")
    where.add_argument("--bank-fallback", action="store_true",
                       help="run the teacher live if the bank does not fit in memory (teacher_bank: auto)")
    for name in ("checkpoint_every", "eval_batch_size", "gpu_slots", "workers"):
        where.add_argument(f"--{name.replace('_', '-')}", type=int,
                           default=TrainConfig.__dataclass_fields__[name].default)
    where.add_argument("--tensorboard", type=_on_off, default=TrainConfig.tensorboard, metavar="on|off",
                       help="write the curves as TensorBoard event files in --out (default on)")
    add_threads_argument(where)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def spec_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """RunSpec fields from --spec with the spec options given on the command line over them."""
    values = read_spec(args.spec) if args.spec else {}
    for item in fields(RunSpec):
        given = getattr(args, item.name, None)
        if given is not None:
            values[item.name] = tuple(given) if item.name == "milestones" else given
    values["params"] = {**values.get("params", {}), **dict(args.param)}
    values["data_options"] = {**values.get("data_options", {}), **dict(args.data_option)}
    missing = [name for name in ("arch", "dataset") if name not in values]
    if missing:
        raise RckdError(f"the run needs {' and '.join(missing)}: pass --{' and --'.join(missing)}, or --spec")
    return values


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    spec_names = {item.name for item in fields(RunSpec)}
    settings = {item.name: getattr(args, item.name) for item in fields(TrainConfig) if item.name not in spec_names}
    config = TrainConfig(**spec_arguments(args), **settings)
    try:
        metrics = train(config)
    except Preempted as stopped:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{stopped}; rerun the same command to continue", flush=True)
        return PREEMPTED_STATUS
    finally:
        distributed.leave()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # the main process reports
    print(f"done: {config.out} best_top1={metrics.best_top1:.2f} final_top1={metrics.final_top1:.2f} "
          f"({metrics.wall_seconds:.1f}s)", flush=True)
    return 0
