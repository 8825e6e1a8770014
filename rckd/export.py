"""Export a trained model to one self-contained ONNX file, gated on parity with PyTorch (`rckd export`).

The graph is traced in eval mode with a symbolic batch axis, checked with `onnx.checker`
(full_check), run by onnxruntime on the data set's test split and compared with the PyTorch
model: the file is written only when the largest logit difference is at most `ATOL` and the
top-1 predictions agree on at least `MIN_AGREEMENT` % of the images. Optionally a static INT8
(QDQ) copy is calibrated on training images and its test top-1 is measured.
Both files carry `rckd.*` metadata (rckd.records.ModelInfo), all a consumer needs.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.registry import QDQRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from rckd import __version__, data
from rckd.checkpoint import load_model
from rckd.data.augment import normalize
from rckd.data.options import add_data_option_argument
from rckd.deploy import CPU, open_session
from rckd.device import add_threads_argument, set_threads
from rckd.errors import RckdError
from rckd.inference import check_fits
from rckd.io import atomic_path, write_json
from rckd.metrics import topk_accuracy
from rckd.records import METADATA_PREFIX, ModelInfo, ModelMeta

OPSET = 17
ATOL = 1e-4  # largest allowed |onnxruntime - torch| logit difference (fp32), per unit of logit scale
MIN_AGREEMENT = 99.9  # % of test images whose top-1 class must agree
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EVAL_BATCH = 256
CALIBRATION_BATCH = 64
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class Parity:
    """onnxruntime against PyTorch on the same normalised images."""

    images: int
    max_abs_diff: float
    logit_scale: float  # max |torch logit|: fp32 rounding grows with it
    agreement: float  # % of images with the same top-1 class
    onnx_top1: float
    torch_top1: float


def to_onnx(model: nn.Module, input_shape: Sequence[int], opset: int = OPSET) -> onnx.ModelProto:
    """Trace `model` in eval mode into a checked ONNX graph `images [batch, C, H, W] -> logits [batch, K]`."""
    model.eval()
    example = torch.zeros(2, *input_shape)  # batch 1 would let the tracer fix the batch axis to 1
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but it traces these CNNs 2-35x faster than dynamo=True.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    check(proto)
    return proto


def check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise RckdError(f"the exported ONNX graph is invalid: {str(err).splitlines()[0][:300]}") from None


def with_metadata(proto: onnx.ModelProto, info: ModelInfo) -> onnx.ModelProto:
    """A copy of `proto` whose rckd.* metadata is exactly `info` (other keys are kept)."""
    tagged = onnx.ModelProto()
    tagged.CopyFrom(proto)
    kept = [(p.key, p.value) for p in tagged.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del tagged.metadata_props[:]
    for key, value in kept + sorted(info.to_metadata().items()):
        tagged.metadata_props.add(key=key, value=value)
    tagged.doc_string = f"rckd {info.arch} ({info.method}) on {info.dataset}, {info.precision}"
    return tagged


def onnx_logits(model_bytes: bytes, images: np.ndarray, batch_size: int = EVAL_BATCH,
                threads: int | None = None) -> np.ndarray:
    """Logits of onnxruntime on the CPU, with `threads` intra-op threads (None: onnxruntime's default)."""
    session = open_session(model_bytes, [CPU], threads)
    return np.concatenate([
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start:start + batch_size]})[0]
        for start in range(0, len(images), batch_size)
    ])


@torch.inference_mode()
def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> np.ndarray:
    model.eval()
    return torch.cat([model(images[start:start + batch_size]).float()
                      for start in range(0, len(images), batch_size)]).numpy()


def top1(logits: np.ndarray, labels: torch.Tensor) -> float:
    """Test top-1 (%), rounded off the float32 noise of the mean (99.4000015 -> 99.4)."""
    return round(topk_accuracy(torch.from_numpy(logits), labels, ks=(1,))["top1"].item(), 4)


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """% of rows whose highest logit is in the same column."""
    return float((logits_a.argmax(1) == logits_b.argmax(1)).mean() * 100)


