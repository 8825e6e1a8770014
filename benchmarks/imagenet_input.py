"""The streamed ImageNet path on this machine: input-pipeline images/s and data-parallel scaling.

    python benchmarks/imagenet_input.py [--images 512] [--side 384] [--out imagenet_input.json]

1. Pipeline: JPEGs of ImageNet-like size (side x side synthetic images, written once into a
   temporary ImageFolder), read per image as the loader workers do: decode alone, then decode +
   RandomResizedCrop(224) + flip (the training view) and decode + Resize(256) + CenterCrop(224) (the
   test view), and whole batches of 64 from `StreamBatches` with 0, 1 and 2 worker processes. The
   decode share of the training view names the bottleneck.
2. Scaling: one epoch of `rckd train` (tv_resnet18 on 64 x 64 crops, total batch 32, CPU) with 1
   process and with 2 processes under torchrun (gloo), each process 1 torch thread, as a ratio of
   training images per second.
No GPU is needed; numbers are ratios or rates of this machine, printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rckd import data  # noqa: E402
from rckd.data import imagefolder  # noqa: E402
from rckd.data.options import make_options  # noqa: E402
from rckd.data.synthetic import write_image_folder  # noqa: E402


def per_image_rate(function, paths: list[Path]) -> float:
    function(paths[0])  # imports and first-call set-up stay out of the timing
    began = time.perf_counter()
    for path in paths:
        function(path)
    return len(paths) / (time.perf_counter() - began)


def pipeline(folder: Path, count: int) -> dict[str, float]:
    split = data.load_splits("imagenet", folder)["train"]
    paths = [split.folder / name for name in split.files[:count]]
    options = split.options
    rates = {
        "decode": per_image_rate(imagefolder.decode, paths),
        "train_view": per_image_rate(lambda path: imagefolder.train_view(path, options, hash(path)), paths),
        "test_view": per_image_rate(lambda path: imagefolder.eval_view(path, options), paths),
    }
    for workers in (0, 1, 2):
        stream = imagefolder.StreamBatches(split, 64, seed=0, device=torch.device("cpu"), workers=workers)
        began, seen = time.perf_counter(), 0
        for batch in stream:
            seen += len(batch.y)
        rates[f"batches_{workers}_workers"] = seen / (time.perf_counter() - began)
    rates["decode_share_of_train_view"] = rates["train_view"] / rates["decode"]
    return rates


def epoch_rate(folder: Path, out: Path, processes: int, images: int) -> float:
    """Training images per second of the second epoch (the first one warms caches up), counting the
    epoch's whole time: its training steps and its sharded test pass."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "rckd", "train", "--arch", "tv_resnet18", "--dataset", "imagenet", "--data-root",
               str(folder), "--data-option", "image_size=64", "--data-option", "resize_size=72", "--out", str(out),
               "--epochs", "2", "--batch-size", "32", "--milestones", "2", "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    lines = (out / "history.csv").read_text().splitlines()
    header, last = lines[0].split(","), lines[-1].split(",")
    return (images // 32) * 32 / float(last[header.index("seconds")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="training JPEGs (and a quarter as many for val)")
    parser.add_argument("--side", type=int, default=384, help="JPEG side in pixels (ImageNet's average is ~400)")
    parser.add_argument("--out", type=Path, default=Path("imagenet_input.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        per_class = args.images // 8
        write_image_folder(folder / "imagenet", make_options(
            {"num_superclasses": 2, "classes_per_superclass": 4, "train_per_class": per_class,
             "test_per_class": max(1, per_class // 4), "image_size": args.side}, "synthetic"))
        imagefolder.write_index(folder, "imagenet")
        result = {"images": args.images, "side": args.side, "cpus": os.cpu_count(),
                  "pipeline_images_per_s": pipeline(folder, min(args.images, 256))}
        images = per_class * 8
        one, two = (epoch_rate(folder, folder / f"run{n}", n, images) for n in (1, 2))
        result["ddp"] = {"images_per_s_1_process": one, "images_per_s_2_processes": two, "ratio": two / one}
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
