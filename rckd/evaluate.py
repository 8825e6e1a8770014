"""`rckd evaluate`: test-set metrics of a trained model and, for a distilled student, its fidelity
to the teacher -> eval.json.

Logits of the whole test split are computed in large batches on the device (no_grad, fp32) and the
metrics are taken over all of them at once (no averaging of per-batch means).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch

from rckd import data, losses, metrics
from rckd.checkpoint import load_model
from rckd.data.options import add_data_option_argument
from rckd.device import add_threads_argument, set_threads
from rckd.errors import RckdError
from rckd.gpu import claim_device
from rckd.inference import check_fits, split_logits
from rckd.records import BestScores, EvalRecord, ModelMeta

FALLBACK_TEMPERATURE = 4.0  # for methods without a temperature (e.g. a `ce` model compared to a teacher)
ECE_BINS = 15


def fidelity_temperature(meta: ModelMeta) -> float:
    """The distillation temperature of the student's own method, or FALLBACK_TEMPERATURE without one."""
    temperature = losses.build(meta.method, **meta.params).temperature
    return FALLBACK_TEMPERATURE if temperature is None else float(temperature)


@torch.no_grad()
def evaluate(model_path: Path, data_root: Path, teacher_path: Path | None = None, device: str = "auto",
             batch_size: int = 1000, data_options: dict[str, Any] | None = None, gpu_slots: int = 0,
             workers: int = 0, best_path: Path | None = None) -> EvalRecord:
    """The eval.json record for one model (and its teacher, when given); with `best_path` (the run's
    best.pt), the same metrics of the best epoch's weights under "best"."""
    if batch_size < 1:
        raise RckdError(f"--batch-size must be positive, got {batch_size}")
    target_device, _slot = claim_device(device, gpu_slots)  # the slot is held while `_slot` lives
    model, meta = load_model(model_path, target_device)
    split = data.load(meta.dataset, data_root, "test", **(data_options or {}))
    check_fits(model_path, meta, meta.dataset, data_options or {}, split)
    labels = split.labels.to(target_device)
    teacher_logits, against_teacher = None, {}
    if teacher_path is not None:
        teacher, teacher_meta = load_model(teacher_path, target_device)
        check_fits(teacher_path, teacher_meta, meta.dataset, data_options or {}, split)
        teacher_logits = split_logits(teacher, split, batch_size, workers=workers)
        against_teacher = dict(teacher_arch=teacher_meta.arch, temperature=fidelity_temperature(meta),
                               teacher_top1=metrics.topk_accuracy(teacher_logits, labels, ks=(1,))["top1"].item())
    scores = functools.partial(_scores, split=split, labels=labels, teacher_logits=teacher_logits,
                               temperature=against_teacher.get("temperature"), batch_size=batch_size,
                               workers=workers)
    best = None
    if best_path is not None:
        best_model, best_meta = load_model(best_path, target_device)
        if best_meta.arch != meta.arch or best_meta.seed != meta.seed:
            raise RckdError(f"{best_path} is not the best epoch of {model_path} (another arch or seed)")
        best = BestScores(model=str(best_path), epoch=best_meta.best_epoch, **scores(best_model))
    return EvalRecord(
        model=str(model_path), arch=meta.arch, dataset=meta.dataset, method=meta.method, params=meta.params,
        seed=meta.seed, num_test=len(labels), ece_bins=ECE_BINS, device=str(target_device),
        teacher=None if teacher_path is None else str(teacher_path), **against_teacher, **scores(model), best=best,
    )


def _scores(model: torch.nn.Module, split: data.Split | data.FileSplit, labels: torch.Tensor,
            teacher_logits: torch.Tensor | None, temperature: float | None, batch_size: int,
            workers: int) -> dict[str, float]:
    """Accuracy, NLL and calibration of one model's test logits, and its fidelity to the teacher's."""
    logits = split_logits(model, split, batch_size, workers=workers)
    values = {
        **metrics.topk_accuracy(logits, labels, ks=(1, 5)),
        "nll": metrics.nll(logits, labels),
        "ece": metrics.expected_calibration_error(logits, labels, bins=ECE_BINS),
    }
    if teacher_logits is not None:
        values.update(metrics.fidelity(logits, teacher_logits, labels, temperature))
    return {name: value.item() for name, value in values.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="the run's model.pt")
    parser.add_argument("--data-root", required=True, type=Path, help="directory of the prepared data cache")
    parser.add_argument("--teacher", type=Path, help="teacher model.pt: adds fidelity metrics (distilled students)")
    parser.add_argument("--best", type=Path, help="the run's best.pt: adds the metrics of the best epoch's weights")
    parser.add_argument("--out", required=True, type=Path, help="eval.json to write")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=1000, help="test images per forward pass")
    add_data_option_argument(parser, "data set option the model was trained with (synthetic sizes, seed); repeatable")
    parser.add_argument("--gpu-slots", type=int, default=0,
                        help="on CUDA, claim one of this many job slots per GPU first, as training does")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes decoding a streamed data set's images (imagenet)")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    record = evaluate(args.model, args.data_root, args.teacher, args.device, args.batch_size,
                      dict(args.data_option), args.gpu_slots, args.workers, args.best)
    record.write(args.out)
    summary = f"top1={record.top1:.2f} top5={record.top5:.2f} nll={record.nll:.4f} ece={record.ece:.4f}"
    if record.teacher is not None:
        summary += f" agreement={record.agreement:.2f} tau_nt={record.tau_nt:.4f}"
    print(f"{args.out}: {summary}", flush=True)
    return 0
