"""Deployment latency of exported students (`rckd bench`): PyTorch eager against onnxruntime fp32/int8.

For every student `X.onnx` (and its sibling `X.int8.onnx` when present) and batch size, each
engine is timed call by call from host memory to host memory (input array in, logits array
out): PyTorch eager on the CPU (the reference, rebuilt from the file's metadata: latency does not
depend on the weights), onnxruntime on the CPU, and onnxruntime's CUDA and TensorRT providers and
PyTorch on CUDA when a GPU is visible. Engines of one student and batch size are timed in
interleaved slices, so background load on a shared machine hits them alike. Top-1 values are
those measured on the test split at export time (rckd.* metadata).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from rckd import models
from rckd.deploy import CPU, CUDA, TENSORRT, open_session, read_info, usable_providers
from rckd.errors import RckdError
from rckd.io import atomic_path, write_csv
from rckd.records import ModelInfo

SLICE_SECONDS = 0.05  # each engine runs this long per round before the next engine's turn
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ENGINE_NAMES = {CPU: "ort-cpu", CUDA: "ort-cuda", TENSORRT: "ort-tensorrt"}
COLUMNS = (
    "student", "model", "arch", "method", "teacher_arch", "engine", "precision", "batch_size", "threads",
    "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips", "speedup_vs_torch", "top1",
    "cpu", "cores", "vnni", "providers", "torch_version", "onnxruntime_version",
)


@dataclass(frozen=True)
class Engine:
    """One way to run one student: `call(batch)` maps a float32 array to logits in host memory."""

    name: str  # torch-cpu, torch-cuda, ort-cpu, ort-cuda, ort-tensorrt
    precision: str
    top1: float
    call: Callable[[np.ndarray], Any]


def latency_stats(seconds: np.ndarray, batch_size: int) -> dict[str, float]:
    """Percentiles (ms) of per-call times and images per second over all timed calls."""
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99]) * 1e3
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": seconds.mean() * 1e3,
            "throughput_ips": batch_size * len(seconds) / seconds.sum()}


def time_interleaved(calls: Sequence[Callable[[], Any]], warmup: int, min_iters: int,
                     min_seconds: float) -> list[np.ndarray]:
    """Per-call seconds of each call, timed in round-robin slices until every one has at least
    `min_iters` calls and `min_seconds` of timed calls."""
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    while any(len(t) < min_iters or sum(t) < min_seconds for t in times):
        for call, record in zip(calls, times):
            slice_end = time.perf_counter() + SLICE_SECONDS
            while True:
                began = time.perf_counter()
                call()
                ended = time.perf_counter()
                record.append(ended - began)
                if ended >= slice_end:
                    break
    return [np.asarray(t) for t in times]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> dict[str, str]:
    """CPU model, cores, VNNI flags and the onnxruntime providers usable here."""
    cpu, flags = platform.processor() or platform.machine(), set()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "cpu": cpu, "cores": f"{usable_cores()} usable of {os.cpu_count()}",
        "vnni": " ".join(flag for flag in VNNI_FLAGS if flag in flags) or "none",
        "providers": " ".join(usable_providers()), "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
    }


def int8_sibling(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".onnx") + ".int8.onnx")


def _ort_engine(path: Path, info: ModelInfo, provider_chain: list[str], threads: int) -> Engine:
    """onnxruntime on the first provider of the chain; the rest take the ops it cannot run."""
    # TensorRT builds int8 engines from the QDQ nodes only with its int8 mode on.
    chain = [(p, {"trt_int8_enable": "True"}) if p == TENSORRT and info.precision == "int8" else p
             for p in provider_chain]
    # Busy-waiting onnxruntime workers would steal the cores from the PyTorch slices that follow.
    session = open_session(path, chain, threads, spinning=False)
    input_name = session.get_inputs()[0].name
    return Engine(ENGINE_NAMES[provider_chain[0]], info.precision, info.top1,
                  lambda batch: session.run(None, {input_name: batch}))


def _torch_engine(info: ModelInfo, device: str) -> Engine:
    model = models.build(info.arch, num_classes=info.num_classes, in_channels=info.input_shape[0])
    model = model.to(device).eval()

    @torch.inference_mode()
    def call(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(device)).cpu().numpy()  # .cpu() waits for CUDA

    return Engine(f"torch-{device}", "fp32", info.torch_top1, call)


def _read(path: Path) -> ModelInfo:
    return read_info(open_session(path, [CPU]), str(path))


def engines(path: Path, threads: int) -> tuple[ModelInfo, list[Engine]]:
    """Every engine for the fp32 file `path` and its int8 sibling, the PyTorch reference first."""
    variants = [(path, _read(path))]
    if int8_sibling(path).is_file():
        variants.append((int8_sibling(path), _read(int8_sibling(path))))
    for (file, file_info), expected in zip(variants, ("fp32", "int8")):
        if file_info.precision != expected:
            raise RckdError(f"{file} is a {file_info.precision} export where {expected} was expected; pass "
                            "fp32 files X.onnx (a sibling X.int8.onnx is benchmarked with it)")
    info = variants[0][1]
    found = [_torch_engine(info, "cpu")] + ([_torch_engine(info, "cuda")] if torch.cuda.is_available() else [])
    providers = usable_providers()
    found += [_ort_engine(file, file_info, providers[start:], threads)
              for start in range(len(providers)) for file, file_info in variants]
    return info, found


def student_label(info: ModelInfo) -> str:
    teacher = f"<-{info.teacher_arch}" if info.teacher_arch else ""
    return f"{info.arch} {info.method}{teacher}"


def bench(paths: Sequence[Path], batch_sizes: Sequence[int], threads: int, warmup: int, min_iters: int,
          min_seconds: float) -> list[dict[str, Any]]:
    """One row per student, engine, precision and batch size (COLUMNS)."""
    torch.set_num_threads(threads)
    host = machine()
    rows: list[dict[str, Any]] = []
    labels: list[str] = []
    for path in paths:
        info, found = engines(Path(path), threads)
        label = student_label(info)
        labels.append(label)
        if labels.count(label) > 1:
            label += f" #{labels.count(label)}"
        channels, height, width = info.input_shape
        for batch_size in batch_sizes:
            batch = np.random.default_rng(0).standard_normal((batch_size, channels, height, width), np.float32)
            timings = time_interleaved([lambda e=engine: e.call(batch) for engine in found],
                                       warmup, min_iters, min_seconds)
            stats = [latency_stats(seconds, batch_size) for seconds in timings]
            torch_p50 = stats[0]["p50_ms"]
            for engine, seconds, stat in zip(found, timings, stats):
                rows.append({
                    "student": label, "model": str(path), "arch": info.arch, "method": info.method,
                    "teacher_arch": info.teacher_arch or "", "engine": engine.name, "precision": engine.precision,
                    "batch_size": batch_size, "threads": threads, "iterations": len(seconds), **stat,
                    "speedup_vs_torch": torch_p50 / stat["p50_ms"], "top1": engine.top1, **host,
                })
    return rows


def _rounded(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with floats to 6 significant digits, as latency.csv holds them."""
    return [{key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()}
            for row in rows]


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Top-1 against p50 latency, one panel per batch size; colour = student, marker = engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    batch_sizes = sorted({row["batch_size"] for row in rows})
    students = list(dict.fromkeys(row["student"] for row in rows))
    variants = list(dict.fromkeys((row["engine"], row["precision"]) for row in rows))
    colours = plt.get_cmap("tab10")
    markers = "os^DvP*X"
    figure, axes = plt.subplots(1, len(batch_sizes), figsize=(5.5 * len(batch_sizes), 4.5), squeeze=False)
    for axis, batch_size in zip(axes[0], batch_sizes):
        for row in (r for r in rows if r["batch_size"] == batch_size):
            axis.scatter(row["p50_ms"], row["top1"], s=60, alpha=0.85,
                         color=colours(students.index(row["student"]) % 10),
                         marker=markers[variants.index((row["engine"], row["precision"])) % len(markers)])
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(f"p50 latency per batch of {batch_size} (ms, log scale)")
        axis.set_ylabel("test top-1 (%)")
        axis.set_title(f"batch {batch_size}, threads {rows[0]['threads']}")
        axis.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], linestyle="", marker="o", color=colours(i % 10), label=student)
               for i, student in enumerate(students)]
    handles += [plt.Line2D([], [], linestyle="", marker=markers[i % len(markers)], color="grey",
                           label=f"{engine} {precision}") for i, (engine, precision) in enumerate(variants)]
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.suptitle(f"{rows[0]['cpu']} ({rows[0]['cores']} cores)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, nargs="+", type=Path,
                        help="fp32 ONNX files from `rckd export` (a sibling X.int8.onnx is timed too)")
    parser.add_argument("--out", required=True, type=Path, help="latency.csv to write")
    parser.add_argument("--plot", type=Path, help="latency.png: top-1 against latency")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="torch and onnxruntime intra-op threads (default: usable cores)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per engine and batch size")
    parser.add_argument("--min-iters", type=int, default=50, help="timed calls per engine and batch size, at least")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per engine, at least")


def run(args: argparse.Namespace) -> int:
    if min(args.batch_sizes) < 1 or args.threads < 1 or args.warmup < 0 or args.min_iters < 1:
        raise RckdError("need batch sizes >= 1, --threads >= 1, --warmup >= 0 and --min-iters >= 1")
    rows = bench(args.models, args.batch_sizes, args.threads, args.warmup, args.min_iters, args.min_seconds)
    write_csv(args.out, _rounded(rows), COLUMNS)
    if args.plot:
        plot(rows, args.plot)
    for row in rows:
        print(f"{row['student']:<28} {row['engine']:<12} {row['precision']} batch {row['batch_size']:>3}: "
              f"p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  {row['throughput_ips']:9.1f} img/s  "
              f"x{row['speedup_vs_torch']:.2f} vs torch  top-1 {row['top1']:.2f}%")
    return 0