def compare(exported: np.ndarray, reference: np.ndarray, labels: torch.Tensor) -> Parity:
    """Compare onnxruntime logits with PyTorch logits of the same images."""
    return Parity(
        images=len(labels), max_abs_diff=float(np.abs(exported - reference).max()),
        logit_scale=float(np.abs(reference).max()),
        agreement=agreement(exported, reference), onnx_top1=top1(exported, labels),
        torch_top1=top1(reference, labels),
    )


def tolerance(parity: Parity) -> float:
    """ATOL for logits up to 1 in size, ATOL relative to the largest logit beyond (float32 rounding of
    kernels that sum in another order grows with the values)."""
    return ATOL * max(1.0, parity.logit_scale)


def check_parity(parity: Parity, arch: str) -> None:
    """Raise RckdError, saying by how much, when the exported graph does not reproduce PyTorch."""
    problems = []
    allowed = tolerance(parity)
    if not parity.max_abs_diff <= allowed:  # `not <=` also catches NaN
        problems.append(f"max |onnxruntime - torch| logit difference {parity.max_abs_diff:.3g} exceeds "
                        f"{allowed:.3g} ({parity.max_abs_diff / allowed:.3g}x the tolerance)")
    if parity.agreement < MIN_AGREEMENT:
        disagree = round(parity.images * (100 - parity.agreement) / 100)
        problems.append(f"top-1 agreement {parity.agreement:.2f}% < {MIN_AGREEMENT}% "
                        f"({disagree} of {parity.images} test images differ)")
    if problems:
        raise RckdError(
            f"parity gate failed for {arch}: " + "; ".join(problems) + ". The ONNX graph does not compute "
            "what the PyTorch model computes (an op traced differently from eager mode, or a modified file); "
            "no file was written"
        )


