"""ONNX export: every architecture passes the parity gate, the gate catches a graph that differs
from PyTorch, metadata survives the round trip, and `rckd export` writes fp32 + int8 files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import MEAN, SIZE, STD, normalized, random_images, tiny_model, toy_meta
from helpers import SYNTHETIC, SYNTHETIC_CLASSES, SYNTHETIC_TEST_IMAGES, option_args
from torch import nn

from rckd import __version__, data, models
from rckd import export as export_module
from rckd.checkpoint import load_model
from rckd.cli import main as cli
from rckd.deploy import CPU, open_session, read_info
from rckd.errors import RckdError
from rckd.export import ATOL, check_parity, compare, export, onnx_logits, torch_logits
from rckd.records import ModelInfo

CLASSES = [f"class_{i}" for i in range(10)]
OPTION_ARGS = option_args(SYNTHETIC)


@pytest.fixture(scope="module")
def eval_set() -> tuple[torch.Tensor, torch.Tensor]:
    return normalized(random_images(24)), torch.arange(24) % 10


@pytest.mark.parametrize("arch", models.available())
def test_every_architecture_passes_the_parity_gate_and_quantizes(arch, eval_set, tmp_path):
    images, labels = eval_set
    model = tiny_model(arch, num_classes=10)
    calibration = normalized(random_images(16, seed=2))
    report = export(model, toy_meta(arch, CLASSES), images, labels, tmp_path / "model.onnx",
                    int8_out=tmp_path / "model.int8.onnx", calibration_images=calibration)

    # The tolerance is ATOL per unit of the largest logit (at least ATOL).
    assert ATOL <= report["atol"] <= ATOL * max(1.0, float(np.abs(torch_logits(model, images)).max())) * 1.0001
    assert report["max_abs_diff"] <= report["atol"] and report["top1_agreement"] == 100.0
    assert report["fp32_top1"] == report["torch_top1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]  # no external data
    assert report["fp32_bytes"] == (tmp_path / "model.onnx").stat().st_size
    proto = onnx.load(tmp_path / "model.onnx")
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # The batch axis is symbolic in both files: batches of 1 and 5 run.
    fp32 = open_session(tmp_path / "model.onnx", [CPU])
    int8 = open_session(tmp_path / "model.int8.onnx", [CPU])
    for batch in (1, 5):
        logits = fp32.run(None, {"images": images[:batch].numpy()})[0]
        assert logits.shape == int8.run(None, {"images": images[:batch].numpy()})[0].shape == (batch, 10)
        np.testing.assert_allclose(logits, torch_logits(model, images[:batch]), atol=report["atol"])
    assert read_info(int8, "int8").top1 == report["int8_top1"]


class TracedDifferently(nn.Module):
    """Eager mode runs `inner`; the exported graph runs `inner` followed by `change`."""

    def __init__(self, inner: nn.Module, change) -> None:
        super().__init__()
        self.inner, self.change = inner, change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return self.change(logits) if torch.onnx.is_in_onnx_export() else logits


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    return tiny_model("resnet20", num_classes=10)


def test_gate_rejects_a_graph_that_scales_the_logits(resnet20, eval_set, tmp_path):
    images, labels = eval_set
    expected_diff = 0.01 * np.abs(torch_logits(resnet20, images)).max()
    with pytest.raises(RckdError, match="parity gate failed for resnet20") as failure:
        export(TracedDifferently(resnet20, lambda z: z * 1.01), toy_meta("resnet20", CLASSES), images, labels,
               tmp_path / "model.onnx")
    message = str(failure.value)
    reported = float(message.split("logit difference ")[1].split()[0])
    assert reported == pytest.approx(expected_diff, rel=1e-2)
    assert "agreement" not in message  # scaling keeps every top-1 class
    assert list(tmp_path.iterdir()) == []  # a failed gate writes nothing


def test_gate_rejects_a_graph_that_changes_the_top1(resnet20, eval_set, tmp_path):
    images, labels = eval_set
    # Adding 100 to a class the model never picks makes it every image's top-1.
    never_top = int(np.setdiff1d(np.arange(10), torch_logits(resnet20, images).argmax(1))[0])
    boost = 100 * nn.functional.one_hot(torch.tensor(never_top), 10)
    with pytest.raises(RckdError, match=r"top-1 agreement 0\.00% < 99\.9% \(24 of 24 test images differ\)"):
        export(TracedDifferently(resnet20, lambda z: z + boost), toy_meta("resnet20", CLASSES), images, labels,
               tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_gate_rejects_a_file_tampered_after_export(resnet20, eval_set, tmp_path):
    images, labels = eval_set
    export(resnet20, toy_meta("resnet20", CLASSES), images, labels, tmp_path / "model.onnx")
    proto = onnx.load(tmp_path / "model.onnx")
    reference = torch_logits(resnet20, images)
    check_parity(compare(onnx_logits(proto.SerializeToString(), images.numpy()), reference, labels), "resnet20")

    # Nudge the classifier's bias by 1e-3: invisible to the checker, caught by the gate.
    bias = next(t for t in proto.graph.initializer if t.dims == [10])
    values = onnx.numpy_helper.to_array(bias) + np.float32(1e-3)
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.checker.check_model(proto, full_check=True)
    tampered = compare(onnx_logits(proto.SerializeToString(), images.numpy()), reference, labels)
    assert tampered.max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    with pytest.raises(RckdError, match="exceeds 0.0001"):
        check_parity(tampered, "resnet20")


def test_metadata_round_trip(resnet20, eval_set, tmp_path):
    images, labels = eval_set
    meta = toy_meta("resnet20", CLASSES)
    report = export(resnet20, meta, images, labels, tmp_path / "model.onnx")
    info = read_info(open_session(tmp_path / "model.onnx", [CPU]), "model.onnx")
    assert info == ModelInfo(
        arch="resnet20", dataset="synthetic", num_classes=10, classes=meta.classes, input_shape=[3, SIZE, SIZE],
        mean=MEAN, std=STD, method="rckd", params={"beta": 2.0}, teacher="runs/t/model.pt",
        teacher_arch="resnet32x4", precision="fp32", top1=report["fp32_top1"], fp32_top1=report["fp32_top1"],
        torch_top1=report["torch_top1"], rckd_version=__version__,
    )
    props = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(props["rckd.classes"]) == meta.classes
    assert json.loads(props["rckd.params"]) == {"beta": 2.0}


@pytest.fixture
def trained(synthetic_root, trained_teacher) -> tuple[Path, Path]:
    """(data root, model.pt) of the session's teacher (resnet14), trained by the real trainer on synthetic
    data: large enough that int8 weights make the file several times smaller."""
    return synthetic_root, trained_teacher


def test_cli_exports_fp32_and_int8(trained, tmp_path, capsys, monkeypatch):
    root, model_pt = trained
    out, int8_out, report_path = tmp_path / "model.onnx", tmp_path / "model.int8.onnx", tmp_path / "export.json"
    torch_threads, session_threads = [], []
    monkeypatch.setattr(torch, "set_num_threads", torch_threads.append)
    monkeypatch.setattr(export_module, "open_session",
                        lambda model, providers, threads=None: session_threads.append(threads)
                        or open_session(model, providers, threads))
    status = cli(["export", "--model", str(model_pt), "--data-root", str(root), *OPTION_ARGS, "--out", str(out),
                  "--int8-out", str(int8_out), "--calibration-size", "256", "--report", str(report_path),
                  "--threads", "2"])
    assert status == 0
    assert torch_threads == [2] and session_threads == [2, 2]  # the fp32 and the int8 check
    assert "exported" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    _, meta = load_model(model_pt)

    # The ONNX model reproduces the trainer's own test accuracy (same images, same normalisation).
    assert report["test_images"] == SYNTHETIC_TEST_IMAGES and report["top1_agreement"] == 100.0
    assert report["fp32_top1"] == report["torch_top1"] == pytest.approx(meta.final_top1)
    # trained: 5x the accuracy of chance, so int8 accuracy means something
    assert meta.final_top1 >= 5 * 100 / SYNTHETIC_CLASSES
    assert report["max_abs_diff"] <= ATOL

    # int8: measured on the whole test set, close to fp32, about 4x smaller, made of QDQ nodes.
    assert report["calibration_images"] == 256
    assert abs(report["int8_top1"] - report["fp32_top1"]) <= 5.0
    assert report["int8_agreement_with_fp32"] >= 90.0
    assert report["fp32_bytes"] == out.stat().st_size and report["int8_bytes"] == int8_out.stat().st_size
    assert report["int8_bytes"] < report["fp32_bytes"] / 3
    ops = {node.op_type for node in onnx.load(int8_out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_info = read_info(open_session(int8_out, [CPU]), "int8")
    fp32_info = read_info(open_session(out, [CPU]), "fp32")
    assert (int8_info.precision, int8_info.top1, int8_info.fp32_top1) == ("int8", report["int8_top1"],
                                                                         report["fp32_top1"])
    assert fp32_info.classes == meta.classes and fp32_info.mean == list(meta.mean)


def test_cli_refuses_data_the_model_was_not_trained_on(trained, tmp_path, capsys):
    root, model_pt = trained
    other = tmp_path / "other"
    data.prepare_cache("synthetic", other, **{**SYNTHETIC, "classes_per_superclass": 3})
    options = option_args({**SYNTHETIC, "classes_per_superclass": 3})
    status = cli(["export", "--model", str(model_pt), "--data-root", str(other), *options,
                  "--out", str(tmp_path / "m.onnx"), "--report", str(tmp_path / "export.json")])
    assert status == 2
    assert "does not fit this data set" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "export.json").exists()


def test_parity_tolerance_grows_with_the_logit_scale_beyond_one():
    """Float32 rounding of reordered sums grows with the values: logits of 1e5 may differ by 1e-4 of
    that, logits below 1 by ATOL; a larger difference, or a NaN, fails."""
    from rckd.export import Parity, tolerance

    def parity(diff: float, scale: float) -> Parity:
        return Parity(images=10, max_abs_diff=diff, logit_scale=scale, agreement=100.0, onnx_top1=50.0,
                      torch_top1=50.0)

    assert tolerance(parity(0.0, 0.5)) == ATOL and tolerance(parity(0.0, 1e5)) == pytest.approx(10.0)
    check_parity(parity(5.0, 1e5), "resnet8")
    for bad in (parity(20.0, 1e5), parity(2 * ATOL, 0.5), parity(float("nan"), 3.0)):
        with pytest.raises(RckdError, match="parity gate failed"):
            check_parity(bad, "resnet8")
