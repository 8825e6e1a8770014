"""Forward + backward time of every distillation loss, as a ratio to KD measured in the same run.

    python benchmarks/loss_speed.py [--device cpu|cuda|all] [--repeats 200] [--threads N] [--out losses.json]

Sizes: B=64, C=100 (CIFAR-100) and B=256, C=1000 (ImageNet-like). Every case is timed in several
sweeps through all cases, so a drift in machine load hits every loss alike and the ratios stay
comparable; on the CPU the clock is the process's CPU time.
Prints a markdown table (see docs/performance.md),
then, for scale, one forward + backward of a CIFAR student (--context-model) at B=64.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Callable

import torch

from rckd import losses, models

SIZES = ((64, 100), (256, 1000))
CASES = (
    ("ce", {}), ("kd", {}), ("kd", {"ls": True}), ("dkd", {}), ("dkd", {"ls": True}), ("dist", {}), ("wttm", {}),
    ("rckd", {}), ("rckd", {"relation": "prob_diff", "kd": 0.9}), ("rckd", {"relation": "rank"}),
)


def case_name(method: str, params: dict) -> str:
    return f"{method} ({', '.join(f'{key}={value}' for key, value in params.items())})" if params else method


def make_step(loss: losses.DistillLoss, batch: int, classes: int, device: torch.device) -> Callable[[], None]:
    """One forward + backward on fixed random logits, synchronised so wall time covers the work."""
    generator = torch.Generator().manual_seed(0)
    logits_s = (3 * torch.randn(batch, classes, generator=generator)).to(device).requires_grad_()
    logits_t = (3 * torch.randn(batch, classes, generator=generator)).to(device)
    target = torch.randint(0, classes, (batch,), generator=generator).to(device)

    def step() -> None:
        total = torch.stack(list(loss(logits_s, logits_t, target, 30).values())).sum()
        total.backward()
        logits_s.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def seconds(step: Callable[[], None], device: torch.device) -> float:
    """CPU: this process's CPU time, which other jobs on a shared machine barely disturb (wall time
    there measures the scheduler); CUDA: wall time, the step having synchronised."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    start = clock()
    step()
    return clock() - start


def measure(device: torch.device, batch: int, classes: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per case over `args.sweeps` sweeps through all cases.

    In each sweep a case gets `args.warmup` untimed steps, then its share of `args.repeats`
    timed ones in a row, so no case inherits another's caches; repeating the sweep spreads slow
    drifts in machine load over every case. A case whose warm-up steps all exceed
    `args.slow_seconds` is timed `args.slow_repeats` times in the first sweep only.
    """
    steps = {case_name(m, p): make_step(losses.build(m, **p), batch, classes, device)
             for m, p in CASES if case_name(m, p) not in args.skip}
    samples: dict[str, list[float]] = {name: [] for name in steps}
    slow: set[str] = set()
    for _ in range(args.sweeps):
        for name, step in steps.items():
            if name in slow:
                continue
            if min(seconds(step, device) for _ in range(args.warmup)) > args.slow_seconds:
                slow.add(name)
                samples[name] = [seconds(step, device) for _ in range(args.slow_repeats)]
                continue
            samples[name] += [seconds(step, device) for _ in range(args.repeats // args.sweeps)]
    return {name: statistics.median(values) for name, values in samples.items()}


def model_step_seconds(name: str, device: torch.device, repeats: int) -> float:
    """Median forward + backward of a CIFAR-100 model on a B=64 batch of 32x32 images."""
    model = models.build(name, num_classes=100).to(device)
    images = torch.randn(64, 3, 32, 32, device=device)

    def step() -> None:
        model(images).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    return statistics.median(seconds(step, device) for _ in range(repeats))


def table(results: list[tuple[str, int, int, dict[str, float]]]) -> str:
    lines = ["| device | B | C | loss | median ms | ratio to KD |", "|---|---:|---:|---|---:|---:|"]
    for device, batch, classes, medians in results:
        for name, value in medians.items():
            lines.append(f"| {device} | {batch} | {classes} | {name} | {1e3 * value:.3f} | "
                         f"{value / medians['kd']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="'all': the CPU, and CUDA when present")
    parser.add_argument("--repeats", type=int, default=300, help="timed steps per case (median)")
    parser.add_argument("--sweeps", type=int, default=5, help="passes through all cases")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case and sweep")
    parser.add_argument("--slow-seconds", type=float, default=1.0,
                        help="cases slower than this per step are timed only --slow-repeats times")
    parser.add_argument("--slow-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="LOSS",
                        help="cases to leave out, by their table name, e.g. 'rckd (rank)'")
    parser.add_argument("--context-model", default="resnet8x4", help="student timed for scale ('' to skip)")
    parser.add_argument("--out", type=Path, help="also write the medians (ms) as JSON")
    args = parser.parse_args(argv)
    if "kd" in args.skip:
        parser.error("kd is the reference of every ratio and cannot be skipped")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    if not devices:
        print("no CUDA device present")
        return 1

    results = []
    for device in devices:
        for batch, classes in SIZES:
            medians = measure(torch.device(device), batch, classes, args)
            results.append((device, batch, classes, medians))
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    cpu = " ".join(filter(None, (platform.machine(), platform.processor())))
    print(f"{date.today()}, {cpu} CPU, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}{gpu}; "
          f"forward + backward, median of {args.repeats} steps in {args.sweeps} sweeps "
          f"(CPU: process CPU time; CUDA: wall time)\n")
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps([{"device": device, "batch": batch, "classes": classes,
                                         "median_ms": {name: 1e3 * value for name, value in medians.items()}}
                                        for device, batch, classes, medians in results], indent=2) + "\n")
    if args.context_model:
        print()
        for device in devices:
            step = model_step_seconds(args.context_model, torch.device(device), repeats=10)
            print(f"{args.context_model} forward + backward, B=64, {device}: {1e3 * step:.1f} ms (median of 10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
