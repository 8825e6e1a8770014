"""The GPU check's first part: is there a CUDA GPU, which, and do a first CUDA context and a compiled
step work (CUDA graphs included)? Its time is the machine's warm-up, counted in the check's budget.

    python benchmarks/gpu_warmup.py [--out warmup.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA GPU", flush=True)
        return 1
    began = time.perf_counter()
    x = torch.randn(1024, 1024, device="cuda")
    (x @ x).sum().item()
    context_seconds = time.perf_counter() - began
    step = torch.compile(lambda t: torch.relu(t @ t).sum(), mode="reduce-overhead")
    began = time.perf_counter()
    for _ in range(3):  # CUDA graphs are recorded on the second call and replayed from the third
        step(x).item()
    result = {"device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
              "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "first_context_seconds": round(context_seconds, 2),
              "first_compile_seconds": round(time.perf_counter() - began, 2)}
    print(json.dumps(result, indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