class _ArrayReader(CalibrationDataReader):
    """Feeds fixed batches of already-normalised images to the calibrator."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self._batches: Iterator[np.ndarray] = (images[start:start + batch_size]
                                               for start in range(0, len(images), batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """Static QDQ quantization: per-channel int8 weights, uint8 activations with min-max ranges.

    The logits stay float: one uint8 step over their calibrated range is coarse enough to flip the
    top-1 of a fifth of the images of a weakly trained model. A BatchNormalization that cannot be
    folded into a convolution (pre-activation WRN blocks) stays float too: onnxruntime has no int8
    kernel for it. uint8 activations x int8 weights is onnxruntime's fast path on x86 with VNNI;
    without VNNI it can saturate, which the measured int8 top-1 shows.
    """
    with tempfile.TemporaryDirectory(prefix="rckd-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # ONNX shape inference suffices for these CNNs; the symbolic one trips over channel shuffles.
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared, quantized, _ArrayReader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=sorted(set(QDQRegistry) - {"BatchNormalization"}),
            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
        )
        proto = onnx.load(quantized)
    check(proto)
    return proto


def fixed_subset(count: int, size: int) -> torch.Tensor:
    """A fixed random subset of `size` of `count` images (all of them, shuffled, when size >= count);
    size 0: all of them in order."""
    if size == 0:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    return torch.randperm(count, generator=generator)[:size]


def _write_onnx(path: Path, proto: onnx.ModelProto) -> int:
    data = proto.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def export(model: nn.Module, meta: ModelMeta, test_images: torch.Tensor, test_labels: torch.Tensor,
           out: str | Path, *, int8_out: str | Path | None = None,
           calibration_images: torch.Tensor | None = None, threads: int | None = None) -> dict[str, Any]:
    """Export, gate, write `out` (and `int8_out`); returns the export report.

    Images are normalised float32 [N, C, H, W] exactly as the model saw them in training;
    `meta` is the model's metadata (model.pt's); `threads` sets the onnxruntime sessions
    that check the files (None: onnxruntime's default).
    """
    if int8_out is not None and calibration_images is None:
        raise ValueError("int8 export needs calibration images")
    fp32 = to_onnx(model, meta.input_size)
    fp32_logits = onnx_logits(fp32.SerializeToString(), test_images.numpy(), threads=threads)
    parity = compare(fp32_logits, torch_logits(model, test_images), test_labels)
    check_parity(parity, meta.arch)
    info = ModelInfo.from_meta(meta, precision="fp32", top1=parity.onnx_top1, fp32_top1=parity.onnx_top1,
                               torch_top1=parity.torch_top1, rckd_version=__version__)
    report: dict[str, Any] = {
        "arch": info.arch, "dataset": info.dataset, "method": info.method, "params": info.params,
        "teacher": info.teacher, "teacher_arch": info.teacher_arch, "opset": OPSET, "test_images": parity.images,
        "fp32_top1": parity.onnx_top1, "torch_top1": parity.torch_top1, "max_abs_diff": parity.max_abs_diff,
        "top1_agreement": parity.agreement, "atol": tolerance(parity), "min_agreement": MIN_AGREEMENT,
        "onnx": str(out), "fp32_bytes": _write_onnx(Path(out), with_metadata(fp32, info)),
        "int8": None, "int8_top1": None, "int8_agreement_with_fp32": None, "int8_bytes": None,
        "calibration_images": None,
    }
    if int8_out is not None:
        int8 = quantize_int8(fp32, calibration_images.numpy())
        int8_logits = onnx_logits(int8.SerializeToString(), test_images.numpy(), threads=threads)
        int8_top1 = top1(int8_logits, test_labels)
        report.update({
            "int8": str(int8_out), "int8_top1": int8_top1,
            "int8_agreement_with_fp32": agreement(int8_logits, fp32_logits),
            "int8_bytes": _write_onnx(Path(int8_out), with_metadata(int8, replace(info, precision="int8",
                                                                                  top1=int8_top1))),
            "calibration_images": len(calibration_images),
        })
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--data-root", required=True, type=Path, help="directory of the prepared data cache")
    add_data_option_argument(parser, "data set option the model was trained with (synthetic sizes, seed); repeatable")
    parser.add_argument("--out", required=True, type=Path, help="fp32 ONNX file to write")
    parser.add_argument("--int8-out", type=Path, help="also write a static INT8 (QDQ) ONNX file here")
    parser.add_argument("--calibration-size", type=int, default=512,
                        help="training images used to calibrate the INT8 ranges (default 512)")
    parser.add_argument("--test-images", type=int, default=0,
                        help="check the ONNX files on a fixed subset of this many test images (0: all of them)")
    parser.add_argument("--report", required=True, type=Path, help="export.json to write")
    add_threads_argument(parser, "torch and the onnxruntime sessions that check the files")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.calibration_size < 1:
        raise RckdError(f"--calibration-size must be at least 1, got {args.calibration_size}")
    if args.test_images < 0:
        raise RckdError(f"--test-images must be 0 (all) or positive, got {args.test_images}")
    model, meta = load_model(args.model)
    options = dict(args.data_option)
    splits = data.load_splits(meta.dataset, args.data_root, **options)
    test = splits["test"]
    check_fits(args.model, meta, meta.dataset, options, test)
    calibration = None
    if args.int8_out is not None:
        train = splits["train"]
        chosen = train.eval_images(fixed_subset(len(train), args.calibration_size))
        calibration = normalize(chosen, meta.mean, meta.std)
    checked = fixed_subset(len(test), args.test_images)
    report = export(model, meta, normalize(test.eval_images(checked), meta.mean, meta.std), test.labels[checked],
                    args.out,
                    int8_out=args.int8_out, calibration_images=calibration, threads=args.threads or None)
    report["model"] = str(args.model)
    write_json(args.report, report)
    int8 = f", int8 top-1 {report['int8_top1']:.2f}%" if report["int8"] else ""
    print(f"exported {args.out}: onnx top-1 {report['fp32_top1']:.2f}% (torch {report['torch_top1']:.2f}%, "
          f"max |diff| {report['max_abs_diff']:.2g}, agreement {report['top1_agreement']:.2f}%){int8}")
    return 0
