"""CUDA-only checks, run by the GPU acceptance command (benchmarks/gpu_check.sh); skipped without CUDA.

The CPU suite checks the same step with inductor's CPU code (test_train.py); these check what only a
GPU shows: CUDA-graph capture, bf16 numerics of the compiled step, and onnxruntime's CUDA provider.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SYNTHETIC, read_history, run_config

from rckd.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


@pytest.fixture
def setup(synthetic_root, trained_teacher) -> tuple[Path, Path]:
    """(data root, teacher model.pt): the session's, trained on the CPU."""
    return synthetic_root, trained_teacher


def config(root: Path, out: Path, **changes) -> TrainConfig:
    return run_config(root, out, device="cuda", checkpoint_every=5, tensorboard=False, **changes)


def test_the_compiled_step_skips_no_cuda_graph(setup, tmp_path):
    from torch._dynamo.utils import counters

    root, teacher = setup
    counters.clear()
    metrics = train(config(root, tmp_path, method="rckd", teacher=teacher, precision="bf16",
                           compile="reduce-overhead"))
    assert metrics.compile == "reduce-overhead" and metrics.precision == "bf16"
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])


@pytest.mark.parametrize("method", ["kd", "rckd"])
def test_bf16_compiled_steps_track_fp32_eager(setup, tmp_path, method):
    root, teacher = setup
    fast = train(config(root, tmp_path / "fast", method=method, teacher=teacher, precision="bf16",
                        compile="reduce-overhead"))
    exact = train(config(root, tmp_path / "exact", method=method, teacher=teacher, precision="fp32", compile="none"))
    for row_fast, row_exact in zip(read_history(tmp_path / "fast"), read_history(tmp_path / "exact")):
        for key in row_fast:
            if key.startswith("loss_"):
                assert float(row_fast[key]) == pytest.approx(float(row_exact[key]), rel=0.05, abs=0.05), key
    assert abs(fast.final_top1 - exact.final_top1) <= 10


def test_the_bank_serves_the_same_training_on_cuda(setup, tmp_path):
    from rckd import bank

    root, teacher = setup
    bank.build(teacher, "synthetic", root, SYNTHETIC, tmp_path / "bank.pt", "cuda")
    banked = train(config(root, tmp_path / "banked", method="kd", teacher=teacher, teacher_bank=tmp_path / "bank.pt",
                          precision="fp32", compile="none"))
    live = train(config(root, tmp_path / "live", method="kd", teacher=teacher, precision="fp32", compile="none"))
    assert banked.teacher_bank and not live.teacher_bank
    for row_bank, row_live in zip(read_history(tmp_path / "banked"), read_history(tmp_path / "live")):
        assert float(row_bank["loss_kd"]) == pytest.approx(float(row_live["loss_kd"]), rel=1e-2)


def test_onnx_cuda_provider_matches_the_cpu(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # conftest's export helper; the GPU check runs this file without conftest
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDA provider here ({ort.get_available_providers()})")
    import numpy as np
    from conftest import export_tiny, normalized, random_images, toy_meta

    _, path = export_tiny(tmp_path / "m.onnx", toy_meta("resnet8", [f"c{i}" for i in range(10)]))
    images = normalized(random_images(32)).numpy()
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    cuda = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"]).run(None, {"images": images})[0]
    np.testing.assert_allclose(cuda, cpu, rtol=1e-3, atol=1e-3)
