"""ms per training step of the ImageNet pair ResNet-34 -> ResNet-18 on one GPU, the trainer's step.

    python benchmarks/imagenet_step.py [--device cuda] [--batch-size 256] [--out imagenet_step.json]

The trainer's own step (`rckd.train._make_step`: the live fp32 teacher, the student's forward and
loss compiled as one graph, bf16 autocast, fused SGD on CUDA) on random GPU-resident 224x224 batches,
so the input pipeline is left out (benchmarks/imagenet_input.py measures that). Rows: the vanilla
student (ce) and KD (T 1, ce 0.5, kd 0.5) and RCKD from tv_resnet34; KD / vanilla is the teacher's
cost. On the CPU it runs a smoke version (batch 4, 64x64, eager fp32) that only checks it works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rckd import losses, models  # noqa: E402
from rckd.data.augment import TrainBatch  # noqa: E402
from rckd.device import resolve_device  # noqa: E402
from rckd.train import _live_teacher, _make_step  # noqa: E402

METHODS = {"ce": {}, "kd": {"T": 1.0, "ce": 0.5, "kd": 0.5}, "rckd": {}}


def step_ms(method: str, device: torch.device, batch_size: int, size: int, steps: int, warmup: int) -> float:
    on_cuda = device.type == "cuda"
    precision, compile_mode = ("bf16", "reduce-overhead") if on_cuda else ("fp32", "none")
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    torch.manual_seed(0)
    student = models.build("tv_resnet18", num_classes=1000).to(device, memory_format=memory_format)
    loss_fn = losses.build(method, **METHODS[method])
    teacher = None
    if loss_fn.needs_teacher:
        module = models.build("tv_resnet34", num_classes=1000).to(device, memory_format=memory_format).eval()
        teacher = _live_teacher(module.requires_grad_(False), compile_mode)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=on_cuda)
    step = _make_step(student, loss_fn, teacher, optimizer, device, precision, compile_mode)
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=memory_format)
    batch = TrainBatch(x, torch.randint(0, 1000, (batch_size,), device=device),
                       torch.arange(batch_size, device=device), torch.zeros(batch_size, dtype=torch.long, device=device))
    epoch = torch.tensor(1.0, device=device)
    for _ in range(warmup):
        step(batch, epoch)
    if on_cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step(batch, epoch)
    if on_cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - began) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch, size, steps, warmup = (args.batch_size, 224, 30, 10) if gpu else (4, 64, 2, 1)
    result = {"device": torch.cuda.get_device_name(device) if gpu else "cpu (smoke)", "batch_size": batch,
              "image_size": size, "ms_per_step": {}, "images_per_s": {}}
    rows = result["ms_per_step"]
    for method in METHODS:  # the JSON is rewritten after each method, so a run cut short keeps the rows it has
        rows[method] = step_ms(method, device, batch, size, steps, warmup)
        result["images_per_s"][method] = 1000 * batch / rows[method]
        if "kd" in rows:
            result["kd_over_vanilla"] = rows["kd"] / rows["ce"]
        if "rckd" in rows:
            result["rckd_over_kd"] = rows["rckd"] / rows["kd"]
        print(f"{method}: {rows[method]:.1f} ms/step", flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
