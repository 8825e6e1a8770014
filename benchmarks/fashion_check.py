"""Real data on the GPU: 2 epochs of the trainer in bf16 with CUDA graphs against fp32 eager, on Fashion-MNIST.

    python benchmarks/fashion_check.py [--device cuda] [--epochs 2] [--out fashion.json]

Fashion-MNIST comes from Debian's dataset-fashion-mnist files, or from torchvision's layout under
--data-root (FashionMNIST/raw/*.gz): the GPU machine has no internet, so carry the files there.
Prints, per precision, test top-1 and the epoch losses; the two should agree to about a point.
Without the files it prints why and exits with status 3, which the GPU check reports as "not run".
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gpu_check import NOT_RUN_STATUS  # this script's folder, first on sys.path; standard library only
from rckd import data
from rckd.errors import RckdError
from rckd.train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--arch", default="resnet8x4")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        data.prepare_cache("fashion_mnist", args.data_root)
    except RckdError as missing:
        print(f"no Fashion-MNIST files: {missing}".replace("\n", " "), flush=True)
        return NOT_RUN_STATUS
    results = {}
    with tempfile.TemporaryDirectory(prefix="fashion_check_") as tmp:
        fast_modes = ("bf16", "reduce-overhead") if args.device.startswith("cuda") else ("bf16", "none")
        for name, (precision, compile_mode) in {"fast": fast_modes, "exact": ("fp32", "none")}.items():
            config = TrainConfig(arch=args.arch, dataset="fashion_mnist", data_root=args.data_root,
                                 out=Path(tmp) / name, epochs=args.epochs, milestones=(), device=args.device,
                                 precision=precision, compile=compile_mode, checkpoint_every=args.epochs,
                                 tensorboard=False)
            metrics = train(config)
            results[name] = {key: getattr(metrics, key) for key in ("precision", "compile", "final_top1", "best_top1",
                                                           "wall_seconds")}
            print(f"{name}: {results[name]}", flush=True)
    results["top1_difference"] = results["fast"]["final_top1"] - results["exact"]["final_top1"]
    print(f"bf16 compiled - fp32 eager final top-1: {results['top1_difference']:+.2f} points")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
