"""Does a warm-up of RCKD's distillation terms narrow its seed spread? Real data, CPU, rckd's trainer.

    python benchmarks/rckd_warmup.py [--seeds 0 1 2] [--warmups 0 2] [--train-per-class N] [--work DIR]
                                     [--out-json F] [--out-md F]

Issue 20's setting on Fashion-MNIST (Debian's dataset-fashion-mnist files, or torchvision's download
under --data-root): a resnet14 teacher trained once (cross-entropy, seed 0), then resnet8 students
under the authors' RCKD (`rckd`, defaults) for every seed and every `warmup` (0 = the authors'), all
2 epochs, lr 0.05 without decay, batch 64, fp32 eager on the CPU. A student's first epoch has
min(1 / warmup, 1) of the distillation terms (the trainer counts epochs from 1, as DKD's
warm-up does), so warmup 1 changes nothing and warmup 2 halves the first epoch.

--train-per-class N trains on the first N training images of each class only (a smaller version
for a busy CPU; the test split stays whole, the normalisation stays the full training set's).

Each finished run is kept under --work (metrics.json, history.csv), and a rerun reuses it, so the
measurement can be extended seed by seed. Prints a markdown table; --out-json / --out-md write it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from rckd import data
from rckd.data import cache
from rckd.io import write_json, write_text
from rckd.train import TrainConfig, train

SETTING = {"dataset": "fashion_mnist", "epochs": 2, "lr": 0.05, "batch_size": 64, "milestones": (),
           "device": "cpu", "precision": "fp32", "compile": "none"}


def run(out: Path, data_root: Path, **fields: Any) -> dict[str, Any]:
    """metrics.json of one training run, trained unless `out` already holds the finished run."""
    if not (out / "metrics.json").is_file():
        train(TrainConfig(data_root=data_root, out=out, checkpoint_every=SETTING["epochs"],
                          **{**SETTING, **fields}))
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv", newline="") as handle:
        metrics["history"] = list(csv.DictReader(handle))
    return metrics


def prepare_data(data_root: Path, work: Path, per_class: int) -> Path:
    """The data root of the runs: Fashion-MNIST's own cache, or one of its first `per_class` training
    images of each class (written once under `work`)."""
    data.prepare_cache("fashion_mnist", data_root)
    if per_class == 0:
        return data_root
    root = work / f"data_{per_class}_per_class"
    if not cache.cache_path(root, "fashion_mnist").is_file():
        full = data.load_splits("fashion_mnist", data_root)
        train = full["train"]
        keep = torch.cat([torch.nonzero(train.labels == label).flatten()[:per_class]
                          for label in range(len(train.classes))]).sort().values
        subset = data.Split(train.images[keep], train.labels[keep], train.classes, train.mean, train.std)
        root.mkdir(parents=True, exist_ok=True)
        cache.write(cache.cache_path(root, "fashion_mnist"), "fashion_mnist", {}, {"train": subset,
                                                                                "test": full["test"]})
    return root


def student_row(metrics: dict[str, Any], warmup: float) -> dict[str, Any]:
    first = metrics["history"][0]
    return {"warmup": warmup, "seed": metrics["seed"], "final_top1": metrics["final_top1"],
            "epoch1_top1": float(first["test_top1"]), "epoch1_loss_ce": float(first["loss_ce"]),
            "epoch1_loss_rc": float(first["loss_rc"]), "wall_seconds": metrics["wall_seconds"]}


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per warmup: mean, sample standard deviation and range of the final top-1 over the seeds."""
    result = []
    for warmup in sorted({row["warmup"] for row in rows}):
        top1 = [row["final_top1"] for row in rows if row["warmup"] == warmup]
        result.append({"warmup": warmup, "seeds": len(top1), "mean": statistics.fmean(top1),
                       "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                       "range": max(top1) - min(top1)})
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["| warmup | seed | epoch-1 CE | epoch-1 RC | epoch-1 top-1 | final top-1 |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['warmup']:g} | {row['seed']} | {row['epoch1_loss_ce']:.3f} | {row['epoch1_loss_rc']:.2f} | "
              f"{row['epoch1_top1']:.2f} | {row['final_top1']:.2f} |" for row in result["students"]]
    lines += ["", "| warmup | seeds | mean final top-1 | std | max - min |", "|---|---|---|---|---|"]
    lines += [f"| {row['warmup']:g} | {row['seeds']} | {row['mean']:.2f} | {row['std']:.2f} | {row['range']:.2f} |"
              for row in result["summary"]]
    teacher = result["teacher"]
    setting = result["setting"]
    return (f"Fashion-MNIST, training images per class: {setting['train_per_class']}; {setting['epochs']} epochs, "
            f"lr {setting['lr']}, batch {setting['batch_size']}, {setting['threads']} torch thread(s). Teacher "
            f"{teacher['arch']}: final top-1 {teacher['final_top1']:.2f}. Machine: {result['machine']}.\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--work", type=Path, default=Path("results/bench_rckd_warmup"),
                        help="finished runs are kept (and reused) here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmups", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--train-per-class", type=int, default=0, help="0: the whole training split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_root = prepare_data(args.data_root, args.work, args.train_per_class)
    teacher = run(args.work / "teacher_resnet14", data_root, arch="resnet14", seed=0)
    print(f"teacher resnet14: final top-1 {teacher['final_top1']:.2f}", flush=True)
    students = []
    for seed in args.seeds:
        for warmup in args.warmups:
            metrics = run(args.work / f"rckd_warmup{warmup:g}_seed{seed}", data_root, arch="resnet8",
                          method="rckd", params={"warmup": warmup}, seed=seed,
                          teacher=args.work / "teacher_resnet14" / "model.pt")
            students.append(student_row(metrics, warmup))
            print(f"warmup {warmup:g} seed {seed}: final top-1 {metrics['final_top1']:.2f}", flush=True)
    result = {"setting": {**SETTING, "teacher": "resnet14", "student": "resnet8", "threads": args.threads,
                          "train_per_class": args.train_per_class or "all"},
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
              "teacher": {"arch": "resnet14", "final_top1": teacher["final_top1"]},
              "students": students, "summary": summary(students)}
    text = markdown(result)
    print(text)
    if args.out_json:
        write_json(args.out_json, result)
    if args.out_md:
        write_text(args.out_md, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
